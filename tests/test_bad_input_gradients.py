"""Bad input for every export of lipnotes.gradients (input_grad_norm, param_grad_norm, gradient_inequality,
GradientInequality): NaN/inf, empty, wrong rank, int/bool/complex/half dtypes, non-contiguous and expanded tensors, meta
tensors, wrong Python types, out-of-range hyperparameters, train/eval mode. Each case either raises a ValueError/TypeError
whose message starts with the public function's name and names the argument, or returns the right result, checked against
an independent reference (a loop of torch.autograd.grad, or the same call on a contiguous float64 copy)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipnotes.gradients import GradientInequality, gradient_inequality, input_grad_norm, param_grad_norm

D = torch.float64
torch.manual_seed(0)
NET = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
X = torch.randn(5, 3, dtype=D)
Y = torch.randint(0, 2, (5,))
S = lambda o: o.sum(1)
CE = lambda o, t: F.cross_entropy(o, t, reduction='none')
IG = lambda z: NET(z).logsumexp(1)                           # input_grad_norm's f: a function of the input batch
META = torch.empty(5, 3, device='meta')
BN_TRAIN = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
DROP_TRAIN = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
NAN_NET = copy.deepcopy(NET)
with torch.no_grad(): NAN_NET[2].weight[0, 0] = float('nan')
FROZEN = copy.deepcopy(NET).requires_grad_(False)
F32_NET = copy.deepcopy(NET).float()


class _OwnTanh(nn.Tanh):
    def forward(self, z): return 3 * torch.tanh(z)


def _instance_net():
    net = copy.deepcopy(NET)
    net[2].forward = lambda z: F.linear(z, net[2].weight, net[2].bias) + 2 * z[:, :2]
    return net


WN_NET = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2)).double()
SN_NET = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2)).double()
with pytest.warns(FutureWarning):                            # torch deprecates the old-style weight_norm, which is a hook
    OLD_WN_NET = nn.Sequential(nn.utils.weight_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2)).double()
OWN_ACT_NET = nn.Sequential(nn.Linear(3, 4), _OwnTanh(), nn.Linear(4, 2)).double()
INSTANCE_NET = _instance_net()


def dtype_x(dtype):
    return (X * 3).to(dtype)


BAD = [
    # --- input_grad_norm(f, x, args) ---
    ('input_grad_norm', lambda: input_grad_norm(IG, X.masked_fill(X > 1, float('nan'))), ValueError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, X.masked_fill(X > 1, float('inf'))), ValueError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, X[:0]), ValueError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, X[0]), ValueError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, torch.tensor(1.0, dtype=D)), ValueError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, dtype_x(torch.int64)), TypeError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, X > 0), TypeError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, X.to(torch.complex128)), TypeError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, META), ValueError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm(IG, X.tolist()), TypeError, 'x'),
    ('input_grad_norm', lambda: input_grad_norm('logsumexp', X), TypeError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z: z.sum(), X), ValueError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z: z, X), ValueError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z: (z.sum(1), z), X), ValueError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z: z.sum(1).long(), X), ValueError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z: F32_NET(z).sum(1), X), ValueError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z: torch.sqrt(-z.abs()).sum(1), X), ValueError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(BN_TRAIN, X), ValueError, 'f'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z, t: CE(NET(z), t), X, 3), TypeError, 'args'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z, t: CE(NET(z), t), X, (Y[:4],)), ValueError, 'args'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z, t: CE(NET(z), t), X, (torch.tensor(1),)), ValueError, 'args'),
    ('input_grad_norm', lambda: input_grad_norm(lambda z, t: z.sum(1) * t, X, (torch.empty(5, device='meta'),)),
     ValueError, 'args[0]'),
    # --- param_grad_norm(f, model, x, args) ---
    ('param_grad_norm', lambda: param_grad_norm(S, 'net', X), TypeError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, lambda z: NET(z), X), TypeError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, BN_TRAIN, X), ValueError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, DROP_TRAIN, X), ValueError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, NAN_NET, X), ValueError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, FROZEN, X), ValueError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, F32_NET, X), ValueError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, nn.Sequential(nn.Linear(3, 2, device='meta')), X), ValueError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, nn.Sequential(nn.LazyLinear(2)).double(), X), ValueError, 'model'),
    ('param_grad_norm', lambda: param_grad_norm(S, NET, X.masked_fill(X > 1, float('nan'))), ValueError, 'x'),
    ('param_grad_norm', lambda: param_grad_norm(S, NET, X[:0]), ValueError, 'x'),
    ('param_grad_norm', lambda: param_grad_norm(S, NET, X[0]), ValueError, 'x'),
    ('param_grad_norm', lambda: param_grad_norm(S, NET, dtype_x(torch.int32)), TypeError, 'x'),
    ('param_grad_norm', lambda: param_grad_norm(S, NET, X > 0), TypeError, 'x'),
    ('param_grad_norm', lambda: param_grad_norm(S, NET, X.to(torch.complex128)), TypeError, 'x'),
    ('param_grad_norm', lambda: param_grad_norm(S, NET, META), ValueError, 'x'),
    ('param_grad_norm', lambda: param_grad_norm('sum', NET, X), TypeError, 'f'),
    ('param_grad_norm', lambda: param_grad_norm(lambda o: o.mean(0), NET, X), ValueError, 'f'),
    ('param_grad_norm', lambda: param_grad_norm(lambda o: o, NET, X), ValueError, 'f'),
    ('param_grad_norm', lambda: param_grad_norm(CE, NET, X, [Y, 'a']), ValueError, 'args'),
    ('param_grad_norm', lambda: param_grad_norm(CE, NET, X, {'y': Y}), TypeError, 'args'),
    # --- gradient_inequality(model, x, f, args, weight_ord, jacobian_ord) ---
    ('gradient_inequality', lambda: gradient_inequality(nn.Linear(3, 2).double(), X, S), TypeError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality([NET], X, S), TypeError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(nn.Sequential(), X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(DROP_TRAIN, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(BN_TRAIN, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(NAN_NET, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(F32_NET, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(nn.Sequential(nn.Linear(3, 2, device='meta')), X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(nn.Sequential(nn.LazyLinear(2)).double(), X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X.masked_fill(X > 1, float('nan')), S), ValueError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X.masked_fill(X > 1, float('-inf')), S), ValueError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X[:0], S), ValueError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X[0], S), ValueError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X[:, None], S), ValueError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, dtype_x(torch.int16), S), TypeError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X > 0, S), TypeError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X.to(torch.complex128), S), TypeError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, META, S), ValueError, 'x'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, 'sum'), TypeError, 'f'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, lambda o: o.sum()), ValueError, 'f'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, lambda o: (o.sum(1),)), ValueError, 'f'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, CE, 3), TypeError, 'args'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, CE, (Y[:2],)), ValueError, 'args'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, S, weight_ord=1), ValueError, 'weight_ord'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, S, weight_ord='nuc'), ValueError, 'weight_ord'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, S, weight_ord=True), ValueError, 'weight_ord'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, S, jacobian_ord=None), ValueError, 'jacobian_ord'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, S, jacobian_ord=float('inf')), ValueError, 'jacobian_ord'),
    ('gradient_inequality', lambda: gradient_inequality(NET, X, S, jacobian_ord=-2), ValueError, 'jacobian_ord'),
    # ATTACK H2: parametrised or hooked Linear weights (bare KeyError '0.weight' before), activation subclass with its own
    # forward (bare IndexError before), a forward replaced on the instance (ATTACK I)
    ('gradient_inequality', lambda: gradient_inequality(WN_NET, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(SN_NET, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(OLD_WN_NET, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(OWN_ACT_NET, X, S), ValueError, 'model'),
    ('gradient_inequality', lambda: gradient_inequality(INSTANCE_NET, X, S), ValueError, 'model'),
]


@pytest.mark.parametrize('fname, call, exc, arg', BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_refused_by_name(fname, call, exc, arg, rejects):
    rejects(call, exc, fname, arg)


def loop_norms(f, model, x, args=()):
    "Reference: per example, torch.autograd.grad of f(model(x_i)) w.r.t. x_i and the trainable parameters."
    params = [p for p in model.parameters() if p.requires_grad]
    gx, gp = [], []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_()
        g = torch.autograd.grad(f(model(xi), *(a[i:i + 1] for a in args)).sum(), [xi, *params], allow_unused=True)
        gx.append(g[0].norm()); gp.append(torch.cat([t.flatten() for t in g[1:] if t is not None]).norm())
    return torch.stack(gx), torch.stack(gp)


REF_X, REF_P = loop_norms(CE, NET, X, (Y,))
REF_GI = gradient_inequality(NET, X, CE, (Y,))
NONCONTIG = torch.randn(3, 5, dtype=D).T            # (5, 3), stride (1, 5)
EXPANDED = X[:1].expand(5, 3)                       # stride (0, 1)


@pytest.mark.parametrize('x', [NONCONTIG, EXPANDED], ids=['non-contiguous', 'expanded'])
def test_strided_inputs_give_the_contiguous_result(x):
    assert not x.is_contiguous()
    ref_x, ref_p = loop_norms(CE, NET, x.contiguous(), (Y,))
    assert torch.allclose(input_grad_norm(lambda z, t: CE(NET(z), t), x, (Y,)), ref_x, rtol=1e-12, atol=0)
    assert torch.allclose(param_grad_norm(CE, NET, x, (Y,)), ref_p, rtol=1e-12, atol=0)
    r, ref = gradient_inequality(NET, x, CE, (Y,)), gradient_inequality(NET, x.contiguous(), CE, (Y,))
    for a, b in zip(r[:8] + r[9:], ref[:8] + ref[9:]):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_strided_args_and_a_list_of_args():
    y2 = torch.stack([Y, Y], 1)[:, 0]                 # non-contiguous labels
    assert not y2.is_contiguous()
    assert torch.allclose(param_grad_norm(CE, NET, X, [y2]), REF_P, rtol=1e-12, atol=0)
    assert torch.allclose(input_grad_norm(lambda z, t: CE(NET(z), t), X, y2), REF_X, rtol=1e-12, atol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_dtypes_give_a_result_in_that_dtype_close_to_float64(dtype):
    "Half x and model: a result in x's dtype, within the dtype's rounding of the float64 value of the same weights."
    net, x = copy.deepcopy(NET).to(dtype), X.to(dtype)
    net64, x64 = copy.deepcopy(net).double(), x.double()
    ref_x, ref_p = loop_norms(CE, net64, x64, (Y,))
    eps = torch.finfo(dtype).eps
    got_x, got_p = input_grad_norm(lambda z, t: CE(net(z), t), x, (Y,)), param_grad_norm(CE, net, x, (Y,))
    assert got_x.dtype == got_p.dtype == dtype
    assert torch.allclose(got_x.double(), ref_x, rtol=16 * eps) and torch.allclose(got_p.double(), ref_p, rtol=16 * eps)
    r, ref = gradient_inequality(net, x, CE, (Y,)), gradient_inequality(net64, x64, CE, (Y,))
    for a, b in zip(r[:8] + r[9:], ref[:8] + ref[9:]):
        assert a.dtype == dtype and torch.allclose(a.double(), b, rtol=eps, atol=0)


def test_train_and_eval_mode():
    "Training-mode Dropout/BatchNorm is refused (above); in eval mode the same models give the reference result."
    m = copy.deepcopy(DROP_TRAIN).eval()
    ref_x, ref_p = loop_norms(CE, m, X, (Y,))
    assert torch.allclose(param_grad_norm(CE, m, X, (Y,)), ref_p, rtol=1e-12)
    assert torch.allclose(input_grad_norm(lambda z, t: CE(m(z), t), X, (Y,)), ref_x, rtol=1e-12)
    r = gradient_inequality(m, X, CE, (Y,))
    assert torch.allclose(r.rhs, ref_p ** 2, rtol=1e-12) and (r.lhs <= r.rhs).all()
    bn = copy.deepcopy(BN_TRAIN).eval()
    _, ref_p = loop_norms(S, bn, X)
    assert torch.allclose(param_grad_norm(S, bn, X), ref_p, rtol=1e-12)


def test_gradient_inequality_record():
    "GradientInequality is the NamedTuple gradient_inequality returns: its fields, and Python's own error naming a missing one."
    assert isinstance(REF_GI, GradientInequality) and REF_GI._fields[:9] == (
        'lhs', 'rhs', 'lhs_terms', 'rhs_terms', 'input_grad_norm', 'activation_terms', 'weight_norms', 'jacobian_norms',
        'layers')
    assert torch.allclose(REF_GI.rhs, REF_P ** 2, rtol=1e-12) and torch.allclose(REF_GI.input_grad_norm, REF_X, rtol=1e-12)
    with pytest.raises(TypeError) as e:
        GradientInequality(*REF_GI[:-1])
    assert str(e.value).startswith('GradientInequality') and 'product_norms' in str(e.value)
