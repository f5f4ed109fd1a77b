"""lipnotes.certificates (spectral_normalize's tests are in test_spectral.py, activation_lipschitz's in
test_lipschitz.py): bad input is refused before any work, with the function and argument named; property tests of
lower <= Lip <= upper against dense Jacobians (torch.func.jacrev). certify's tests moved with it to test_certify.py."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.func import jacrev

from lipnotes.certificates import jacobian_spectral_norm, lipschitz_lower_bound, lipschitz_upper_bound
from lipnotes.lipschitz import activation_lipschitz
from lipnotes.spectral import spectral_normalize

mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
x4 = torch.randn(3, 4)


@pytest.mark.parametrize("call, exc, words", [
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
    (lambda: jacobian_spectral_norm(mlp, torch.ones(2, 4, dtype=torch.int64)), TypeError, "x must have a real floating dtype"),
    (lambda: jacobian_spectral_norm(mlp, torch.full((2, 4), float('nan'))), ValueError, "x contains NaN"),
    (lambda: jacobian_spectral_norm(mlp, x4, n_iter=0), ValueError, "n_iter must be >= 1"),
    (lambda: jacobian_spectral_norm("f", x4), TypeError, "f must be callable"),
    (lambda: jacobian_spectral_norm(mlp, x4, v=torch.randn(3, 5)), ValueError, "v must be a tensor of the shape of x"),
    (lambda: jacobian_spectral_norm(nn.Sequential(nn.Linear(4, 4), nn.Dropout()), x4), ValueError, "call f.eval()"),
    (lambda: lipschitz_lower_bound(mlp, x4, steps=0), ValueError, "lipschitz_lower_bound: steps must be >= 1"),
    (lambda: lipschitz_lower_bound(mlp, x4, lr=-1.0), ValueError, "lr must be positive"),
    (lambda: lipschitz_lower_bound(mlp, x4, beta=(1.0,)), ValueError, "beta must be a pair"),
    (lambda: lipschitz_lower_bound(mlp, torch.full((2, 4), float('inf'))), ValueError, "x contains NaN or Inf"),
])
def test_lipschitz_rejects(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value)


# --- properties -------------------------------------------------------------------------------------------------------
# Softplus with threshold=40: the default threshold 20 leaves a jump of 2.06e-9 that float64 resolves, so a float64 net
# with the default Softplus has no Lipschitz constant and is refused (test_float64_default_softplus_is_refused).
acts = st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, lambda: nn.Softplus(threshold=40.0), lambda: nn.LeakyReLU(0.3),
                        nn.SiLU])


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


# --- issue 14: pooling geometries, declared constants, the Fourier bound's exactness condition -------------------------
def _dense_norm(layer, shape):
    "||J|| of a layer on one example of `shape`, from the dense Jacobian (torch.func.jacrev at 0; exact for a linear layer)."
    J = jacrev(lambda z: layer(z.unsqueeze(0))[0])(torch.zeros(shape, dtype=torch.float64))
    return torch.linalg.matrix_norm(J.reshape(-1, math.prod(shape)), 2).item()


def _spike_ratio(layer, shape, pixel):
    "||layer(e) - layer(0)|| / ||e|| for e the unit spike at `pixel`: a ratio one pair of inputs attains."
    e = torch.zeros(1, *shape, dtype=torch.float64); e[(0,) + pixel] = 1.0
    with torch.no_grad(): return torch.linalg.vector_norm(layer(e) - layer(torch.zeros_like(e))).item()


@pytest.mark.parametrize("pool, shape, pixel, attained", [
    (nn.MaxPool2d(3, stride=1), (1, 5, 5), (0, 2, 2), 3.0),         # the centre lies in all 9 windows
    (nn.MaxPool2d(3, 2, 1), (1, 8, 8), (0, 1, 1), 2.0),             # ResNet stem: pixel (1, 1) lies in 2 x 2 windows
])
def test_max_pool_int_arguments_are_two_dimensional(pool, shape, pixel, attained):
    "Issue 14 item 1: an int kernel/stride is 2-D; the old code read it as 1-D and certified sqrt(3), sqrt(2) below 3, 2."
    assert _spike_ratio(pool.double(), shape, pixel) == pytest.approx(attained, abs=1e-12)
    for input_shape in (shape, None):                               # exact on this size; for every size without input_shape
        assert lipschitz_upper_bound(nn.Sequential(pool), input_shape).item() >= attained * (1 - 1e-12)
    assert lipschitz_upper_bound(nn.Sequential(pool), shape).item() == pytest.approx(attained, abs=1e-12)


def test_max_pool_constant_is_attained_in_every_geometry():
    "sqrt(most windows on one pixel) is attained by a spike and never exceeded by random pairs (padding, dilation, ceil_mode)."
    torch.manual_seed(0)
    for pool, shape in [(nn.MaxPool2d((3, 2), (2, 1), (1, 1), (1, 2), ceil_mode=True), (1, 7, 6)),
                        (nn.MaxPool2d(2, 1, 1, 2), (2, 5, 5)), (nn.MaxPool1d(4, 1, 2, ceil_mode=True), (3, 9)),
                        (nn.AdaptiveMaxPool2d((4, 3)), (1, 7, 5)), (nn.AdaptiveMaxPool1d(6), (2, 4))]:
        pool = pool.double()
        c = lipschitz_upper_bound(nn.Sequential(pool), shape).item()
        best = max(_spike_ratio(pool, shape, p) for p in [tuple(t) for t in torch.cartesian_prod(
            *[torch.arange(n) for n in shape]).reshape(-1, len(shape)).tolist()])
        assert best == pytest.approx(c, abs=1e-12), pool
        x1, x2 = torch.randn(2, 200, *shape, dtype=torch.float64)
        with torch.no_grad(): r = (pool(x1) - pool(x2)).flatten(1).norm(dim=1) / (x1 - x2).flatten(1).norm(dim=1)
        assert r.max().item() <= c * (1 + 1e-12)


@pytest.mark.parametrize("pool, exc, words", [
    (nn.MaxPool2d(2, return_indices=True), ValueError, "return_indices=True"),
    (nn.MaxPool2d((2, 1), 1, (1, 0), (2, 1)), ValueError, "reads only padding"),
])
def test_max_pool_refusals(pool, exc, words):
    with pytest.raises(exc, match=words): lipschitz_upper_bound(nn.Sequential(pool), (1, 1, 4))


def _old_dense_pool_norm(m, shape):
    "The old method: the pooling of one channel as a dense (HW x H'W') matrix from an identity basis."
    n = math.prod(shape[1:])
    with torch.no_grad(): P = m(torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape[1:])).reshape(n, -1)
    return torch.linalg.matrix_norm(P, 2).item()


@pytest.mark.parametrize("pool, shape", [
    (nn.AvgPool2d(3), (2, 7, 8)), (nn.AvgPool2d(3, 2, 1), (1, 9, 6)), (nn.AvgPool2d((3, 2), (2, 1), (1, 0), ceil_mode=True), (1, 8, 5)),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (1, 6, 7)),
    (nn.AvgPool2d(4, 3, 2, ceil_mode=True, count_include_pad=True), (1, 10, 9)),
    (nn.AvgPool2d(3, 2, 1, divisor_override=2), (1, 7, 7)), (nn.AvgPool2d((2, 3), 1, (1, 1), divisor_override=5), (1, 5, 6)),
    (nn.AvgPool1d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 9)), (nn.AvgPool1d(2), (1, 7)),
    (nn.AdaptiveAvgPool2d((3, 5)), (1, 7, 4)), (nn.AdaptiveAvgPool2d((None, 2)), (1, 3, 5)), (nn.AdaptiveAvgPool2d(10), (1, 4, 7)),
    (nn.AdaptiveAvgPool1d(3), (2, 8)), (nn.AdaptiveAvgPool1d(9), (1, 5)),
])
def test_avg_pool_norm_equals_dense_jacobian(pool, shape):
    "Issue 14 item 5: the per-axis (Kronecker) norm equals the dense Jacobian's and the old dense method's, to 1e-12."
    c = lipschitz_upper_bound(nn.Sequential(pool), shape).item()
    assert c == pytest.approx(_dense_norm(pool, shape), rel=1e-12, abs=1e-15)
    assert c == pytest.approx(_old_dense_pool_norm(pool, shape), rel=1e-12, abs=1e-15)


def test_avg_pool_bound_needs_no_dense_basis():
    "3 x 224 x 224: the old method would build a (224^2)^2 float64 basis (20 GB); the new one only 224 x 224 matrices."
    pool = nn.Sequential(nn.AvgPool2d(3, 2, 1), nn.AdaptiveAvgPool2d(7))
    c = lipschitz_upper_bound(pool, (3, 224, 224)).item()
    # the same value from the Kronecker identity computed here by hand: ||P_h|| ||P_w|| per layer, one axis matrix each
    ax = lambda m, n: torch.linalg.matrix_norm(m(torch.eye(n, dtype=torch.float64).unsqueeze(1)).squeeze(1), 2).item()
    avg1 = ax(nn.AvgPool1d(3, 2, 1), 224) ** 2 * ax(nn.AdaptiveAvgPool1d(7), 112) ** 2
    assert c == pytest.approx(avg1, rel=1e-12)


@pytest.mark.parametrize("declared, exc", [(float('nan'), ValueError), (float('inf'), ValueError), (-1.0, ValueError),
                                           ("2", TypeError), (True, TypeError), (torch.tensor(float('nan')), ValueError)])
def test_declared_constant_is_validated(declared, exc):
    "Issue 14 item 3: a NaN/inf/negative/string/bool lipschitz_constant gave a NaN, negative or meaningless bound."
    block = nn.Linear(2, 2); block.lipschitz_constant = declared
    with pytest.raises(exc) as e: lipschitz_upper_bound(nn.Sequential(block))
    assert str(e.value).startswith("lipschitz_upper_bound: ") and "lipschitz_constant" in str(e.value)


def _dense_conv(w, shape, s, p, d, g, mode):
    def conv(x):
        x = x.unsqueeze(0)
        if mode == 'circular': x = torch.nn.functional.pad(x, (p[1],) * 2 + (p[0],) * 2, mode='circular')
        return torch.nn.functional.conv2d(x, w, stride=s, padding=0 if mode == 'circular' else p, dilation=d, groups=g)[0]
    J = jacrev(conv)(torch.zeros(shape, dtype=torch.float64))
    return torch.linalg.matrix_norm(J.reshape(-1, math.prod(shape)), 2).item()


def _torus_uniform(n, ke, s, p):
    "Every torus position produced equally often (the exactness condition of the circular Fourier bound), one axis."
    n_out = (n + 2 * p - ke) // s + 1
    pos = [i % (n // s) for i in range(n_out)] if n % s == 0 else [(s * i - p) % n for i in range(n_out)]
    size = n // s if n % s == 0 else n
    return len(set(pos)) == size and len({pos.count(q) for q in set(pos)}) == 1


def test_conv_torus_bound_sound_in_every_geometry_and_exact_only_under_its_condition():
    "Random geometries (zeros/circular, stride, dilation, groups, wide circular padding): bound >= dense ||J||; equal when "
    "every torus position is produced equally often."
    from lipnotes.certificates import _conv_torus_bound
    g = torch.Generator().manual_seed(5)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))
    exact_seen = 0
    for _ in range(120):
        groups = r(1, 2); ci, co = groups * r(1, 2), groups * r(1, 2)
        k, s, d, mode = (r(1, 3), r(1, 3)), (r(1, 3), r(1, 3)), (r(1, 2), r(1, 2)), ('zeros', 'circular')[r(0, 1)]
        H, W = r(3, 8), r(3, 8)
        p = (r(0, H), r(0, W)) if mode == 'circular' else (r(0, 2), r(0, 2))
        ke = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
        if H + 2 * p[0] < ke[0] or W + 2 * p[1] < ke[1]: continue
        w = torch.randn(co, ci // groups, *k, dtype=torch.float64, generator=g)
        exact = _dense_conv(w, (ci, H, W), s, p, d, groups, mode)
        bound = _conv_torus_bound(w, (ci, H, W), s, p, d, groups, mode)
        assert bound >= exact * (1 - 1e-12), (k, s, d, p, groups, mode, H, W)
        if mode == 'circular' and _torus_uniform(H, ke[0], s[0], p[0]) and _torus_uniform(W, ke[1], s[1], p[1]):
            assert bound == pytest.approx(exact, rel=1e-9); exact_seen += 1
    assert exact_seen >= 3


@pytest.mark.parametrize("k, p", [(3, 0), (5, 1), (3, 2)])
def test_circular_fourier_bound_not_exact_without_uniform_positions(k, p):
    "The old claim 'exact for circular padding with the stride dividing n' fails at n = 8, stride 1 (issue 14)."
    from lipnotes.certificates import _conv_torus_bound
    torch.manual_seed(0)
    w = torch.randn(1, 1, k, k, dtype=torch.float64)
    exact = _dense_conv(w, (1, 8, 8), (1, 1), (p, p), (1, 1), 1, 'circular')
    assert not _torus_uniform(8, k, 1, p)
    assert _conv_torus_bound(w, (1, 8, 8), (1, 1), (p, p), (1, 1), 1, 'circular') > 1.05 * exact


def test_overlap_factor_needs_gcd_and_zero_padding():
    "sqrt(ceil(k/s)^2) is too small when gcd(d, s) > 1 (k=3, s=2, d=2: 2.87 > 2); sqrt(k_h k_w) fails for wide circular padding."
    from lipnotes.norms import conv_overlap_factor
    ones = torch.ones(1, 1, 3, 3, dtype=torch.float64)                  # reshaped norm 3
    ratio = _dense_conv(ones, (1, 21, 21), (2, 2), (2, 2), (2, 2), 1, 'zeros') / 3
    assert 2.86 < ratio <= conv_overlap_factor((3, 3), (2, 2), (2, 2)) == 3.0
    third = ones / 3                                                    # reshaped norm 1, sqrt(k_h k_w) = 3
    assert _dense_conv(third, (1, 4, 4), (1, 1), (2, 2), (1, 1), 1, 'circular') == pytest.approx(4.5616, abs=1e-4)


def test_sequential_subclass_with_its_own_forward_is_not_walked():
    "x + lin(x) written as an nn.Sequential subclass: walking its children gave 0 for lin = 0 (true constant 1); now refused."
    class Residual(nn.Sequential):
        def forward(self, x): return x + super().forward(x)
    res = Residual(nn.Linear(3, 3, bias=False))
    with torch.no_grad(): res[0].weight.zero_()
    J = jacrev(lambda z: res(z.unsqueeze(0))[0])(torch.zeros(3))
    assert torch.linalg.matrix_norm(J, 2).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lipschitz_upper_bound: cannot bound layer"):
        lipschitz_upper_bound(nn.Sequential(res))
    res.lipschitz_constant = 1.0
    assert lipschitz_upper_bound(nn.Sequential(res)).item() == 1.0


# --- issue 14: chapter 02's activation rules (dtype, reasons), subclasses that replace forward, hooks --------------------
def _pair_quotient(net, x1, x2):
    "||net(x1) - net(x2)|| / ||x1 - x2||: a ratio that one pair of inputs attains."
    with torch.no_grad(): return (torch.linalg.vector_norm(net(x1) - net(x2)) / torch.linalg.vector_norm(x1 - x2)).item()


def _unit_linear(dtype):
    lin = nn.Linear(1, 1).to(dtype)
    with torch.no_grad(): lin.weight.fill_(1.0); lin.bias.zero_()
    return lin


def test_float64_default_softplus_is_refused():
    """torch's Softplus switches to x at x = threshold/beta, a jump of log(1 + e^-20) = 2.06e-9 at the defaults. A float64
    model resolves it: the pair 20 -+ 1e-12 attains a ratio of ~1000, where the old code certified 1. Refused, with the
    layer and the reason; float32 (where rounding hides the jump) and threshold=40 are accepted."""
    net = nn.Sequential(_unit_linear(torch.float64), nn.Softplus())
    x1, x2 = torch.tensor([[20 - 1e-12]], dtype=torch.float64), torch.tensor([[20 + 1e-12]], dtype=torch.float64)
    assert _pair_quotient(net, x1, x2) > 1000
    with pytest.raises(ValueError) as e: lipschitz_upper_bound(net)
    msg = str(e.value)
    assert msg.startswith("lipschitz_upper_bound: cannot bound layer '1' (Softplus)") and "torch.float64" in msg
    assert "jumps by log(1+exp(-threshold))/|beta| = 2.06e-09" in msg
    with pytest.raises(ValueError, match=r"^lipschitz_upper_bound: cannot bound layer '0' \(Softplus\).*float64"):
        lipschitz_upper_bound(nn.Sequential(nn.Softplus()))           # no parameters: inputs of any dtype, float64 included
    # accepted where the jump is below the dtype's resolution: the bound is then ||W|| = 1, and no pair beats it
    for ok in (nn.Sequential(_unit_linear(torch.float32), nn.Softplus()),
               nn.Sequential(_unit_linear(torch.float64), nn.Softplus(threshold=40.0))):
        assert lipschitz_upper_bound(ok).item() == 1.0
        dt = ok[0].weight.dtype
        xs = torch.linspace(-50, 50, 200_001, dtype=dt).reshape(-1, 1)
        with torch.no_grad(): y = ok(xs)
        assert ((y[1:] - y[:-1]).abs() / (xs[1:] - xs[:-1])).max().item() <= 1 + 4 * torch.finfo(dt).eps * 50 / 5e-4


def test_float32_softplus_rounding_hides_the_jump():
    "On the 6000 float32 inputs nearest 20, torch's Softplus is the correctly rounded smooth softplus (the jump is invisible)."
    x32 = (torch.tensor([20.0]).view(torch.int32) + torch.arange(-3000, 3000, dtype=torch.int32)).view(torch.float32)
    y32 = nn.Softplus()(x32)
    assert torch.equal(y32, torch.log1p(torch.exp(x32.double())).float())
    assert ((y32[1:] - y32[:-1]) / (x32[1:] - x32[:-1])).eq(1).all()


@pytest.mark.parametrize("act, reason", [
    (nn.CELU(alpha=-1.0), "alpha=-1.0 < 0 makes the slope e^(x/alpha) unbounded"),
    (nn.Hardshrink(0.5), "jumps by lambd=0.5 at +-lambd"),
    (nn.RReLU(0.5, 0.1), "lower=0.5 <= upper=0.1"),
    (nn.Softplus(beta=2.0, threshold=5.0), "jumps by log(1+exp(-threshold))/|beta|"),
    (nn.Threshold(0.1, -1.0), "jumps from value to threshold"),
], ids=['CELU(-1)', 'Hardshrink(0.5)', 'RReLU(0.5,0.1)', 'Softplus(2,5)', 'Threshold(0.1,-1)'])
def test_known_but_refused_activation_names_its_reason(act, reason):
    "A known activation refused for its settings: the error gives chapter 02's reason, not 'not an activation it knows'."
    net = nn.Sequential(nn.Linear(2, 2), act).double().eval()
    for call, fname in ((lambda: lipschitz_upper_bound(net), 'lipschitz_upper_bound'),
                        (lambda: activation_lipschitz(act), 'activation_lipschitz')):
        with pytest.raises(ValueError) as e: call()
        msg = str(e.value)
        assert msg.startswith(f"{fname}: ") and reason in msg, msg
        if fname != 'activation_lipschitz': assert f"layer '1' ({type(act).__name__})" in msg, msg


class _Big(nn.Linear):
    def forward(self, x): return 100 * super().forward(x)


class _BigConv(nn.Conv2d):
    def forward(self, x): return 100 * super().forward(x)


class _BigReLU(nn.ReLU):
    def forward(self, x): return 100 * super().forward(x)


class _BigMaxPool(nn.MaxPool2d):
    def forward(self, x): return 100 * super().forward(x)


class _BigAvgPool(nn.AvgPool2d):
    def forward(self, x): return 100 * super().forward(x)


class _BigBatchNorm(nn.BatchNorm1d):
    def forward(self, x): return 100 * super().forward(x)


class _CallTwice(nn.Linear):
    def __call__(self, x): return 100 * super().__call__(x)


def _dense_at(net, x):
    "||J_net(x)||_2 of one example x, from the dense Jacobian (torch.func.jacrev)."
    J = jacrev(lambda z: net(z.unsqueeze(0))[0])(x)
    return torch.linalg.matrix_norm(J.reshape(-1, x.numel()), 2).item()


SUBCLASSES = [
    (lambda: _Big(4, 3), nn.Linear, (4,)),
    (lambda: _BigConv(1, 2, 3, padding=1), nn.Conv2d, (1, 5, 5)),
    (lambda: _BigReLU(), nn.ReLU, (4,)),
    (lambda: _BigMaxPool(2), nn.MaxPool2d, (1, 4, 4)),
    (lambda: _BigAvgPool(2), nn.AvgPool2d, (1, 4, 4)),
    (lambda: _BigBatchNorm(4), nn.BatchNorm1d, (4,)),
    (lambda: _CallTwice(4, 4), nn.Linear, (4,)),
]


@pytest.mark.parametrize("make, base, shape", SUBCLASSES, ids=['Linear', 'Conv2d', 'ReLU', 'MaxPool2d', 'AvgPool2d',
                                                              'BatchNorm1d', 'Linear __call__'])
def test_subclass_that_replaces_forward_is_refused(make, base, shape):
    """A subclass of a torch layer whose forward returns 100x its output attains (dense Jacobian) far more than its base
    class's rule certified (the old code bounded it as its base class); refused unless it declares a constant."""
    torch.manual_seed(0)
    layer = make().double().eval()
    with torch.no_grad():
        if isinstance(layer, nn.Linear): layer.weight.copy_(torch.eye(4)[:layer.out_features] * 0.9)   # ||W|| = 0.9
    net = nn.Sequential(layer, nn.Flatten())
    x = torch.rand(shape, dtype=torch.float64) + 0.5                 # ReLU on, a window's maximum unique
    attained = _dense_at(net, x)
    old_rule = copy.deepcopy(layer); old_rule.__class__ = base       # the same layer read by its base class's rule
    as_base = lipschitz_upper_bound(nn.Sequential(old_rule, nn.Flatten()), shape).item()
    assert attained > 1.05 * as_base, (attained, as_base)            # the base class's certificate is beaten
    with pytest.raises(ValueError) as e: lipschitz_upper_bound(net, shape)
    msg = str(e.value)
    assert msg.startswith(f"lipschitz_upper_bound: cannot bound layer '0' ({type(layer).__name__})"), msg
    assert f"replaces the forward of torch's {base.__name__}" in msg and "lipschitz_constant" in msg
    layer.lipschitz_constant = attained * 2
    assert lipschitz_upper_bound(net, shape).item() == pytest.approx(attained * 2)


def test_parametrized_layers_are_not_subclasses_that_replace_forward():
    "torch's parametrize makes a ParametrizedLinear subclass; its forward is Linear's, so it is bounded by its weight."
    lin = spectral_normalize(nn.Linear(4, 3).double()).eval()
    assert type(lin) is not nn.Linear
    W = torch.linalg.matrix_norm(lin.weight.detach(), 2).item()
    assert lipschitz_upper_bound(nn.Sequential(lin)).item() == pytest.approx(W, rel=1e-12)


def _scale_output(m, inputs, out): return 100 * out


def _scale_input(m, inputs): return (100 * inputs[0],)


@pytest.mark.parametrize("where, kind", [(0, 'forward'), (1, 'forward'), (1, 'pre'), ('container', 'forward'),
                                         ('container', 'pre')])
def test_forward_hooks_are_refused(where, kind):
    """A forward hook or pre-hook that scales by 100 multiplies the attained constant by 100 (dense Jacobian), which the
    old code ignored; refused unless the module declares a constant (a hook on a plain nn.Sequential too)."""
    torch.manual_seed(1)
    lin = nn.Linear(4, 3, bias=False).double()
    net = nn.Sequential(lin, nn.Tanh())
    x = 1e-4 * torch.randn(4, dtype=torch.float64)                  # tanh' ~ 1 at the point, also after scaling by 100
    plain = _dense_at(net, x)
    old = lipschitz_upper_bound(net).item()
    target = net if where == 'container' else net[where]
    if kind == 'forward': target.register_forward_hook(_scale_output)
    else: target.register_forward_pre_hook(_scale_input)
    outer = nn.Sequential(net)
    attained = _dense_at(outer, x)
    assert attained > 50 * plain and attained > 50 * old
    with pytest.raises(ValueError) as e: lipschitz_upper_bound(outer)
    msg = str(e.value)
    assert msg.startswith("lipschitz_upper_bound: cannot bound layer ") and "forward hooks" in msg, msg
    target.lipschitz_constant = 100.0 if where == 1 else 100 * old   # a true constant of the hooked module
    assert lipschitz_upper_bound(outer).item() >= attained * (1 - 1e-12)


def test_global_forward_hook_is_refused():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).double()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        with pytest.raises(ValueError, match="^lipschitz_upper_bound: global forward hooks"): lipschitz_upper_bound(net)
    finally:
        handle.remove()
    assert lipschitz_upper_bound(net).item() > 0


def test_operator_mode_spectral_normalize_is_still_bounded():
    """spectral_normalize(mode='operator') installs an input-size check (a forward pre-hook that changes nothing): the
    layer is bounded (>= its dense Jacobian), and another input size is refused naming lipschitz_upper_bound."""
    torch.manual_seed(2)
    conv = spectral_normalize(nn.Conv2d(2, 3, 3, padding=1).double(), mode='operator', input_shape=(2, 6, 6))
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten()).eval()
    b = lipschitz_upper_bound(net, (2, 6, 6)).item()
    assert b >= _dense_at(nn.Sequential(conv, nn.Flatten()), torch.zeros(2, 6, 6, dtype=torch.float64)) * (1 - 1e-12)
    with pytest.raises(ValueError, match=r"^lipschitz_upper_bound: layer '0' does not accept .*spectral_normalize"):
        lipschitz_upper_bound(net, (2, 8, 8))


def test_eval_rrelu_is_batched_as_the_leaky_relu_it_computes():
    """torch.func.vmap has no rule for rrelu: certify on an eval-mode RReLU net raised torch's RuntimeError (found by
    tests/test_soundness.py). It is evaluated as LeakyReLU((lower + upper) / 2), the same numbers; checked against dense
    Jacobians (certify on it: test_certify.py); an op vmap cannot batch in a plain function is refused naming the function."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 3), nn.RReLU(0.1, 0.4), nn.Linear(3, 2)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.equal(net[1](x), nn.LeakyReLU(0.25)(x))
    dense = torch.stack([torch.linalg.matrix_norm(jacrev(lambda z: net(z.unsqueeze(0))[0])(xi), 2) for xi in x]).detach()
    assert torch.allclose(jacobian_spectral_norm(net, x, n_iter=300), dense, rtol=1e-8)
    assert isinstance(net[1], nn.RReLU)                                   # the caller's model is untouched
    for call, fname in ((lambda: jacobian_spectral_norm(lambda z: torch.nn.functional.rrelu(z), x), 'jacobian_spectral_norm'),
                        (lambda: lipschitz_lower_bound(lambda z: torch.nn.functional.rrelu(z), x, steps=2), 'lipschitz_lower_bound')):
        with pytest.raises(ValueError, match=f"^{fname}: f uses an op that torch.func.vmap cannot batch"): call()


# --- issue 14 attack E, F: the lower bound is an attained difference ratio, never an autodiff value --------------------
def test_lower_bound_at_a_kink_is_an_attained_ratio():
    f = lambda z: z.clamp(min=0) + z.clamp(max=0)                       # == z, Lip 1; autodiff at 0 says 2
    low = lipschitz_lower_bound(f, torch.zeros(1, 3), steps=2)
    assert low.value <= 1 + 1e-6 and low.start_value <= 1 + 1e-6 and low.value >= 1 - 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_lower_bound_in_low_precision_is_below_the_exact_norm(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(40, 40, bias=False).to(dtype)
    exact = torch.linalg.matrix_norm(lin.weight.detach().double(), 2)   # the float64 norm of the stored weights: Lip of x -> W x
    x = torch.randn(2, 40, dtype=dtype)
    tol = 1 + 1e-9              # float64 rounding of f(x + hv) - f(x) over h: about eps64 ||f(x)|| / (h ||Jv||) ~ 1e-10 here
    low = lipschitz_lower_bound(nn.Sequential(lin), x, steps=2, n_iter=20)
    assert low.value.dtype == dtype and low.value.double() <= exact * tol and low.start_value.double() <= exact * tol


# --- issue 14 attack A, B, C: modules that do not run torch's call path are refused unless they declare a constant ------
def _dense_lip_at(f, xs):
    return max(torch.linalg.matrix_norm(jacrev(lambda z: f(z.unsqueeze(0))[0])(xi).reshape(-1, xi.numel()), 2).item() for xi in xs)


def _instance_forward():
    lin = nn.Linear(3, 3).double()
    lin.forward = lambda z: 10 * nn.functional.linear(z, lin.weight, lin.bias)
    return nn.Sequential(lin), None


class _Twice(nn.Sequential):
    def __iter__(self): return iter(list(self._modules.values()) * 2)


class _Scaled(nn.Sequential):
    def __call__(self, z): return 10 * super().__call__(z)


class _Cv(nn.Conv2d):
    def _conv_forward(self, z, w, b): return super()._conv_forward(10 * z, w, b)


class _CallImpl(nn.Linear):
    def _call_impl(self, *a, **k): return 10 * super()._call_impl(*a, **k)


def _twice():
    m = _Twice(nn.Linear(3, 3)).double()
    with torch.no_grad(): m[0].weight.copy_(2 * torch.eye(3))
    return m, None


@pytest.mark.parametrize("make", [_instance_forward, _twice, lambda: (_Scaled(nn.Linear(3, 3)).double(), None),
                                  lambda: (nn.Sequential(_Cv(1, 1, 3, padding=1)).double(), (1, 5, 5)),
                                  lambda: (nn.Sequential(_CallImpl(3, 3)).double(), None)])
def test_replaced_call_path_is_refused(make):
    m, shape = make()
    xs = torch.randn(2, *(shape or (3,)), dtype=torch.float64)
    true = _dense_lip_at(m, xs)                                          # the map m computes (10x, or W applied twice)
    try: bound = lipschitz_upper_bound(m, shape)
    except ValueError as e: assert str(e).split(':')[0] == 'lipschitz_upper_bound'
    else: assert bound >= true * (1 - 1e-9), (bound, true)              # accepted only if sound
    m.lipschitz_constant = true * 1.01                                   # a declared constant is taken
    assert lipschitz_upper_bound(m, shape) == pytest.approx(true * 1.01)


def test_lower_bound_dtype_keeps_the_float64_value():
    "dtype=torch.float64: the ratio as evaluated (float64), never below the default value in x's dtype, rounded down."
    torch.manual_seed(6)
    lin = nn.Linear(40, 40, bias=False).to(torch.bfloat16)
    xs = torch.randn(2, 40, dtype=torch.bfloat16)
    exact = torch.linalg.matrix_norm(lin.weight.detach().double(), 2)
    torch.manual_seed(7); low = lipschitz_lower_bound(nn.Sequential(lin), xs, steps=2, n_iter=20)
    torch.manual_seed(7); low64 = lipschitz_lower_bound(nn.Sequential(lin), xs, steps=2, n_iter=20, dtype=torch.float64)
    assert low.value.dtype == torch.bfloat16 and low64.value.dtype == torch.float64 and torch.equal(low.point, low64.point)
    assert low.value.double() <= low64.value <= exact * (1 + 1e-9) and low64.value >= 0.999 * exact
    assert low64.value.to(torch.bfloat16) >= low.value and low.value.double() < low64.value   # bf16 rounds down by up to 0.8%


def test_upper_bound_dtype_decides_a_parameterless_model():
    "A model with no floating tensors: the rules of the inputs' dtype if given (float32 hides Softplus's jump), else float64's."
    assert lipschitz_upper_bound(nn.Sequential(nn.Softplus()), dtype=torch.float32).item() == 1.0
    with pytest.raises(ValueError, match=r"^lipschitz_upper_bound: cannot bound layer '0' \(Softplus\)"):
        lipschitz_upper_bound(nn.Sequential(nn.Softplus()), dtype=torch.float64)
    net = nn.Sequential(nn.Linear(2, 2), nn.Softplus())                 # float32 parameters: finest of the model's and dtype
    assert lipschitz_upper_bound(net, dtype=torch.bfloat16) == lipschitz_upper_bound(net)
    with pytest.raises(ValueError, match="Softplus"): lipschitz_upper_bound(net, dtype=torch.float64)
