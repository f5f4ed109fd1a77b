"""lipnotes.tight.certify (moved from lipnotes.certificates; its tests moved here from test_certificates.py and
test_bad_input_certificates.py, asserting what they asserted): bad input refused before any work with every error
naming certify, lower <= upper against dense Jacobians; and its methods ('product', 'compositional', 'lipsdp-layer',
'lipsdp-neuron', 'exact') on random ReLU MLPs."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

import lipnotes.certificates
import lipnotes.tight
from lipnotes.certificates import lipschitz_upper_bound
from lipnotes.tight import Certificate, certify, exact_lipschitz

# --- the models and inputs of test_bad_input_certificates.py, shared rather than copied ----------------------------------
from test_bad_input_certificates import BigLinear, bad_bn, cnn, declared, hooked, mlp, nan_weight, nan_x, x  # noqa: E402


relu2 = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)).double()
x2 = torch.randn(3, 2, dtype=torch.float64)

CASES = [
    # certify: every error names certify, even those raised by the functions it calls
    (lambda: certify("net", x), TypeError, "certify", "model"),
    (lambda: certify(mlp, "x"), TypeError, "certify", "x"),
    (lambda: certify(mlp, nan_x), ValueError, "certify", "x"),
    (lambda: certify(mlp, x.float()), ValueError, "certify", "x"),
    (lambda: certify(mlp, x[:0]), ValueError, "certify", "x"),
    (lambda: certify(mlp, torch.empty(3, 4, device='meta')), ValueError, "certify", "x"),
    (lambda: certify(mlp, x, steps=0), ValueError, "certify", "steps"),
    (lambda: certify(mlp, x, lr=-1.0), ValueError, "certify", "lr"),
    (lambda: certify(mlp, x, beta=(1.0,)), ValueError, "certify", "beta"),
    (lambda: certify(declared(float('nan')), x), ValueError, "certify", "lipschitz_constant"),
    (lambda: certify(nan_weight(), x), ValueError, "certify", "model"),
    (lambda: certify(nn.Sequential(nn.LayerNorm(4)).double(), x), ValueError, "certify", "model"),
    (lambda: certify(nn.Sequential(nn.BatchNorm1d(4)).double(), x), ValueError, "certify", "model"),
    (lambda: certify(nn.Sequential(nn.RReLU()).double(), x), ValueError, "certify", "model"),
    (lambda: certify(nn.Sequential(nn.Linear(4, 4), nn.Softplus()).double(), x), ValueError, "certify", "model"),
    (lambda: certify(nn.Sequential(nn.Linear(4, 4), nn.RReLU(0.5, 0.1)).double().eval(), x), ValueError, "certify", "model"),
    (lambda: certify(nn.Sequential(BigLinear(4, 4)).double(), x), ValueError, "certify", "model"),
    (lambda: certify(nn.Sequential(hooked(nn.Linear(4, 4))).double(), x), ValueError, "certify", "model"),
    (lambda: certify(cnn, torch.randn(2, 1, 5, 5, dtype=torch.float64), input_shape=(1, 2, 2)), ValueError, "certify", "input_shape"),
    (lambda: certify(cnn, torch.randn(2, 1, 5, 5, dtype=torch.float64), input_shape=7), TypeError, "certify", "input_shape"),
    # G: an input_shape that is not x's: the upper bound would hold on other inputs than those the lower bound searches
    (lambda: certify(nn.Sequential(nn.AvgPool2d(2, 1)).double(), torch.randn(2, 1, 8, 8, dtype=torch.float64),
                     input_shape=(1, 2, 2), steps=5), ValueError, "certify", "input_shape"),
    (lambda: certify(nn.Sequential(nn.AvgPool2d(2, 1)).double(), torch.randn(2, 1, 8, 8, dtype=torch.float64),
                     input_shape=(1, 4, 4), steps=5), ValueError, "certify", "input_shape"),
    # method (new): unknown names; 'exact' needs examples of dimension 1 or 2 and a piecewise-linear net
    (lambda: certify(relu2, x2, method='lipsdp'), ValueError, "certify", "method"),
    (lambda: certify(relu2, x2, method='Product'), ValueError, "certify", "method"),
    (lambda: certify(relu2, x2, method=None), ValueError, "certify", "method"),
    (lambda: certify(mlp, x, method='exact'), ValueError, "certify", "exact"),
    (lambda: certify(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double(), torch.randn(2, 3, dtype=torch.float64),
                     method='exact'), ValueError, "certify", "exact"),
    (lambda: certify(cnn, torch.randn(2, 1, 5, 5, dtype=torch.float64), method='exact'), ValueError, "certify", "exact"),
    (lambda: certify(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double(), x2, method='exact'),
     ValueError, "certify", "Tanh"),
    (lambda: certify(relu2, x2, method='exact', steps=0), ValueError, "certify", "steps"),
    (lambda: certify(relu2, x2, method='lipsdp-neuron', input_shape=(3,)), ValueError, "certify", "input_shape"),
    (lambda: certify(relu2, x2, method='compositional', lr=0.0), ValueError, "certify", "lr"),
    (lambda: certify(nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4)).double(), x2, method='lipsdp-layer'),
     ValueError, "certify", "LayerNorm"),
    (lambda: certify(nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4)).double(), x2, method='compositional'),
     ValueError, "certify", "LayerNorm"),
]
BN_CASES = [("running_var", -1.0), ("running_var", -1e-5), ("running_var", float('nan')), ("running_var", float('inf')),
            ("running_mean", float('nan')), ("running_mean", float('-inf')), ("weight", float('nan')), ("bias", float('inf'))]
CASES += [(lambda a=attr, v=value: certify(bad_bn(a, v), x, steps=2), ValueError, "certify", attr) for attr, value in BN_CASES]


@pytest.mark.parametrize("call, exc, fname, arg", CASES)
def test_bad_input(call, exc, fname, arg, rejects):
    rejects(call, exc, fname, arg)


def test_zero_net():
    zero_net = nn.Sequential(nn.Linear(4, 2, bias=True)).double()
    with torch.no_grad(): zero_net[0].weight.zero_()
    c = certify(zero_net, x, steps=3)
    assert c.lower == 0 and c.upper == 0 and c.ratio == math.inf


# --- from test_certificates.py ---------------------------------------------------------------------------------------------
def test_conv_net_on_flat_x_names_input_shape():
    cnn32 = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(ValueError) as e: certify(cnn32, torch.randn(2, 5))
    assert "input_shape" in str(e.value)


@pytest.mark.parametrize("declared_value, exc", [(float('nan'), ValueError), (float('inf'), ValueError), (-1.0, ValueError),
                                                 ("2", TypeError), (True, TypeError), (torch.tensor(float('nan')), ValueError)])
def test_declared_constant_is_validated(declared_value, exc):
    "Issue 14 item 3: a NaN/inf/negative/string/bool lipschitz_constant gave a NaN, negative or meaningless bound."
    block = nn.Linear(2, 2); block.lipschitz_constant = declared_value
    with pytest.raises(exc) as e: certify(nn.Sequential(block), torch.randn(3, 2))
    assert str(e.value).startswith("certify: ") and "lipschitz_constant" in str(e.value)


def test_certify_errors_name_certify():
    "An error raised inside certify names certify, not the function it calls (was 'lipschitz_upper_bound: ...')."
    for call in (lambda: certify(nn.Sequential(nn.LayerNorm(2)), torch.randn(3, 2)),
                 lambda: certify(nn.Sequential(nn.Conv2d(1, 1, 3)), torch.randn(3, 1, 5, 5), input_shape=(1, 2, 2)),
                 lambda: certify(nn.Sequential(nn.Linear(2, 2)), torch.randn(3, 2), steps=0),
                 lambda: certify(nn.Sequential(nn.Linear(2, 2)), torch.randn(3, 2), stepz=3)):
        with pytest.raises((ValueError, TypeError)) as e: call()
        assert str(e.value).startswith("certify"), str(e.value)


def _unit_linear(dtype):
    lin = nn.Linear(1, 1).to(dtype)
    with torch.no_grad(): lin.weight.fill_(1.0); lin.bias.zero_()
    return lin


def test_float64_default_softplus_is_refused():
    "torch's Softplus jumps by 2.06e-9 at the default threshold: refused in float64, accepted in float32 (bound 1)."
    net = nn.Sequential(_unit_linear(torch.float64), nn.Softplus())
    with pytest.raises(ValueError, match=r"^certify: cannot bound layer '1' \(Softplus\).*2\.06e-09"):
        certify(net, torch.randn(3, 1, dtype=torch.float64), steps=2)
    low_up = certify(nn.Sequential(_unit_linear(torch.float32), nn.Softplus()), torch.randn(3, 1), steps=2).upper
    assert low_up.item() == 1.0


def test_parameterless_model_is_bounded_for_the_dtype_of_x():
    "A model without parameters gets the rules of x's dtype (as the old certify did): float32 Softplus is 1, float64 refused."
    assert certify(nn.Sequential(nn.Softplus()), torch.randn(3, 2), steps=2).upper.item() == 1.0
    with pytest.raises(ValueError, match=r"^certify: cannot bound layer '0' \(Softplus\)"):
        certify(nn.Sequential(nn.Softplus()), torch.randn(3, 2, dtype=torch.float64), steps=2)


@pytest.mark.parametrize("act, reason", [
    (nn.CELU(alpha=-1.0), "alpha=-1.0 < 0 makes the slope e^(x/alpha) unbounded"),
    (nn.Hardshrink(0.5), "jumps by lambd=0.5 at +-lambd"),
    (nn.RReLU(0.5, 0.1), "lower=0.5 <= upper=0.1"),
    (nn.Softplus(beta=2.0, threshold=5.0), "jumps by log(1+exp(-threshold))/|beta|"),
    (nn.Threshold(0.1, -1.0), "jumps from value to threshold"),
], ids=['CELU(-1)', 'Hardshrink(0.5)', 'RReLU(0.5,0.1)', 'Softplus(2,5)', 'Threshold(0.1,-1)'])
def test_known_but_refused_activation_names_its_reason(act, reason):
    net = nn.Sequential(nn.Linear(2, 2), act).double().eval()
    with pytest.raises(ValueError) as e: certify(net, torch.randn(3, 2, dtype=torch.float64), steps=2)
    msg = str(e.value)
    assert msg.startswith("certify: ") and reason in msg, msg
    assert f"layer '1' ({type(act).__name__})" in msg, msg


class _Big(nn.Linear):
    def forward(self, z): return 100 * super().forward(z)


class _BigConv(nn.Conv2d):
    def forward(self, z): return 100 * super().forward(z)


class _BigReLU(nn.ReLU):
    def forward(self, z): return 100 * super().forward(z)


class _BigMaxPool(nn.MaxPool2d):
    def forward(self, z): return 100 * super().forward(z)


class _BigAvgPool(nn.AvgPool2d):
    def forward(self, z): return 100 * super().forward(z)


class _BigBatchNorm(nn.BatchNorm1d):
    def forward(self, z): return 100 * super().forward(z)


class _CallTwice(nn.Linear):
    def __call__(self, z): return 100 * super().__call__(z)


SUBCLASSES = [(lambda: _Big(4, 3), (4,)), (lambda: _BigConv(1, 2, 3, padding=1), (1, 5, 5)), (lambda: _BigReLU(), (4,)),
              (lambda: _BigMaxPool(2), (1, 4, 4)), (lambda: _BigAvgPool(2), (1, 4, 4)), (lambda: _BigBatchNorm(4), (4,)),
              (lambda: _CallTwice(4, 4), (4,))]


@pytest.mark.parametrize("make, shape", SUBCLASSES, ids=['Linear', 'Conv2d', 'ReLU', 'MaxPool2d', 'AvgPool2d', 'BatchNorm1d',
                                                         'Linear __call__'])
def test_subclass_that_replaces_forward_is_refused(make, shape):
    torch.manual_seed(0)
    layer = make().double().eval()
    with torch.no_grad():
        if isinstance(layer, nn.Linear): layer.weight.copy_(torch.eye(4)[:layer.out_features] * 0.9)
    net = nn.Sequential(layer, nn.Flatten())
    xs = torch.rand(shape, dtype=torch.float64) + 0.5
    with pytest.raises(ValueError, match="^certify: cannot bound layer '0'"):
        certify(net, xs.unsqueeze(0), steps=2)


def _scale_output(m, inputs, out): return 100 * out


def _scale_input(m, inputs): return (100 * inputs[0],)


@pytest.mark.parametrize("where, kind", [(0, 'forward'), (1, 'forward'), (1, 'pre'), ('container', 'forward'),
                                         ('container', 'pre')])
def test_forward_hooks_are_refused(where, kind):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3, bias=False).double(), nn.Tanh())
    xs = 1e-4 * torch.randn(4, dtype=torch.float64)
    target = net if where == 'container' else net[where]
    if kind == 'forward': target.register_forward_hook(_scale_output)
    else: target.register_forward_pre_hook(_scale_input)
    with pytest.raises(ValueError, match="^certify: cannot bound layer"): certify(nn.Sequential(net), xs.unsqueeze(0), steps=2)


class _HardSigmoidFn(nn.Module):
    "F.hardsigmoid inside forward: not smoothable by module replacement, and torch has no second derivative for it."
    lipschitz_constant = 1 / 6 + 1e-7
    def forward(self, z): return torch.nn.functional.hardsigmoid(z)


@pytest.mark.parametrize("act", [nn.Hardsigmoid(), _HardSigmoidFn()], ids=['nn.Hardsigmoid', 'F.hardsigmoid'])
def test_ascent_through_an_op_without_second_derivative(act):
    """certify on Linear -> hardsigmoid -> Linear raised torch's RuntimeError 'derivative for aten::hardsigmoid_backward is
    not implemented' (found by tests/test_soundness.py); lower <= ||J|| at its point (dense Jacobian) <= upper."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 2)).double()
    xs = torch.randn(4, 3, dtype=torch.float64)
    cert = certify(net, xs, steps=5)
    J = torch.linalg.matrix_norm(jacrev(lambda z: net(z.unsqueeze(0))[0])(cert.point), 2).item()
    assert cert.lower.item() <= J * (1 + 1e-9) and J <= cert.upper.item() * (1 + 1e-9)


def test_eval_rrelu_is_batched_as_the_leaky_relu_it_computes():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 3), nn.RReLU(0.1, 0.4), nn.Linear(3, 2)).double().eval()
    xs = torch.randn(5, 4, dtype=torch.float64)
    cert = certify(net, xs, steps=5)
    J = torch.linalg.matrix_norm(jacrev(lambda z: net(z.unsqueeze(0))[0])(cert.point), 2).item()
    assert cert.lower.item() <= J * (1 + 1e-9) and J <= cert.upper.item() * (1 + 1e-9)
    assert isinstance(net[1], nn.RReLU)                                   # the caller's model is untouched


def test_lower_bound_at_a_kink_is_an_attained_ratio():
    class Id(nn.Module):
        lipschitz_constant = 1.0
        def forward(self, z): return z.clamp(min=0) + z.clamp(max=0)
    cert = certify(nn.Sequential(Id()), torch.zeros(2, 3, dtype=torch.float64), steps=2)
    assert cert.lower <= cert.upper and cert.upper == 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_lower_bound_in_low_precision_is_below_the_exact_norm(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(40, 40, bias=False).to(dtype)
    exact = torch.linalg.matrix_norm(lin.weight.detach().double(), 2)
    xs = torch.randn(2, 40, dtype=dtype)
    cert = certify(nn.Sequential(lin), xs, steps=2, n_iter=20)
    tol = 1 + 1e-9
    assert cert.lower <= exact * tol and cert.lower >= 0.99 * exact     # was 1.1406 > 1.1374 in bf16 (0.55% over)


def test_certify_lower_never_above_upper_on_the_chapter_nets():
    torch.manual_seed(5)
    nets = [(nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10)), torch.randn(8, 784)),
            (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                           nn.Flatten(), nn.Linear(4 * 4 * 4, 10)), torch.randn(8, 1, 8, 8))]
    for net, xs in nets:
        cert = certify(net, xs, steps=10)                                # raises if lower > upper (1 + 1e-9)
        J = torch.linalg.matrix_norm(jacrev(lambda z: net(z.unsqueeze(0))[0])(cert.point).reshape(-1, xs[0].numel()).double(), 2)
        assert 0 < cert.lower <= cert.upper and cert.lower <= J * (1 + 1e-4) and cert.lower >= J * 0.999


from test_certificates import _CallImpl, _Cv, _Scaled, _dense_lip_at, _instance_forward, _twice  # noqa: E402


@pytest.mark.parametrize("make", [_instance_forward, _twice, lambda: (_Scaled(nn.Linear(3, 3)).double(), None),
                                  lambda: (nn.Sequential(_Cv(1, 1, 3, padding=1)).double(), (1, 5, 5)),
                                  lambda: (nn.Sequential(_CallImpl(3, 3)).double(), None)])
def test_replaced_call_path_is_refused(make):
    m, shape = make()
    xs = torch.randn(2, *(shape or (3,)), dtype=torch.float64)
    true = _dense_lip_at(m, xs)
    try: bound = certify(m, xs, steps=3)
    except ValueError as e:
        assert str(e).split(':')[0] == 'certify'; return
    assert bound.upper >= true * (1 - 1e-9), (bound.upper, true)         # accepted only if sound


# --- the methods (issue 16) ---------------------------------------------------------------------------------------------------
def test_certificate_unpacks_as_four_in_order():
    assert Certificate._fields == ('lower', 'upper', 'ratio', 'point')
    c = certify(relu2, x2, steps=2)
    lower, upper, ratio, point = c
    assert (lower, upper, ratio) == (c.lower, c.upper, c.ratio) and point.shape == (2,)


def test_product_is_lipschitz_upper_bound():
    "method='product' (the default) is lipschitz_upper_bound's product, bit for bit."
    c = certify(relu2, x2, steps=2)
    assert torch.equal(c.upper, lipschitz_upper_bound(relu2)) and torch.equal(certify(relu2, x2, 'product', steps=2).upper, c.upper)


def random_relu_mlp(seed, d=None):
    g = torch.Generator().manual_seed(seed)
    widths = [d or int(torch.randint(1, 5, (1,), generator=g))] + [int(w) for w in torch.randint(2, 9, (2,), generator=g)] + \
             [int(torch.randint(1, 4, (1,), generator=g))]
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(a, b).double()
        with torch.no_grad(): lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64)); lin.bias.normal_(generator=g)
        layers += [lin] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers), widths[0]


@pytest.mark.parametrize("seed", range(4))
def test_every_method_brackets_and_the_tight_ones_beat_the_product(seed):
    """Random ReLU MLPs: for every method lower <= upper, every upper >= the largest dense Jacobian norm at sampled points,
    and the compositional and LipSDP bounds <= the product."""
    net, d = random_relu_mlp(seed)
    xs = torch.randn(6, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sampled = _dense_lip_at(net, 3 * torch.randn(200, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64))
    ups = {}
    for method in ('product', 'compositional', 'lipsdp-layer', 'lipsdp-neuron'):
        c = certify(net, xs, method=method, steps=5)
        assert c.lower <= c.upper and c.upper >= sampled * (1 - 1e-9) and c.ratio == c.upper / c.lower, method
        ups[method] = c.upper.item()
    for method in ('compositional', 'lipsdp-layer', 'lipsdp-neuron'):
        assert ups[method] <= ups['product'] * (1 + 1e-9), (method, ups)


@pytest.mark.parametrize("seed", range(3))
def test_exact_on_the_plane_has_ratio_one(seed):
    "2-D ReLU nets: method='exact' gives lower == upper == exact_lipschitz, ratio exactly 1, attained at its point."
    net, _ = random_relu_mlp(seed, d=2)
    xs = torch.randn(4, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = certify(net, xs, method='exact')
    ex = exact_lipschitz(net)
    assert c.ratio == 1 and c.lower == c.upper and torch.equal(c.upper, ex.value) and c.point.shape == (2,)
    J = jacrev(lambda z: net(z.unsqueeze(0))[0])(c.point)
    assert abs(torch.linalg.matrix_norm(J, 2).item() - c.upper.item()) <= 1e-12 * c.upper.item()
    product = certify(net, xs, steps=10)
    assert product.lower <= c.lower * (1 + 1e-12) and c.upper <= product.upper


def test_all_checks_before_any_work(monkeypatch):
    "A bad argument of the lower bound is refused before any upper bound runs, for every method."
    calls = []
    for name in ('lipschitz_upper_bound', 'compositional_bound', 'lipsdp_bound', 'exact_lipschitz', 'lipschitz_lower_bound'):
        monkeypatch.setattr(lipnotes.tight, name, lambda *a, _n=name, **k: calls.append(_n))
    for method in ('product', 'compositional', 'lipsdp-layer', 'lipsdp-neuron', 'exact'):
        for bad in (dict(steps=0), dict(lr=math.nan), dict(beta=(1.0,)), dict(n_iter=0), dict(input_shape=(5,))):
            with pytest.raises(ValueError, match="^certify: "): certify(relu2, x2, method=method, **bad)
        with pytest.raises(ValueError, match="^certify: "): certify(relu2, nan_x[:, 1:3], method=method)
        with pytest.raises(TypeError, match="^certify: "): certify(copy.deepcopy(relu2).float(), x2.float().long(), method=method)
    assert calls == []
