"""lipnotes.lipschitz against independent references: every rule of the layer rule table against torch's own module
(autograd slopes on a dense float64 grid, finite differences over randomised settings, closed forms, dense Jacobians from
torch.func.jacrev), the table's coverage of torch.nn.modules.activation, the smooth stand-ins and elementwise flags, and
composition_bound against dense Jacobians."""
import inspect
import math
import random

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from lipnotes.core import DROPOUT
from lipnotes.lipschitz import (LAYER_RULES, LayerRule, NoLipschitzConstant, activation_lipschitz, composition_bound,
                                layer_constant, layer_rule)

F64 = torch.float64
TORCH_ACTIVATIONS = [c for c in vars(nn.modules.activation).values()
                     if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == 'torch.nn.modules.activation']


def rule_constant(act, dtype=torch.float32):
    "(constant, None) or (None, reason) from the module's rule: the table's answer, without the public wrapper."
    try: return layer_rule(act).constant(act, dtype), None
    except NoLipschitzConstant as e: return None, str(e)


def dense_norm(f, shape):
    "||J_f||_2 at zero, from the dense Jacobian: the constant of a linear or affine f."
    x = torch.zeros(*shape, dtype=F64)
    return torch.linalg.matrix_norm(jacrev(f)(x).reshape(-1, x.numel()), 2).item()


# --- the table: coverage, order, fields ------------------------------------------------------------------------------------
def test_every_torch_activation_is_in_the_table_once():
    "Each class of torch.nn.modules.activation has exactly one rule: a constant, or a refusal with a reason."
    assert len(TORCH_ACTIVATIONS) >= 29
    for cls in TORCH_ACTIVATIONS:
        rules = [r for r in LAYER_RULES if cls in r.kinds]
        assert len(rules) == 1, cls
    refused = {nn.GLU: nn.GLU(), nn.LogSoftmax: nn.LogSoftmax(-1), nn.MultiheadAttention: nn.MultiheadAttention(4, 1)}
    for cls, m in refused.items():
        c, why = rule_constant(m)
        assert c is None and why, cls
    for cls in set(TORCH_ACTIVATIONS) - set(refused) - {nn.Threshold, nn.Hardshrink}:
        c, why = rule_constant(cls(), torch.float32)                       # torch's default settings have a constant
        assert c is not None and c > 0 and why is None, (cls, why)


def test_table_covers_the_other_layer_kinds():
    for m in (nn.Identity(), nn.Flatten(), nn.Unflatten(1, (2, 2)), nn.Dropout(), nn.Dropout1d(), nn.Dropout2d(),
              nn.Dropout3d(), nn.AlphaDropout(), nn.FeatureAlphaDropout(), nn.BatchNorm1d(2), nn.BatchNorm2d(2),
              nn.BatchNorm3d(2), nn.SyncBatchNorm(2)):
        assert isinstance(layer_rule(m), LayerRule), m
    for m in (nn.Linear(2, 2), nn.Conv1d(1, 1, 2), nn.ConvTranspose2d(1, 1, 2), nn.MaxPool2d(2), nn.AvgPool1d(2),
              nn.AdaptiveAvgPool2d(1), nn.Sequential(), nn.ModuleList(), nn.LayerNorm(2), nn.GroupNorm(1, 2),
              nn.Embedding(3, 2), nn.Module()):
        assert layer_rule(m) is None, m


def test_first_matching_rule_wins():
    "ReLU6 is a Hardtanh: its own rule (and smooth form) comes first; a plain subclass gets its base's rule."
    class Mine(nn.ReLU6):
        pass
    assert nn.ReLU6 in layer_rule(nn.ReLU6()).kinds and nn.ReLU6 in layer_rule(Mine()).kinds
    i6 = next(i for i, r in enumerate(LAYER_RULES) if nn.ReLU6 in r.kinds)
    iht = next(i for i, r in enumerate(LAYER_RULES) if nn.Hardtanh in r.kinds)
    assert i6 < iht


# the gradient chapter's old list of elementwise maps (lipnotes/gradients.py's _ELEMENTWISE before issue 15)
OLD_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
                   nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
                   nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.RReLU, nn.PReLU, nn.Identity, nn.modules.dropout._DropoutNd)


def test_elementwise_flags_are_the_old_list_and_diagonal():
    "Flagged exactly where the gradient chapter accepted an elementwise map; each flagged layer has a diagonal Jacobian."
    flagged = {c for r in LAYER_RULES if r.elementwise for c in r.kinds}
    assert flagged == set(OLD_ELEMENTWISE[:-1]) | set(DROPOUT)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=F64)
    for r in LAYER_RULES:
        if not r.elementwise: continue
        for cls in [k for c in r.kinds for k in ([nn.Dropout, nn.Dropout1d, nn.AlphaDropout] if c in DROPOUT else [c])]:
            m = {nn.Threshold: lambda: nn.Threshold(0.1, 0.1), nn.PReLU: lambda: nn.PReLU(3)}.get(cls, cls)()
            for mode in (m.eval(), m.train()):
                J = torch.autograd.functional.jacobian(lambda z: mode.double()(z), x).reshape(x.numel(), x.numel())
                assert torch.equal(J, torch.diag(J.diagonal())), cls


def test_smooth_only_for_the_kink_activations():
    "The smooth stand-ins are exactly the old _PIECEWISE_LINEAR set of the lower bound: ReLU, LeakyReLU, ReLU6, Hardtanh, Hardsigmoid."
    smoothed = {c for r in LAYER_RULES if r.smooth is not None for c in r.kinds}
    assert smoothed == {nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.Hardsigmoid}


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.3, 2.0), nn.Hardtanh(-2.0, -1.0), nn.Hardsigmoid(),
                                 nn.LeakyReLU(0.1), nn.LeakyReLU(-2.5), nn.LeakyReLU(3.0)], ids=repr)
def test_smooth_stand_in_converges_and_keeps_the_constant(act):
    "As beta grows the stand-in tends to the activation (uniformly, like log 2 / beta); its slope never exceeds the constant."
    s = layer_rule(act).smooth(act)
    assert isinstance(s, nn.Module) and s.beta == 1.0
    c = layer_constant(act)
    t = torch.linspace(-15, 15, 300_001, dtype=F64, requires_grad=True)
    gaps = []
    for beta in (1.0, 10.0, 100.0, 1000.0):
        s.beta = beta
        y = s(t)
        (g,) = torch.autograd.grad(y.sum(), t)
        assert g.abs().max().item() <= c * (1 + 1e-9), (beta, g.abs().max().item(), c)
        gaps.append((y - act(t)).abs().max().item())
        assert gaps[-1] <= 4 * math.log(2) / beta * max(1.0, c)
    assert gaps[-1] < gaps[0] / 500


# --- every constant against autograd slopes on a grid, and attained ---------------------------------------------------------
def _argmax_slope(fn, lo, hi):
    "The point in [lo, hi] where fn'' changes sign from + to - (fn' is largest), by bisection on autograd's second derivative."
    def second(x):
        t = torch.tensor(x, dtype=F64, requires_grad=True)
        (d,) = torch.autograd.grad(fn(t), t, create_graph=True)
        (dd,) = torch.autograd.grad(d, t)
        return dd.item()
    assert second(lo) > 0 > second(hi)
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if second(mid) > 0 else (lo, mid)
    return lo


def _prelu3():
    p = nn.PReLU(3)
    with torch.no_grad(): p.weight.copy_(torch.tensor([-3.0, 0.5, 2.0]))
    return p


# (module, dtype for the constant, point where the slope attains it (a float, or a callable finding it))
TIGHT = [(nn.ReLU(), 1.0), (nn.ReLU6(), 1.0), (nn.Hardtanh(-0.3, 2.0), 1.0), (nn.Hardsigmoid(), 0.0),
         (nn.LeakyReLU(-2.5), -1.0), (nn.LeakyReLU(0.1), 1.0), (nn.LeakyReLU(7.0), -1.0), (nn.Tanh(), 0.0),
         (nn.Softsign(), 0.0), (nn.Tanhshrink(), 20.0), (nn.LogSigmoid(), -20.0), (nn.Sigmoid(), 0.0), (nn.SELU(), -1e-9),
         (nn.ELU(2.0), -1e-9), (nn.ELU(-3.0), -1e-9), (nn.ELU(0.5), 1.0), (nn.CELU(0.3), 1.0), (nn.CELU(4.0), 1.0),
         (nn.Softplus(threshold=40.0), 39.0), (nn.Softplus(beta=-2.0, threshold=40.0), -19.0), (nn.GELU(), math.sqrt(2)),
         (nn.GELU(approximate='tanh'), lambda m: _argmax_slope(m, 0.5, 3.0)), (nn.SiLU(), lambda m: _argmax_slope(m, 0.5, 4.0)),
         (nn.Mish(), lambda m: _argmax_slope(m, 0.2, 3.0)), (nn.Hardswish(), 3 - 1e-9), (nn.Softshrink(0.7), 2.0),
         (nn.RReLU(-3.0, -1.0).eval(), -1.0), (nn.RReLU(0.1, 0.3).eval(), 1.0), (nn.Hardshrink(0.0), 1.0),
         (nn.Hardshrink(-2.0), 1.0), (nn.Threshold(0.5, 0.5), 1.0), (nn.Identity(), 0.0), (nn.Dropout(0.3).eval(), 0.0)]


@pytest.mark.parametrize("act, point", TIGHT, ids=[repr(a) for a, _ in TIGHT])
def test_constant_bounds_the_autograd_slope_and_is_attained(act, point):
    "On a dense float64 grid autograd's slope never exceeds the constant, and at the maximiser it reaches it to 1e-6."
    c = layer_constant(act, F64)
    t = torch.linspace(-40, 40, 1_600_001, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(act(t).sum(), t)
    assert g.abs().max().item() <= c * (1 + 1e-9)
    x = point(act) if callable(point) else point
    xs = torch.tensor([x], dtype=F64, requires_grad=True)
    (slope,) = torch.autograd.grad(act(xs).sum(), xs)
    assert abs(slope.item()) >= c * (1 - 1e-6), (x, slope.item(), c)


def test_prelu_constant_against_autograd_per_channel():
    p = _prelu3()
    t = torch.linspace(-5, 5, 100_001, dtype=torch.float32)[:, None].repeat(1, 3).requires_grad_()
    (g,) = torch.autograd.grad(p(t).sum(), t)
    assert layer_constant(p) == g.abs().max().item() == 3.0


def test_matrix_valued_rules_against_dense_jacobians():
    "Softmax 1/2, eval BatchNorm max|w|/sqrt(v + eps), training Dropout 1/(1-p): the Jacobian's norm, bounded and attained."
    gen = torch.Generator().manual_seed(0)
    sm = nn.Softmax(-1)
    norms = [dense_norm(lambda z: sm(z + 4 * torch.randn(5, generator=gen, dtype=F64)), (5,)) for _ in range(200)]
    assert max(norms) <= layer_constant(sm) * (1 + 1e-12) and dense_norm(sm, (2,)) == pytest.approx(0.5, abs=1e-15)
    bn = nn.BatchNorm1d(3).double().eval()
    with torch.no_grad(): bn.running_var.uniform_(0.1, 4.0, generator=gen); bn.weight.uniform_(-3, 3, generator=gen)
    J = jacrev(bn)(torch.randn(1, 3, dtype=F64, generator=gen))[0, :, 0]
    assert layer_constant(bn) == pytest.approx(torch.linalg.matrix_norm(J, 2).item(), rel=1e-12)
    torch.manual_seed(0)
    drop = nn.Dropout(0.3).train()
    J = jacrev(drop)(torch.ones(300, dtype=F64))
    assert torch.linalg.matrix_norm(J, 2).item() == pytest.approx(layer_constant(drop), rel=1e-15)
    assert layer_constant(nn.Flatten()) == 1.0 == dense_norm(nn.Flatten(0), (2, 3))


# --- moved from tests/test_norms.py: every activation constant over randomised settings -----------------------------------
def fd_slope(act, lo, hi, n=400_001):
    "Largest |finite-difference slope| of torch's module on a float64 grid (a mean of |g'|, so never above sup |g'|)."
    x = torch.linspace(lo, hi, n, dtype=F64)
    xs = x[:, None].repeat(1, act.weight.numel() if isinstance(act, nn.PReLU) else 1)
    with torch.no_grad(): y = act.double()(xs)
    return ((y[1:] - y[:-1]) / (xs[1:] - xs[:-1])).abs().max().item()


VALUES = [-1e3, -7.5, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.3, 1.0, 2.5, 1e3]


def random_values(rng, k=6):
    return VALUES + [rng.uniform(-10, 10) for _ in range(k)]


def activation_cases():
    "(module, grid half-width) over negative, zero, huge and random settings of every parameterised activation."
    rng = random.Random(0)
    cases = [(m, 30.0) for m in (nn.ReLU(), nn.ReLU6(), nn.Tanh(), nn.Sigmoid(), nn.Softsign(), nn.Tanhshrink(),
                                 nn.LogSigmoid(), nn.Hardsigmoid(), nn.Hardswish(), nn.SELU(), nn.GELU(),
                                 nn.GELU(approximate='tanh'), nn.SiLU(), nn.Mish(), nn.Identity())]
    for v in random_values(rng):
        cases += [(nn.LeakyReLU(v), 30.0), (nn.ELU(v), 30.0), (nn.Hardshrink(v), 30.0 + abs(v)),
                  (nn.Threshold(v, v), 30.0 + abs(v)), (nn.Threshold(v, v + 1.0), 30.0 + abs(v)),
                  (nn.Softshrink(abs(v)), 30.0 + abs(v)), (nn.Softshrink(-abs(v) - 0.1), 30.0)]
        if v != 0: cases += [(nn.CELU(v), 30.0)]
        for beta in (v, -v):
            for t in (20.0, 0.0, -5.0, 40.0, 1.0):
                if beta != 0: cases += [(nn.Softplus(beta, t), (abs(t) + 30.0) / abs(beta))]
    for _ in range(12):
        a, b = sorted(rng.choice(VALUES + [rng.uniform(-10, 10)]) for _ in range(2))
        if b - a > 0.01: cases += [(nn.Hardtanh(a, b), 30.0 + max(abs(a), abs(b)))]
        cases += [(nn.RReLU(a, b).eval(), 30.0), (nn.RReLU(b, a).eval() if a < b else nn.RReLU(a, b), 30.0)]
        prelu = nn.PReLU(3)
        with torch.no_grad(): prelu.weight.copy_(torch.tensor([rng.choice(VALUES), rng.uniform(-5, 5), a]))
        cases += [(prelu, 30.0)]
    return cases


CASES = activation_cases()


@pytest.mark.parametrize("act, half_width", CASES, ids=[repr(a) for a, _ in CASES])
def test_activation_constant_is_sound_and_tight(act, half_width):
    "Where a constant is returned it is >= every slope torch's module attains and within 1e-3 of the largest one."
    c, why = rule_constant(act)
    try:
        fd = fd_slope(act, -half_width, half_width)
    except RuntimeError:                                  # torch itself refuses these settings (e.g. RReLU lower > upper)
        assert c is None and why, f"{act}: torch refuses it, the rule gave {c}"
        return
    if c is None:
        assert why                                        # refused with a reason: no finite constant, or a jump
        return
    assert fd <= c * (1 + 1e-9), f"{act}: constant {c} below an attained slope {fd}"
    assert fd >= c * (1 - 1e-3), f"{act}: constant {c} not tight, largest slope {fd}"


@pytest.mark.parametrize("act", [nn.CELU(-1.0), nn.CELU(-0.3), nn.Hardshrink(0.5), nn.Threshold(0.0, 1.0),
                                 nn.Softplus(threshold=0.0), nn.Softplus(threshold=-3.0)])
def test_refused_activations_have_no_constant(act):
    "The refused settings really have no constant: a slope beyond any bound (unbounded or a jump) on a fine grid."
    with pytest.raises(ValueError, match="^layer_constant: cannot bound "):
        layer_constant(act)
    assert fd_slope(act, -40.0, 40.0, n=2_000_001) > 1e3


def test_elu_negative_alpha_constant():
    "ELU(alpha=-3) has constant 3 (slope -3 e^x as x -> 0-); the old code said 1 (the bound's regression: tests/test_norms.py)."
    assert layer_constant(nn.ELU(alpha=-3.0)) == 3.0


def test_rrelu_train_mode_bound_covers_every_sampled_slope():
    torch.manual_seed(0)
    for lower, upper in [(0.1, 0.3), (-3.0, -1.0), (-2.0, 5.0)]:
        act = nn.RReLU(lower, upper).train()
        x = -torch.rand(200_000, dtype=F64) - 0.1
        slopes = (act(x) / x).abs()
        c = layer_constant(act)
        assert slopes.max().item() <= c and (c == 1.0 or slopes.max().item() >= c * (1 - 1e-3))


def test_softplus_refused_where_the_dtype_resolves_its_jump():
    "torch's Softplus jumps by log(1+e^-t)/beta at x = t/beta: refused in float64 for t = 20, accepted for t = 40."
    x = torch.tensor([20 - 1e-12, 20 + 1e-12], dtype=F64)
    y = nn.Softplus()(x)
    assert abs(y[1] - y[0]).item() > 1e3 * (x[1] - x[0]).item()          # the jump, visible in float64
    with pytest.raises(ValueError, match="torch.float64 resolves"):
        layer_constant(nn.Softplus(), F64)
    assert layer_constant(nn.Softplus()) == 1.0 and layer_constant(nn.Softplus(threshold=40.0), F64) == 1.0


@pytest.mark.parametrize("act", [nn.Softmax(dim=-1), nn.Softmin(dim=-1), nn.Softmax2d()])
def test_softmax_constant_one_half(act):
    "||diag(p) - pp^T||_2 <= 1/2 at random logits (dense Jacobians), = 1/2 at two equal logits."
    c = layer_constant(act)
    assert c == 0.5
    g = torch.Generator().manual_seed(1)
    shape = (3, 2, 2) if isinstance(act, nn.Softmax2d) else (5,)
    norms = [dense_norm(lambda z: act(z + 4 * torch.randn(shape, generator=g, dtype=F64)), shape) for _ in range(200)]
    assert max(norms) <= c * (1 + 1e-12)
    if not isinstance(act, nn.Softmax2d):
        assert dense_norm(act, (2,)) == pytest.approx(0.5, abs=1e-15)


def test_log_softmax_is_not_accepted():
    with pytest.raises(ValueError, match="grows with the number of classes"):
        layer_constant(nn.LogSoftmax(dim=-1))
    z = torch.zeros(8, dtype=F64); z[0] = 40.0
    assert torch.linalg.matrix_norm(jacrev(lambda t: torch.log_softmax(t, -1))(z), 2).item() > 2


def test_layer_constant_keeps_its_one_argument_signature():
    "layer_constant(module) with the float32 default; unknown or batch-dependent modules are refused."
    assert layer_constant(nn.ReLU()) == 1.0
    with pytest.raises(ValueError, match="BatchNorm1d"):
        layer_constant(nn.BatchNorm1d(3))


def test_subclass_replacing_forward_is_refused():
    "A ReLU subclass that returns 100 times torch's output is refused; one that keeps torch's forward is accepted."
    class Loud(nn.ReLU):
        def forward(self, x): return 100 * super().forward(x)

    class Quiet(nn.ReLU):
        pass
    with pytest.raises(ValueError, match="replaces torch's forward"):
        layer_constant(Loud())
    assert layer_constant(Quiet()) == 1.0


# --- moved from tests/test_certificates.py: activation_lipschitz ------------------------------------------------------------
@pytest.mark.parametrize("call, exc, words", [
    (lambda: activation_lipschitz("relu"), TypeError, "activation_lipschitz: module must be a torch.nn.Module"),
    (lambda: activation_lipschitz(nn.Linear(2, 2)), ValueError, "activation_lipschitz: Linear is not an activation"),
    (lambda: activation_lipschitz(nn.Threshold(0.1, 0.0)), ValueError, "jumps"),
])
def test_activation_lipschitz_rejects(call, exc, words):
    with pytest.raises(exc) as e:
        call()
    assert words in str(e.value), str(e.value)


def test_celu_negative_alpha_slope_is_unbounded():
    "The reason is true: CELU(alpha=-1) has slope e^{-x} on x < 0 (e^8 at x = -8), so no constant exists."
    t = torch.linspace(-8, 0, 8001, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(nn.CELU(alpha=-1.0)(t).sum(), t)
    assert g[0].item() == pytest.approx(math.exp(8), rel=1e-9)
    with pytest.raises(ValueError, match="unbounded"):
        activation_lipschitz(nn.CELU(alpha=-1.0))


def test_activation_lipschitz_takes_the_dtype():
    assert activation_lipschitz(nn.Softplus(), torch.float32) == 1.0
    assert activation_lipschitz(nn.Softplus(threshold=40.0)) == 1.0 == activation_lipschitz(nn.Softplus(threshold=40.0), F64)
    with pytest.raises(ValueError, match="^activation_lipschitz: module Softplus.*torch.float64.*2.06e-09"):
        activation_lipschitz(nn.Softplus())
    assert activation_lipschitz(nn.Hardshrink(0.0)) == 1.0 and activation_lipschitz(nn.Threshold(1.0, 1.0)) == 1.0   # continuous


def test_activation_lipschitz_is_the_table():
    "For every activation, activation_lipschitz (float64) agrees with layer_constant, or both refuse."
    for act, _ in CASES:
        if isinstance(act, nn.Identity): continue
        try: want = layer_constant(act, F64)
        except ValueError:
            with pytest.raises(ValueError): activation_lipschitz(act)
            continue
        assert activation_lipschitz(act) == want


# --- composition_bound against dense Jacobians ----------------------------------------------------------------------------
def spectral(name, m): return torch.linalg.matrix_norm(m.weight.detach().double(), 2)


def test_linear_layer_constant_is_sigma_1():
    "A Linear layer's Jacobian is W; its norm, torch.linalg.matrix_norm(W, 2), is attained along v_1 and is the bound."
    gen = torch.Generator().manual_seed(0)
    for m, n in [(1, 1), (3, 7), (8, 2), (16, 16)]:
        lin = nn.Linear(n, m).double()
        W = lin.weight.detach()
        assert torch.equal(jacrev(lin)(torch.randn(n, dtype=F64, generator=gen)), W)
        v1 = torch.linalg.svd(W).Vh[0]
        x = torch.randn(n, dtype=F64, generator=gen)
        ratio = ((lin(x + v1) - lin(x)).norm() / v1.norm()).item()
        sigma = torch.linalg.matrix_norm(W, 2).item()
        assert ratio == pytest.approx(sigma, rel=1e-12) and composition_bound(lin, spectral).item() == sigma


def random_net(rng):
    acts = [lambda: nn.ReLU(), lambda: nn.Tanh(), lambda: nn.ELU(rng.uniform(-3, 3)), lambda: nn.LeakyReLU(rng.uniform(-2, 2)),
            lambda: nn.GELU(), lambda: nn.Sigmoid(), lambda: nn.Softplus(threshold=40.0), lambda: nn.Hardtanh(-1, 2),
            lambda: nn.Dropout(0.4), lambda: nn.Identity(), lambda: nn.SiLU(), lambda: nn.Softmax(-1)]
    layers, w = [], rng.randint(1, 5)
    for _ in range(rng.randint(1, 3)):
        w2 = rng.randint(1, 5)
        block = [nn.Linear(w, w2), rng.choice(acts)()]
        if rng.random() < 0.3:
            bn = nn.BatchNorm1d(w2)
            with torch.no_grad(): bn.running_var.uniform_(0.2, 3.0); bn.weight.uniform_(-2, 2)
            block.append(bn)
        layers.append(nn.Sequential(*block) if rng.random() < 0.5 else block[0])
        if not isinstance(layers[-1], nn.Sequential): layers += block[1:]
        w = w2
    return nn.Sequential(*layers).double().eval()


@pytest.mark.parametrize("seed", range(30))
def test_composition_bound_dominates_dense_jacobians(seed):
    """Random nested Sequentials of Linear, activations, Dropout and eval BatchNorm: bound >= ||J|| at sampled points, and the
    bound is the product of the layers' sigma_1 and rule constants."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    net = random_net(rng)
    bound = composition_bound(net, spectral).item()
    product = math.prod(spectral('', m).item() if isinstance(m, nn.Linear) else layer_constant(m, F64)
                        for m in net.modules() if isinstance(m, nn.Linear) or layer_rule(m) is not None)
    assert bound == pytest.approx(product, rel=1e-12)
    x = torch.randn(256, net[0].in_features if isinstance(net[0], nn.Linear) else net[0][0].in_features, dtype=F64)
    jac = torch.linalg.matrix_norm(vmap(jacrev(lambda z: net(z[None])[0]))(x * rng.choice([0.1, 1.0, 5.0])), 2).max().item()
    assert jac <= bound * (1 + 1e-9)


def test_composition_bound_counts_a_repeated_module_twice():
    "lin used twice: the map is W(Wx) and the bound sigma_1^2 (a walk by named_children would count it once)."
    torch.manual_seed(0)
    lin = nn.Linear(3, 3, bias=False).double()
    net = nn.Sequential(lin, nn.Tanh(), lin)
    assert composition_bound(net, spectral).item() == pytest.approx(spectral('', lin).item() ** 2, rel=1e-14)
    assert dense_norm(nn.Sequential(lin, lin), (3,)) <= composition_bound(net, spectral).item() * (1 + 1e-12)


def test_composition_bound_is_differentiable_and_names_its_caller():
    "A tensor weight bound gives a differentiable product; errors name composition_bound, or the public function calling it."
    from lipnotes.norms import frobenius_lipschitz_bound
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    b = composition_bound(net, lambda name, m: torch.linalg.matrix_norm(m.weight, 'fro'))
    b.backward()
    assert net[0].weight.grad is not None and net[2].weight.grad.abs().sum() > 0
    bad = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    with pytest.raises(ValueError, match=r"^composition_bound: cannot bound module '1' \(LayerNorm\)"):
        composition_bound(bad, spectral)
    with pytest.raises(ValueError, match=r"^frobenius_lipschitz_bound: cannot bound module '1' \(LayerNorm\)"):
        frobenius_lipschitz_bound(bad)
    with pytest.raises(ValueError, match=r"^frobenius_lipschitz_bound: cannot bound module '1' \(CELU\) of model: alpha"):
        frobenius_lipschitz_bound(nn.Sequential(nn.Linear(3, 3), nn.CELU(-1.0)))


def test_composition_bound_honours_declared_constants_and_refuses_the_rest():
    class Residual(nn.Module):
        def __init__(self, h): super().__init__(); self.h = h
        def forward(self, x): return x + self.h(x)
    torch.manual_seed(1)
    block = Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))).double()
    net = nn.Sequential(nn.Linear(4, 4), block).double()
    with pytest.raises(ValueError, match="only a plain nn.Sequential is walked"):
        composition_bound(net, spectral)
    block.lipschitz_constant = 1 + composition_bound(block.h, spectral).item()
    x = torch.randn(300, 4, dtype=F64) * 3
    assert torch.linalg.matrix_norm(vmap(jacrev(net))(x), 2).max().item() <= composition_bound(net, spectral).item()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        with pytest.raises(ValueError, match="^composition_bound: global forward hooks"):
            composition_bound(net, spectral)
    finally:
        handle.remove()
