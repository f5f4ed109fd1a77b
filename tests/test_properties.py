"""Property-based tests of the inequalities the chapters prove, each against an independent reference."""
import math

import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.func import jacrev, vmap

from lipnotes.norms import conv_overlap_factor, frobenius_lipschitz_bound, weight_matrices
from lipnotes.spectral import conv_operator_norm, power_iteration, power_method

dims = st.integers(1, 12)
seeds = st.integers(0, 2**31 - 1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@settings(max_examples=60, deadline=None)
@given(m=dims, n=dims, seed=seeds)
def test_frobenius_sandwich(m, n, seed):
    "sigma_1 <= ||W||_F <= sqrt(rank) sigma_1 and ||Wx|| <= ||W||_F ||x||, against torch.linalg."
    W = torch.randn(m, n, generator=gen(seed), dtype=torch.float64)
    x = torch.randn(n, generator=gen(seed + 1), dtype=torch.float64)
    s1, fro = torch.linalg.matrix_norm(W, 2), torch.linalg.matrix_norm(W, 'fro')
    r = torch.linalg.matrix_rank(W).item()
    assert s1 <= fro * (1 + 1e-12) and fro <= math.sqrt(r) * s1 * (1 + 1e-12)
    assert torch.linalg.vector_norm(W @ x) <= fro * torch.linalg.vector_norm(x) * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(m=dims, n=dims, k=st.integers(1, 6), seed=seeds)
def test_power_iteration_never_exceeds_sigma1(m, n, k, seed):
    "After any number of steps from any start, the estimate is at most sigma_1 (rounding aside)."
    W = torch.randn(m, n, generator=gen(seed), dtype=torch.float64)
    u = torch.randn(m, generator=gen(seed + 1), dtype=torch.float64)
    sigma, u_k, v_k = power_iteration(W, n_iter=k, u=u)
    assert sigma <= torch.linalg.matrix_norm(W, 2) * (1 + 1e-12)
    assert torch.isclose(u_k @ W @ v_k, sigma, rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(m=dims, n=dims, batch=st.integers(1, 4), seed=seeds)
def test_power_iteration_converges_on_spread_spectra(m, n, batch, seed):
    "With sigma_2/sigma_1 <= 0.9, 150 steps reach 1e-6 relative error (0.9^(4*150) ~ 1e-28) for every member of a batch."
    g = gen(seed)
    r = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(batch, m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=torch.float64))
    s = torch.sort(torch.rand(batch, r, generator=g, dtype=torch.float64) * 0.9, descending=True).values
    s[:, 0] = 1.0
    S = torch.zeros(batch, m, n, dtype=torch.float64); S[:, range(r), range(r)] = s
    W = U @ S @ V.mT
    sigma, _, _ = power_iteration(W, n_iter=150, u=torch.randn(batch, m, generator=g, dtype=torch.float64))
    assert torch.allclose(sigma, torch.linalg.matrix_norm(W, 2), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(n=dims, k=st.integers(1, 6), seed=seeds)
def test_symmetric_power_method_never_exceeds_the_extreme_eigenvalue(n, k, seed):
    "Symmetric A, any start, any number of steps: |sigma| <= max |lambda_i|, and |sigma| = |u^T A v| (eigvalsh reference)."
    S = torch.randn(n, n, generator=gen(seed), dtype=torch.float64); S = S + S.T
    r = power_method(S.__matmul__, torch.randn(n, generator=gen(seed + 1), dtype=torch.float64), k)
    assert r.sigma.abs() <= torch.linalg.eigvalsh(S).abs().max() * (1 + 1e-12)
    assert torch.isclose(r.u @ S @ r.v, r.sigma.abs(), rtol=1e-10, atol=1e-300)


@settings(max_examples=25, deadline=None)
@given(c_in=st.integers(1, 3), c_out=st.integers(1, 3), k=st.integers(1, 4), n=st.integers(4, 7),
       stride=st.integers(1, 3), dilation=st.integers(1, 2), seed=seeds)
def test_conv_norm_between_reshaped_and_overlap_bound(c_in, c_out, k, n, stride, dilation, seed):
    "||K~|| <= ||conv|| <= conv_overlap_factor * ||K~||, and ||conv|| = the dense matrix's norm (zero padding)."
    if dilation * (k - 1) + 1 > n: return
    w = torch.randn(c_out, c_in, k, k, generator=gen(seed), dtype=torch.float64)
    # n_iter: a near tie sigma_2/sigma_1 = 0.99984 (c_in=3, c_out=1, k=3, n=5, seed=247) needs 23,000 steps to 1e-5
    res = conv_operator_norm(w, (c_in, n, n), stride=stride, dilation=dilation, tol=1e-13, n_iter=100_000,
                             v=torch.randn(c_in, n, n, generator=gen(seed + 1), dtype=torch.float64))
    dense = torch.func.jacrev(lambda x: torch.nn.functional.conv2d(x, w, stride=stride, dilation=dilation))(
        torch.zeros(1, c_in, n, n, dtype=torch.float64)).reshape(-1, c_in * n * n)
    exact = torch.linalg.matrix_norm(dense, 2)
    reshaped = torch.linalg.matrix_norm(w.reshape(c_out, -1), 2)
    assert abs(res.sigma - exact) <= 1e-5 * exact
    assert reshaped <= exact * (1 + 1e-9)
    assert exact <= conv_overlap_factor((k, k), stride, dilation) * reshaped * (1 + 1e-9)


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 8), min_size=2, max_size=4),
       act=st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid, lambda: nn.LeakyReLU(2.0), lambda: nn.ELU(1.5)]), seed=seeds)
def test_frobenius_bound_dominates_jacobians(widths, act, seed):
    "The certified bound is at least the Jacobian norm at any input (torch.func), and at least the spectral product."
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]): layers += [nn.Linear(a, b), act()]
    net = nn.Sequential(*layers).double()
    xs = torch.randn(64, widths[0], dtype=torch.float64) * 3
    jac = torch.linalg.matrix_norm(vmap(jacrev(net))(xs), 2).max()
    spectral = math.prod(torch.linalg.matrix_norm(W, 2).item() for _, W in weight_matrices(net))
    bound = frobenius_lipschitz_bound(net).item()
    assert jac.item() <= bound * (1 + 1e-9)
    act_max = {nn.ReLU: 1, nn.Tanh: 1, nn.Sigmoid: 0.25}.get(act, None)
    if act_max is not None: assert spectral * act_max ** (len(widths) - 1) <= bound * (1 + 1e-9)
