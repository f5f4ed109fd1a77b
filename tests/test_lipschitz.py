"""lipnotes.lipschitz, spectral_normalize and lipnotes.data: bad input is refused before any work, with the function and
argument named; property tests of lower <= Lip <= upper against dense Jacobians (torch.func.jacrev)."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.func import jacrev
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from lipnotes.data import digits, gaussian_mixture, two_moons
from lipnotes.lipschitz import (activation_lipschitz, certify, jacobian_spectral_norm, lipschitz_lower_bound,
                                lipschitz_upper_bound)
from lipnotes.spectral import conv_operator_norm, spectral_normalize

mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
x4 = torch.randn(3, 4)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: activation_lipschitz("relu"), TypeError, "activation_lipschitz: module must be a torch.nn.Module"),
    (lambda: activation_lipschitz(nn.Linear(2, 2)), ValueError, "activation_lipschitz: Linear is not an activation"),
    (lambda: activation_lipschitz(nn.Threshold(0.1, 0.0)), ValueError, "jumps"),
    (lambda: lipschitz_upper_bound("net"), TypeError, "lipschitz_upper_bound: model must be a torch.nn.Module"),
    (lambda: lipschitz_upper_bound(cnn), ValueError, "lipschitz_upper_bound: the model has Conv2d"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))), ValueError, "cannot bound layer '1' (LayerNorm)"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.BatchNorm1d(2))), ValueError, "training mode"),
    (lambda: lipschitz_upper_bound(nn.Sequential(nn.Conv2d(1, 1, 3, padding_mode='reflect', padding=1)), (1, 5, 5)),
     ValueError, "padding_mode='reflect'"),
    (lambda: lipschitz_upper_bound(cnn, 6), TypeError, "input_shape must be a tuple"),
    (lambda: lipschitz_upper_bound(cnn, (1, 2, 2)), ValueError, "input_shape"),
    (lambda: lipschitz_upper_bound(cnn, (1, 6.0, 6)), TypeError, "input_shape"),
    (lambda: jacobian_spectral_norm(mlp, torch.randn(4)), ValueError, "jacobian_spectral_norm: x must be a non-empty batch"),
    (lambda: jacobian_spectral_norm(mlp, torch.ones(2, 4, dtype=torch.int64)), TypeError, "x must have a floating dtype"),
    (lambda: jacobian_spectral_norm(mlp, torch.full((2, 4), float('nan'))), ValueError, "x contains NaN"),
    (lambda: jacobian_spectral_norm(mlp, x4, n_iter=0), ValueError, "n_iter must be >= 1"),
    (lambda: jacobian_spectral_norm("f", x4), TypeError, "f must be callable"),
    (lambda: jacobian_spectral_norm(mlp, x4, v=torch.randn(3, 5)), ValueError, "v must be a tensor of the shape of x"),
    (lambda: jacobian_spectral_norm(nn.Sequential(nn.Linear(4, 4), nn.Dropout()), x4), ValueError, "call f.eval()"),
    (lambda: lipschitz_lower_bound(mlp, x4, steps=0), ValueError, "lipschitz_lower_bound: steps must be >= 1"),
    (lambda: lipschitz_lower_bound(mlp, x4, lr=-1.0), ValueError, "lr must be positive"),
    (lambda: lipschitz_lower_bound(mlp, x4, beta=(1.0,)), ValueError, "beta must be a pair"),
    (lambda: lipschitz_lower_bound(mlp, torch.full((2, 4), float('inf'))), ValueError, "x contains NaN or Inf"),
    (lambda: certify(cnn, torch.randn(2, 5)), ValueError, "input_shape"),
])
def test_lipschitz_rejects(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: spectral_normalize("layer"), TypeError, "spectral_normalize: module must be a torch.nn.Module"),
    (lambda: spectral_normalize(nn.Linear(3, 3), name='nope'), ValueError, "has no tensor parameter 'nope'"),
    (lambda: spectral_normalize(nn.Linear(3, 3), mode='fro'), ValueError, "mode must be 'matrix' or 'operator'"),
    (lambda: spectral_normalize(nn.Linear(3, 3), mode='operator', input_shape=(3,)), ValueError, "needs an nn.Conv2d"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3), mode='operator'), ValueError, "needs input_shape"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3), mode='operator', input_shape=(2, 8, 8)), ValueError, "channels"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3), input_shape=(1, 8, 8)), ValueError, "only used with mode='operator'"),
    (lambda: spectral_normalize(nn.Linear(3, 3), coeff=0.0), ValueError, "coeff must be positive"),
    (lambda: spectral_normalize(nn.Linear(3, 3), n_power_iterations=0), ValueError, "n_power_iterations must be >= 1"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 4, padding='same'), mode='operator', input_shape=(1, 8, 8)), ValueError, "asymmetrically"),
    (lambda: spectral_normalize(nn.Linear(3, 3), exact=1), TypeError, "spectral_normalize: exact must be a bool"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3), mode='operator', input_shape=(1, 8, 8), exact=True), ValueError,
     "exact=True computes the reshaped matrix's norm by SVD and needs mode='matrix'"),
])
def test_spectral_normalize_rejects(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


def test_spectral_normalize_rejects_nan_weight():
    lin = nn.Linear(3, 3)
    with torch.no_grad(): lin.weight[0, 0] = float('nan')
    with pytest.raises(ValueError, match="spectral_normalize: 'weight' contains NaN"):
        spectral_normalize(lin)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: digits(test_fraction=1.0), ValueError, "digits: test_fraction must lie in (0, 1)"),
    (lambda: digits(seed=-1), ValueError, "digits: seed must be >= 0"),
    (lambda: digits(dtype=torch.int64), TypeError, "digits: dtype must be a floating"),
    (lambda: two_moons(1), ValueError, "two_moons: n must be >= 2"),
    (lambda: two_moons(10, noise=-0.1), ValueError, "two_moons: noise"),
    (lambda: gaussian_mixture(10, [0.0, 1.0]), ValueError, "gaussian_mixture: means must be a (classes, dim)"),
    (lambda: gaussian_mixture(10, [[0.0], [1.0]], cov=[[-1.0]]), ValueError, "positive definite"),
    (lambda: gaussian_mixture(10, [[0.0], [1.0]], priors=[0.5, 0.6]), ValueError, "sum to 1"),
    (lambda: gaussian_mixture(10, [[0.0], [1.0]], priors=[1.0]), ValueError, "one entry per class"),
])
def test_data_rejects(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


def test_spectral_normalize_matches_torch_in_float32():
    "Matrix mode, same u and v as torch's spectral_norm: the same normalised weight to 1e-6 over training steps (float32)."
    torch.manual_seed(0)
    a = nn.Conv2d(3, 6, 3); b = copy.deepcopy(a)
    torch_spectral_norm(a); spectral_normalize(b)
    pa, pb = a.parametrizations.weight[0], b.parametrizations.weight[0]
    with torch.no_grad(): pb._u.copy_(pa._u); pb._v.copy_(pa._v)
    oa, ob = torch.optim.Adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), 1e-2)
    for _ in range(5):
        x = torch.randn(4, 3, 8, 8)
        for net, opt in ((a, oa), (b, ob)):
            opt.zero_grad(); net(x).square().mean().backward(); opt.step()
        with torch.no_grad():
            wa, wb = a.weight, b.weight
        assert torch.allclose(wa, wb, rtol=1e-6, atol=1e-6 * wa.abs().max().item())


@pytest.mark.parametrize("make, x_shape, dtype", [(lambda: nn.Linear(20, 12), (20,), torch.float64),
                                                  (lambda: nn.Conv2d(3, 5, 3), (3, 7, 7), torch.float32),
                                                  (lambda: nn.ConvTranspose2d(4, 6, 3), (4, 7, 7), torch.float64),
                                                  (lambda: nn.Linear(8, 8), (8,), torch.bfloat16)])
def test_exact_matches_converged_torch_spectral_norm(make, x_shape, dtype):
    "exact=True against torch's spectral_norm iterated to convergence on the same raw weight, before and after Adam steps."
    torch.manual_seed(2)
    layer = spectral_normalize(make().to(dtype), exact=True)
    opt = torch.optim.Adam(layer.parameters(), 1e-2)
    tol = {torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-9}[dtype]
    for step in range(4):
        if step:
            opt.zero_grad(); layer(torch.randn(3, *x_shape).to(dtype)).float().square().mean().backward(); opt.step()
        ref = make().double()
        with torch.no_grad():
            ref.weight.copy_(layer.parametrizations.weight.original)
            torch_spectral_norm(ref)
            for _ in range(500): ref(torch.zeros(1, *x_shape, dtype=torch.float64))   # power steps to convergence
        ref.eval()
        assert layer.weight.dtype == dtype
        err = torch.linalg.vector_norm(layer.weight.double() - ref.weight) / torch.linalg.vector_norm(ref.weight)
        assert err <= tol, (step, err.item())


def test_operator_mode_is_one_lipschitz_after_warmup():
    torch.manual_seed(1)
    layer = spectral_normalize(nn.Conv2d(4, 6, 3, stride=2, padding=1).double(), mode='operator', input_shape=(4, 10, 10))
    w = layer.weight.detach()
    sigma = conv_operator_norm(w, (4, 10, 10), stride=2, padding=1, n_iter=20000, tol=1e-12).sigma
    assert abs(sigma.item() - 1) <= 1e-3


# --- properties -------------------------------------------------------------------------------------------------------
acts = st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Softplus, lambda: nn.LeakyReLU(0.3), nn.SiLU])


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), act=acts, seed=st.integers(0, 2**31 - 1))
def test_lower_below_sampled_below_upper(widths, act, seed):
    "Random MLPs: ||J(x)|| at sampled x (dense jacrev) <= upper bound, and the ascent's lower bound <= upper bound."
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([act()] if i < len(widths) - 2 else [])
    net = nn.Sequential(*layers).double()
    up = lipschitz_upper_bound(net)
    x = 2 * torch.randn(8, widths[0], dtype=torch.float64)
    for xi in x:
        J = jacrev(lambda z: net(z.unsqueeze(0))[0])(xi)
        assert torch.linalg.matrix_norm(J, 2) <= up * (1 + 1e-9)
    low = lipschitz_lower_bound(net, x, steps=10)
    assert low.value <= up * (1 + 1e-9)
    J = jacrev(lambda z: net(z.unsqueeze(0))[0])(low.point)
    assert low.value <= torch.linalg.matrix_norm(J, 2) * (1 + 1e-9)          # the value is attained at the point


@settings(max_examples=15, deadline=None)
@given(c_in=st.integers(1, 3), c_out=st.integers(1, 3), k=st.integers(1, 3), size=st.integers(3, 7),
       stride=st.integers(1, 2), padding=st.integers(0, 1), seed=st.integers(0, 2**31 - 1))
def test_conv_network_upper_bound_holds(c_in, c_out, k, size, stride, padding, seed):
    "Conv nets: the certified bound is at least the dense Jacobian's norm at sampled points."
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding), nn.Tanh(), nn.Flatten()).double()
    shape = (c_in, size, size)
    up = lipschitz_upper_bound(net, shape)
    f = lambda z: net(z.unsqueeze(0))[0]
    for xi in torch.randn(4, *shape, dtype=torch.float64):
        J = jacrev(f)(xi).reshape(-1, math.prod(shape))
        assert torch.linalg.matrix_norm(J, 2) <= up * (1 + 1e-9)
    # linear layer alone: the bound is the exact operator norm up to the Fourier bound's slack, never below it
    lin = nn.Sequential(net[0])
    J = jacrev(lambda z: lin(z.unsqueeze(0))[0])(torch.zeros(shape, dtype=torch.float64)).reshape(-1, math.prod(shape))
    assert torch.linalg.matrix_norm(J, 2) <= lipschitz_upper_bound(lin, shape) * (1 + 1e-9)


def test_nonnegative_relu_net_lower_bound_reaches_truth():
    "Non-negative weights, no biases: Lip = ||W3 W2 W1||; the ascent from dead starts reaches it within 1e-3."
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(8, 12, bias=False), nn.ReLU(), nn.Linear(12, 9, bias=False), nn.ReLU(),
                        nn.Linear(9, 3, bias=False)).double()
    with torch.no_grad():
        for m in net[::2]: m.weight.uniform_(0, 1)
    true = torch.linalg.matrix_norm(net[4].weight @ net[2].weight @ net[0].weight, 2).detach()
    low = lipschitz_lower_bound(net, -1 - torch.rand(8, 8, dtype=torch.float64), steps=100)
    assert low.start_value == 0
    assert abs(low.value - true) <= 1e-3 * true and lipschitz_upper_bound(net) >= true * (1 - 1e-12)


def test_jacobian_spectral_norm_keeps_device_and_dtype():
    net = nn.Sequential(nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2))
    s = jacobian_spectral_norm(net, torch.randn(4, 5), n_iter=100)
    assert s.shape == (4,) and s.dtype == torch.float32
    x = torch.randn(4, 5)
    dense = torch.stack([torch.linalg.matrix_norm(jacrev(net)(xi), 2) for xi in x]).detach()
    assert torch.allclose(jacobian_spectral_norm(net, x, n_iter=200), dense, rtol=1e-4)


def test_a_layer_used_twice_counts_twice():
    "nn.Sequential(A, act, A) applies A twice; named_children() lists it once, and a bound built on it was unsound (2 < 4)."
    from lipnotes.norms import frobenius_lipschitz_bound
    shared = nn.Linear(3, 3, bias=False)
    with torch.no_grad(): shared.weight.copy_(2 * torch.eye(3))
    net = nn.Sequential(shared, nn.ReLU(), shared)
    assert lipschitz_upper_bound(net).item() == pytest.approx(4.0)
    assert frobenius_lipschitz_bound(net).item() == pytest.approx(12.0)        # ||2I||_F^2 = 12 >= 4
    J = jacrev(lambda z: net(z.unsqueeze(0))[0])(torch.ones(3))
    assert torch.linalg.matrix_norm(J, 2).item() == pytest.approx(4.0)        # attained where the ReLU is on
