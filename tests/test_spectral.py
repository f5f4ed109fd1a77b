"""lipnotes.spectral regressions (issue 14): zero-initialised spectrally normalised layers, conv_operator_norm restarts,
operator mode refusing other input sizes, power_iteration's eps and empty batches, and the chapter's conv-norm claims,
each against an independent reference (torch.linalg on a dense matrix of the operator)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from lipnotes.spectral import conv_operator_norm, power_iteration, spectral_normalize, spectral_penalty


def dense_conv(weight, shape, stride=1, padding=0, dilation=1, groups=1, padding_mode='zeros'):
    "The matrix of x -> conv2d(x, weight) on (C, H, W) images, built by convolving every basis image (F.conv2d, F.pad)."
    n = math.prod(shape)
    x = torch.eye(n, dtype=weight.dtype).reshape(n, *shape)
    if padding_mode == 'circular':
        p = (padding, padding) * 2 if isinstance(padding, int) else (padding[1], padding[1], padding[0], padding[0])
        x, padding = F.pad(x, p, mode='circular'), 0
    return F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups).reshape(n, -1).T


def true_norm(layer_weight):
    return torch.linalg.matrix_norm(layer_weight.detach().flatten(1), 2).item()


# ---- item 6: an all-zero weight -------------------------------------------------------------------------------------
@pytest.mark.parametrize("coeff", [None, 0.5])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_zero_initialised_linear_is_normalised_once_nonzero(coeff, optimizer):
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    nn.init.zeros_(lin.weight)
    spectral_normalize(lin, coeff=coeff)
    assert torch.equal(lin.weight, torch.zeros(4, 6, dtype=torch.float64))          # W = 0: normalised weight 0, finite
    sn = lin.parametrizations.weight[0]
    assert torch.isfinite(sn._u).all() and torch.isfinite(sn._v).all()
    assert math.isclose(sn._u.norm().item(), 1, rel_tol=1e-12) and math.isclose(sn._v.norm().item(), 1, rel_tol=1e-12)
    opt = (torch.optim.SGD(lin.parameters(), lr=0.1) if optimizer == "sgd" else torch.optim.Adam(lin.parameters(), lr=0.1))
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    loss = (lin(x) - y).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    raw = lin.parametrizations.weight.original.detach()
    assert raw.abs().max() > 0 and torch.isfinite(raw).all()
    out = lin(x)                                                                      # training forward after the step
    assert torch.isfinite(out).all()
    sigma_raw = true_norm(raw)
    target = 1.0 if coeff is None else min(1.0, coeff / sigma_raw) * sigma_raw
    assert math.isclose(true_norm(lin.weight), target, rel_tol=1e-6), (true_norm(lin.weight), target)


def test_zero_initialised_linear_trains_finitely():
    torch.manual_seed(1)
    lin = nn.Linear(5, 3).double()
    nn.init.zeros_(lin.weight)
    spectral_normalize(lin)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    for _ in range(20):
        loss = (lin(x) - y).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
        assert torch.isfinite(loss)
    lin(x)
    assert math.isclose(true_norm(lin.weight), 1.0, rel_tol=1e-3)


@pytest.mark.parametrize("coeff", [None, 0.5])
def test_zero_initialised_conv_operator_mode(coeff):
    torch.manual_seed(2)
    shape = (2, 6, 6)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    nn.init.zeros_(conv.weight)
    spectral_normalize(conv, mode='operator', input_shape=shape, coeff=coeff)
    opt = torch.optim.Adam(conv.parameters(), lr=0.1)
    x = torch.randn(4, *shape, dtype=torch.float64)
    loss = -conv(x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
    assert torch.isfinite(conv(x)).all()
    raw = conv.parametrizations.weight.original.detach()
    op = lambda w: torch.linalg.matrix_norm(dense_conv(w, shape, padding=1), 2).item()
    target = 1.0 if coeff is None else min(coeff, op(raw))
    assert math.isclose(op(conv.weight.detach()), target, rel_tol=1e-6)


# ---- item 7: conv_operator_norm from a zero, NaN or null-space start -------------------------------------------------
def test_conv_operator_norm_zero_and_null_space_starts():
    torch.manual_seed(3)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    ref = torch.linalg.matrix_norm(dense_conv(w, (3, 6, 6), padding=1), 2)
    res = conv_operator_norm(w, (3, 6, 6), padding=1, v=torch.zeros(3, 6, 6, dtype=torch.float64), tol=1e-13, n_iter=20000)
    assert torch.isclose(res.sigma, ref, rtol=1e-6)
    # a horizontal difference kernel maps every image constant along rows to 0 (circular padding): a null-space start
    k = torch.tensor([[[[1.0, -1.0]]]], dtype=torch.float64)
    dense = dense_conv(k, (1, 4, 4), padding=(0, 1), padding_mode='circular')
    ones = torch.ones(1, 4, 4, dtype=torch.float64)
    assert torch.equal(dense @ ones.flatten(), torch.zeros(dense.shape[0], dtype=torch.float64))
    res = conv_operator_norm(k, (1, 4, 4), padding=(0, 1), padding_mode='circular', v=ones, tol=1e-13, n_iter=20000)
    assert torch.isclose(res.sigma, torch.linalg.matrix_norm(dense, 2), rtol=1e-6)
    assert torch.isclose(torch.linalg.vector_norm(res.v), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float('nan'), float('inf')])
def test_conv_operator_norm_non_finite_start(bad):
    v = torch.randn(3, 6, 6); v[0, 1, 2] = bad
    with pytest.raises(ValueError, match="^conv_operator_norm: v contains NaN or Inf"):
        conv_operator_norm(torch.randn(2, 3, 3, 3), (3, 6, 6), v=v)


def test_conv_operator_norm_zero_kernel_is_zero():
    res = conv_operator_norm(torch.zeros(2, 3, 3, 3), (3, 6, 6), v=torch.randn(3, 6, 6))
    assert res.sigma == 0 and torch.isfinite(res.v).all()


# ---- item 8: operator mode refuses other input sizes ----------------------------------------------------------------
def test_operator_mode_refuses_other_input_sizes():
    torch.manual_seed(4)
    conv = spectral_normalize(nn.Conv2d(1, 2, 3, padding=1).double(), mode='operator', input_shape=(1, 4, 4))
    conv(torch.randn(2, 1, 4, 4, dtype=torch.float64)); conv(torch.randn(1, 4, 4, dtype=torch.float64))   # batched, unbatched
    w = conv.weight.detach()
    on_32 = torch.linalg.matrix_norm(dense_conv(w, (1, 12, 12), padding=1), 2)
    assert on_32 > 1.05                              # the norm normalised for 4x4 inputs does not hold for larger ones
    for bad in [(2, 1, 32, 32), (1, 12, 12)]:
        with pytest.raises(ValueError, match=r"^spectral_normalize: .*input_shape=\(1, 4, 4\).*\(1, " + str(bad[-1])):
            conv(torch.randn(*bad, dtype=torch.float64))
    conv.eval()
    with pytest.raises(ValueError, match="^spectral_normalize: "):
        conv(torch.randn(1, 1, 8, 8, dtype=torch.float64))


def test_operator_mode_check_survives_deepcopy():
    "(torch pickles parametrized modules only through state_dict, so deepcopy is the copy to check)"
    import copy
    conv = spectral_normalize(nn.Conv2d(1, 2, 3, padding=1), mode='operator', input_shape=(1, 5, 5))
    clone = copy.deepcopy(conv)
    clone(torch.randn(1, 1, 5, 5))
    with pytest.raises(ValueError, match="^spectral_normalize: "):
        clone(torch.randn(1, 1, 6, 6))


def test_spectral_normalize_errors_name_it():
    "input_shape is validated directly; the messages name spectral_normalize, not conv_operator_norm."
    for kwargs, words in [(dict(input_shape=(1, 2, 2)), "does not fit"), (dict(input_shape=(1, 0, 5)), "input_shape"),
                          (dict(input_shape=(1, 5)), "input_shape must be (C, H, W)"),
                          (dict(input_shape=(1, 5.0, 5)), "input_shape")]:
        with pytest.raises((ValueError, TypeError), match="^spectral_normalize: ") as e:
            spectral_normalize(nn.Conv2d(1, 2, 3), mode='operator', **kwargs)
        assert words in str(e.value)


# ---- item 11: eps, empty batch, meta ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
@pytest.mark.parametrize("eps", [1e-300, 1e-12, 1.0, 1e10, 1e300])
def test_power_iteration_eps_does_not_change_the_answer(scale, eps):
    torch.manual_seed(5)
    W = torch.randn(6, 5, dtype=torch.float64) * scale
    u = torch.randn(6, dtype=torch.float64)
    sigma, _, _ = power_iteration(W, n_iter=500, u=u, eps=eps)
    assert torch.isclose(sigma, torch.linalg.matrix_norm(W, 2), rtol=1e-10)


def test_power_iteration_empty_batch():
    for shape in [(0, 3, 4), (2, 0, 3, 4)]:
        sigma, u, v = power_iteration(torch.randn(shape, dtype=torch.float64))
        assert sigma.shape == shape[:-2] and u.shape == shape[:-1] and v.shape == shape[:-2] + shape[-1:]
        assert sigma.dtype == torch.float64
        assert torch.equal(sigma, torch.linalg.matrix_norm(torch.randn(shape, dtype=torch.float64), 2))


def test_power_iteration_null_space_start_with_null_uniform_fallback():
    "W = e1 d^T with d orthogonal to the all-ones vector, started at e2: W^T u = 0 and W @ uniform = 0; still finds 1."
    W = torch.zeros(3, 4, dtype=torch.float64); W[0] = torch.tensor([1.0, -1.0, 0, 0]) / 2 ** 0.5
    u = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    sigma, _, _ = power_iteration(W, n_iter=50, u=u)
    assert torch.isclose(sigma, torch.tensor(1.0, dtype=torch.float64))


# ---- chapter claims ------------------------------------------------------------------------------------------------
def test_two_forwards_share_one_backward():
    "The vectors are cloned before use, so D(real) - D(fake) backpropagates (the chapter's claim)."
    for layer in (spectral_normalize(nn.Linear(4, 3)),
                  spectral_normalize(nn.Conv2d(1, 2, 3), mode='operator', input_shape=(1, 5, 5))):
        shape = (2, 4) if isinstance(layer, nn.Linear) else (2, 1, 5, 5)
        (layer(torch.randn(shape)).sum() - layer(torch.randn(shape)).sum()).backward()
        assert torch.isfinite(layer.parametrizations.weight.original.grad).all()


# ---- issue 15: the one power method ----------------------------------------------------------------------------------
from torch.func import jacrev, jvp, vjp, vmap

from lipnotes.spectral import (ConvGeometry, ConvMaps, PowerIteration, PowerMethod, conv_geometry, conv_maps,
                               power_method)


def matrix_maps(A):
    "x -> A x and y -> A^T y for a matrix or a batch of matrices (vectors along the last dimension)."
    return dict(apply=lambda x: (A @ x.unsqueeze(-1)).squeeze(-1), adjoint=lambda y: (A.mT @ y.unsqueeze(-1)).squeeze(-1))


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("m, n, rank", [(9, 7, None), (7, 9, None), (12, 10, 3), (6, 6, 1)])
def test_power_method_matches_svdvals(m, n, rank):
    g = gen(m * 100 + n)
    A = torch.randn(m, n, dtype=torch.float64, generator=g)
    if rank: A = torch.randn(m, rank, dtype=torch.float64, generator=g) @ torch.randn(rank, n, dtype=torch.float64, generator=g)
    r = power_method(v=torch.randn(n, dtype=torch.float64, generator=g), n_iter=5000, tol=1e-15, **matrix_maps(A))
    assert isinstance(r, PowerMethod) and isinstance(r.steps, int) and r.steps <= 5000
    assert torch.isclose(r.sigma, torch.linalg.svdvals(A)[0], rtol=1e-9)
    assert torch.isclose(r.u @ A @ r.v, r.sigma, rtol=1e-12)                          # attained by the returned pair
    one = torch.tensor(1.0, dtype=torch.float64)
    assert torch.isclose(r.u.norm(), one) and torch.isclose(r.v.norm(), one)


def test_power_method_batched_each_member_its_own_answer():
    g = gen(1)
    A = torch.randn(6, 5, 8, dtype=torch.float64, generator=g)
    r = power_method(v=torch.randn(6, 8, dtype=torch.float64, generator=g), n_iter=2000, dim=-1, **matrix_maps(A))
    assert r.sigma.shape == (6,) and r.u.shape == (6, 5) and r.v.shape == (6, 8)
    assert torch.allclose(r.sigma, torch.linalg.svdvals(A)[:, 0], rtol=1e-9)
    for k in (1, 2, 3):                                                                # never above sigma_1, any step
        s = power_method(v=torch.randn(6, 8, dtype=torch.float64, generator=g), n_iter=k, dim=-1, **matrix_maps(A)).sigma
        assert (s <= torch.linalg.svdvals(A)[:, 0] * (1 + 1e-12)).all()


@pytest.mark.parametrize("eigs", [[-5.0, 3.0, 2.0, -1.0, 0.0], [4.0, -2.0, 1.0, 0.5, 0.1], [-1.0, -0.9, 0.3, 0.2, 0.0]])
def test_power_method_symmetric_indefinite_matches_eigvalsh(eigs):
    g = gen(2)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=g))
    H = Q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ Q.T
    lam = torch.linalg.eigvalsh(H)
    top = lam[lam.abs().argmax()]
    r = power_method(lambda x: H @ x, torch.randn(5, dtype=torch.float64, generator=g), 3000, tol=1e-15)
    assert torch.isclose(r.sigma, top, rtol=1e-6) and torch.sign(r.sigma) == torch.sign(top)
    assert torch.isclose((r.u @ H @ r.v).abs(), r.sigma.abs(), rtol=1e-12)
    pieces = power_method(lambda p: list((H @ torch.cat(p)).split([2, 3])),                      # one vector in pieces
                          list(torch.randn(5, dtype=torch.float64, generator=g).split([2, 3])), 3000)
    assert torch.isclose(pieces.sigma, top, rtol=1e-6) and [t.shape for t in pieces.v] == [(2,), (3,)]


def test_power_method_zero_operator_and_null_space_start():
    g = gen(3)
    Z = torch.zeros(4, 3, dtype=torch.float64)
    r = power_method(v=torch.randn(3, dtype=torch.float64, generator=g), n_iter=5, **matrix_maps(Z),
                     restart=lambda: torch.randn(4, dtype=torch.float64, generator=g))
    assert r.sigma == 0 and math.isclose(r.u.norm().item(), 1) and math.isclose(r.v.norm().item(), 1)
    r = power_method(v=torch.randn(3, dtype=torch.float64, generator=g), n_iter=5, **matrix_maps(Z))   # no restart: zeros kept
    assert r.sigma == 0 and torch.isfinite(r.u).all() and torch.isfinite(r.v).all()
    A = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)                 # A (1, 1, 0) = 0
    null = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    for tol in (None, 1e-14):
        r = power_method(v=null, n_iter=200, tol=tol, **matrix_maps(A), restart=lambda: torch.randn(2, dtype=torch.float64, generator=g))
        assert torch.isclose(r.sigma, torch.linalg.svdvals(A)[0], rtol=1e-9)
    D = torch.diag(torch.tensor([-3.0, 0.0], dtype=torch.float64))                              # symmetric, D e2 = 0
    for n_iter in (1, 20):                                # one step: -||D r|| for the fresh r, read against r itself
        r = power_method(lambda x: D @ x, torch.tensor([0.0, 1.0], dtype=torch.float64), n_iter,
                         restart=lambda: torch.randn(2, dtype=torch.float64, generator=g))
        assert r.sigma == -3.0 if n_iter > 1 else -3.0 < r.sigma < 0


def test_power_method_restart_leaves_other_batch_members_alone():
    g = gen(4)
    A = torch.randn(3, 4, 4, dtype=torch.float64, generator=g); A[1] = 0
    v0 = torch.randn(3, 4, dtype=torch.float64, generator=g)
    with_restart = power_method(v=v0, n_iter=30, dim=-1, **matrix_maps(A),
                                restart=lambda: torch.randn(3, 4, dtype=torch.float64, generator=g))
    without = power_method(v=v0, n_iter=30, dim=-1, **matrix_maps(A))
    assert with_restart.sigma[1] == 0 and torch.equal(with_restart.sigma[[0, 2]], without.sigma[[0, 2]])


def test_power_method_keeps_the_callers_vectors_on_a_zero_product():
    "spectral normalisation's rule: a zero weight leaves u and v as they were."
    u, v = torch.tensor([0.6, 0.8], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    r = power_method(v=v, n_iter=3, u=u, **matrix_maps(torch.zeros(2, 3, dtype=torch.float64)))
    assert torch.equal(r.u, u) and torch.equal(r.v, v) and r.sigma == 0


def test_power_method_tol_and_every():
    g = gen(5)
    A = torch.randn(20, 20, dtype=torch.float64, generator=g)
    exact = torch.linalg.svdvals(A)[0]
    r1 = power_method(v=torch.ones(20, dtype=torch.float64), n_iter=100_000, tol=1e-10, **matrix_maps(A))
    r10 = power_method(v=torch.ones(20, dtype=torch.float64), n_iter=100_000, tol=1e-10, every=10, **matrix_maps(A))
    assert r1.steps < 100_000 and r10.steps % 10 == 0 and r10.steps >= r1.steps
    assert (exact - r10.sigma) <= (exact - r1.sigma) * (1 + 1e-12)                            # a round is the stricter test
    fixed = power_method(v=torch.ones(20, dtype=torch.float64), n_iter=r1.steps, **matrix_maps(A))
    assert torch.equal(fixed.sigma, r1.sigma)                                                  # the same steps, the same numbers


def test_power_method_under_vmap_per_example_jacobian_norms():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    f = lambda z: net(z.unsqueeze(0)).squeeze(0)
    def one(xi, vi):
        _, pullback = vjp(f, xi)
        r = power_method(lambda t: jvp(f, (xi,), (t,))[1], vi, 200, adjoint=lambda y: pullback(y)[0])
        return r.sigma, r.v
    with torch.no_grad(): sigma, v = vmap(one)(x, torch.randn(5, 6, dtype=torch.float64))
    J = vmap(jacrev(f))(x)
    assert torch.allclose(sigma, torch.linalg.matrix_norm(J, 2), rtol=1e-9)
    assert torch.allclose(torch.linalg.vector_norm(v, dim=-1), torch.ones(5, dtype=torch.float64))


def test_power_iteration_is_a_named_tuple_that_unpacks():
    W = torch.randn(5, 4, dtype=torch.float64)
    res = power_iteration(W, 200)
    assert isinstance(res, PowerIteration) and res._fields == ('sigma', 'u', 'v')
    sigma, u, v = res
    assert torch.equal(sigma, res.sigma) and torch.isclose(torch.linalg.vector_norm(W @ v), sigma)
    Wg = W.clone().requires_grad_()
    assert not power_iteration(Wg, 5).sigma.requires_grad                                     # runs without autograd


def test_conv_geometry_and_conv_maps():
    geo = conv_geometry(nn.Conv2d(2, 4, (3, 5), padding='same', dilation=(1, 2), groups=2, padding_mode='circular'))
    assert isinstance(geo, ConvGeometry) and geo == ((1, 1), (1, 4), (1, 2), 2, 'circular')
    assert conv_geometry(nn.Conv2d(1, 1, 3, stride=2, padding='valid')).padding == (0, 0)
    torch.manual_seed(7)
    w = torch.randn(4, 1, 3, 5, dtype=torch.float64)
    maps = conv_maps(w, (2, 6, 9), geo)
    assert isinstance(maps, ConvMaps) and maps.output_shape == (4, 6, 9)
    dense = torch.func.jacrev(lambda x: maps.forward(x.unsqueeze(0))[0])(torch.zeros(2, 6, 9, dtype=torch.float64)).reshape(4 * 54, -1)
    y = torch.randn(1, 4, 6, 9, dtype=torch.float64)
    assert torch.allclose(maps.adjoint(y).flatten(), dense.T @ y.flatten(), atol=1e-12)      # the adjoint is the transpose
    res = conv_operator_norm(w, (2, 6, 9), *geo, tol=1e-14, n_iter=20_000)                   # a ConvGeometry spreads into it
    assert torch.isclose(res.sigma, torch.linalg.matrix_norm(dense, 2), rtol=1e-6)


# --- spectral_normalize against torch (moved from the old test_lipschitz.py) ---------------------------------------------
@pytest.mark.parametrize("call, exc, words", [
    (lambda: spectral_normalize("layer"), TypeError, "spectral_normalize: module must be a torch.nn.Module"),
    (lambda: spectral_normalize(nn.Linear(3, 3), name='nope'), ValueError, "has no tensor parameter 'nope'"),
    (lambda: spectral_normalize(nn.Linear(3, 3), mode='fro'), ValueError, "mode must be 'matrix' or 'operator'"),
    (lambda: spectral_normalize(nn.Linear(3, 3), mode='operator', input_shape=(3,)), ValueError,
     "needs an nn.Conv1d, nn.Conv2d or nn.ConvTranspose2d"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3), mode='operator'), ValueError, "needs input_shape"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3), mode='operator', input_shape=(2, 8, 8)), ValueError, "channels"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3), input_shape=(1, 8, 8)), ValueError, "only used with mode='operator'"),
    (lambda: spectral_normalize(nn.Linear(3, 3), coeff=0.0), ValueError, "coeff must be positive"),
    (lambda: spectral_normalize(nn.Linear(3, 3), n_power_iterations=0), ValueError, "n_power_iterations must be >= 1"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 4, padding='same'), mode='operator', input_shape=(1, 8, 8)), ValueError, "asymmetrically"),
    (lambda: spectral_normalize(nn.Linear(3, 3), exact=1), TypeError, "spectral_normalize: exact must be a bool"),
    (lambda: spectral_normalize(nn.Conv2d(1, 1, 3, padding=2, padding_mode='circular'), mode='operator', input_shape=(1, 8, 8),
                                exact=True), ValueError, "reads some outputs twice"),
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


# --- regressions found by the old-vs-new differential audit (issue 15) -----------------------------------------------
def test_conv_operator_norm_zero_or_null_space_start_spends_no_step():
    "A zero start, or one the kernel maps to 0, is replaced by the random start before the first step: same numbers."
    diff = torch.tensor([[[[1.0, -1.0]]]], dtype=torch.float64)          # horizontal difference: constants map to 0
    for v in (torch.zeros(1, 5, 5, dtype=torch.float64), torch.ones(1, 5, 5, dtype=torch.float64)):
        for n_iter in (1, 2, 5):
            torch.manual_seed(7); got = conv_operator_norm(diff, (1, 5, 5), v=v, n_iter=n_iter)
            torch.manual_seed(7); ref = conv_operator_norm(diff, (1, 5, 5), n_iter=n_iter)
            assert got.sigma > 0 and torch.equal(got.sigma, ref.sigma) and torch.equal(got.v, ref.v), (n_iter, got.sigma)
            assert torch.isclose(got.u.norm(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_spectral_penalty_iterates_half_precision_in_float32_like_power_iteration(dtype):
    "The warm-up (15 steps) and each training call's step are power_iteration's, which iterates half precision in float32."
    torch.manual_seed(0)
    lin = nn.Linear(40, 30).to(dtype)
    W = lin.weight.detach()
    torch.manual_seed(3); got = [spectral_penalty(lin) for _ in range(6)]
    torch.manual_seed(3); sigma, u, v = power_iteration(W, 15, u=torch.randn(30, dtype=dtype))
    ref = [(u @ W @ v) ** 2]
    for _ in range(5):
        sigma, u, v = power_iteration(W, 1, u=u); ref.append((u @ W @ v) ** 2)
    assert all(g.dtype == dtype for g in got) and [g.item() for g in got] == [r.item() for r in ref]
