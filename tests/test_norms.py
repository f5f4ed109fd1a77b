"""lipnotes.norms against independent references: the Frobenius bound against dense Jacobians (torch.func.jacrev) for
every convolution geometry it accepts, for random chains over every activation the layer rule table accepts (the
constants themselves are tested in tests/test_lipschitz.py), and for modules it must not walk; declared constants
validated."""
import math
import random

import pytest
import torch
from torch import nn
from torch.func import jacrev

from lipnotes.norms import conv_overlap_factor, frobenius_lipschitz_bound
from test_lipschitz import CASES, rule_constant

F64 = torch.float64


def dense_norm(f, shape):
    "||J_f||_2 at zero, from the dense Jacobian: the constant of a linear or affine f."
    x = torch.zeros(*shape, dtype=F64)
    return torch.linalg.matrix_norm(jacrev(f)(x).reshape(-1, x.numel()), 2).item()


# --- item 2: only plain nn.Sequential is walked ------------------------------------------------------------------------
class Skip(nn.Module):
    def __init__(self): super().__init__(); self.lin = nn.Linear(4, 4)
    def forward(self, x): return x + self.lin(x)


class Scaled(nn.Module):
    def __init__(self): super().__init__(); self.lin = nn.Linear(4, 4)
    def forward(self, x): return 100 * self.lin(x)


def test_single_child_module_is_not_its_child():
    "x + lin(x) with lin zero has constant 1 (the old code said 0); 100 lin(x) has 100 ||W||_2 (the old code said ||W||_F)."
    torch.manual_seed(0)
    skip, scaled = Skip().double(), Scaled().double()
    with torch.no_grad(): skip.lin.weight.zero_()
    assert dense_norm(skip, (4,)) == pytest.approx(1.0)
    true = dense_norm(scaled, (4,))
    assert true == pytest.approx(100 * torch.linalg.matrix_norm(scaled.lin.weight, 2).item())
    for m in (skip, scaled):
        with pytest.raises(ValueError, match=r"^frobenius_lipschitz_bound: cannot bound module '\w+' \(\w+\) of model"):
            frobenius_lipschitz_bound(m)
    scaled.lipschitz_constant = 100 * frobenius_lipschitz_bound(scaled.lin).item()
    assert frobenius_lipschitz_bound(nn.Sequential(nn.Identity(), scaled)).item() >= true


def test_sequential_with_own_forward_or_hooks_is_refused():
    class Doubled(nn.Sequential):
        def forward(self, x): return 2 * super().forward(x)
    with pytest.raises(ValueError, match="cannot bound module 'Doubled'"):
        frobenius_lipschitz_bound(Doubled(nn.Linear(3, 3)))
    for register in (lambda m: m.register_forward_hook(lambda mod, i, o: 10 * o),
                     lambda m: m.register_forward_pre_hook(lambda mod, i: (10 * i[0],))):
        net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
        handle = register(net[0])
        with pytest.raises(ValueError, match="^frobenius_lipschitz_bound: module '0' of model has forward hooks"):
            frobenius_lipschitz_bound(net)
        handle.remove()
        assert frobenius_lipschitz_bound(net) > 0
    handle = nn.modules.module.register_module_forward_hook(lambda mod, i, o: o)
    try:
        with pytest.raises(ValueError, match="^frobenius_lipschitz_bound: global forward hooks"):
            frobenius_lipschitz_bound(nn.Linear(3, 3))
    finally:
        handle.remove()


def test_subclass_replacing_forward_is_not_its_base():
    """A Linear or ReLU subclass that returns 100 times torch's output is refused; one that keeps torch's forward is accepted
    (the ReLU rule's own refusal: tests/test_lipschitz.py)."""
    class Big(nn.Linear):
        def forward(self, x): return 100 * super().forward(x)

    class Loud(nn.ReLU):
        def forward(self, x): return 100 * super().forward(x)

    class Quiet(nn.ReLU):
        pass
    torch.manual_seed(0)
    big = Big(3, 3).double()
    assert dense_norm(big, (3,)) > torch.linalg.matrix_norm(big.weight).item()        # the old answer was too small
    for net in (nn.Sequential(big), nn.Sequential(nn.Linear(3, 3), Loud())):
        with pytest.raises(ValueError, match="of model: its class overrides torch's forward"):
            frobenius_lipschitz_bound(net)
    assert frobenius_lipschitz_bound(nn.Sequential(nn.Linear(3, 3), Quiet())) > 0


def test_parametrized_layers_are_bounded_by_their_current_weight():
    "torch's parametrizations (spectral_norm, orthogonal) keep Linear's forward: the bound holds against the dense Jacobian."
    from torch.nn.utils.parametrizations import orthogonal, spectral_norm
    torch.manual_seed(0)
    for wrap in (spectral_norm, orthogonal):
        net = nn.Sequential(wrap(nn.Linear(4, 4).double()), nn.Tanh(), nn.Linear(4, 2).double()).eval()
        true = max(torch.linalg.matrix_norm(jacrev(net)(x), 2).item() for x in torch.randn(64, 4, dtype=F64))
        assert true <= frobenius_lipschitz_bound(net).item() * (1 + 1e-12)


def test_module_list_and_dict_are_refused():
    for m in (nn.ModuleList([nn.Linear(2, 2)]), nn.ModuleDict({'a': nn.Linear(2, 2)})):
        with pytest.raises(ValueError, match="cannot bound module"):
            frobenius_lipschitz_bound(m)


# --- item 3: declared constants ----------------------------------------------------------------------------------------
def with_declared(c):
    block = nn.Sequential(nn.Linear(3, 3))
    block.lipschitz_constant = c
    return nn.Sequential(nn.Linear(3, 3), block)


@pytest.mark.parametrize("c, exc", [(float('nan'), ValueError), (float('inf'), ValueError), (-1.0, ValueError),
                                    (-1, ValueError), (10 ** 400, ValueError), ("2", TypeError), (True, TypeError),
                                    (torch.tensor(2.0 + 0j), TypeError), (torch.tensor(float('nan')), ValueError),
                                    (torch.tensor(True), TypeError), (torch.ones(2), TypeError),
                                    (torch.empty((), device='meta'), TypeError), (None, TypeError)])
def test_declared_constant_must_be_finite_real(c, exc):
    with pytest.raises(exc, match=r"^frobenius_lipschitz_bound: module '1' of model declares lipschitz_constant="):
        frobenius_lipschitz_bound(with_declared(c))


@pytest.mark.parametrize("c", [torch.tensor(2.5), torch.tensor(3), 3, 0, 2.5])
def test_declared_constant_accepted(c):
    net = with_declared(c)
    expected = torch.linalg.matrix_norm(net[0].weight).item() * float(c)
    assert frobenius_lipschitz_bound(net).item() == pytest.approx(expected, rel=1e-6)


# --- item 4: activation constants (moved to tests/test_lipschitz.py); here the bound that uses them ---------------------
def test_elu_negative_alpha_regression():
    "ELU(alpha=-3) has constant 3 (slope -3 e^x as x -> 0-); the old code said 1."
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ELU(alpha=-3.0)).double()
    with torch.no_grad(): net[0].weight.fill_(1.0)
    x = torch.tensor([-1e-6], dtype=F64)
    assert jacrev(net)(x).abs().item() <= frobenius_lipschitz_bound(net).item() * (1 + 1e-12)
    assert jacrev(net)(x).abs().item() > 2.99


def test_softplus_refused_where_the_dtype_resolves_its_jump():
    "torch's Softplus jumps by log(1+e^-t)/beta at x = t/beta: the bound refuses it in float64 for t = 20, accepts t = 40."
    with pytest.raises(ValueError, match=r"^frobenius_lipschitz_bound: cannot bound module '1' \(Softplus\) of model"):
        frobenius_lipschitz_bound(nn.Sequential(nn.Linear(2, 2), nn.Softplus()).double())
    assert frobenius_lipschitz_bound(nn.Sequential(nn.Linear(2, 2), nn.Softplus(threshold=40.0)).double()) > 0


# --- the Frobenius bound over every convolution it accepts ----------------------------------------------------------------
def conv_cases(n=60, seed=0):
    rng = random.Random(seed)
    torch.manual_seed(seed)                               # the layers' initial weights
    for _ in range(n):
        dim, transposed = rng.choice([1, 2, 3]), rng.random() < 0.4
        groups = rng.choice([1, 1, 2])
        cin, cout = groups * rng.randint(1, 2), groups * rng.randint(1, 2)
        k = tuple(rng.randint(1, 3) for _ in range(dim))
        s = tuple(rng.randint(1, 3) for _ in range(dim))
        d = tuple(rng.randint(1, 2) for _ in range(dim))
        size = tuple(rng.randint(max(ki * di, 3), max(ki * di, 6 if dim < 3 else 4)) for ki, di in zip(k, d))
        if transposed:
            op = tuple(rng.randint(0, max(si, di) - 1) for si, di in zip(s, d))
            p = tuple(rng.randint(0, (di * (ki - 1)) // 2) for ki, di in zip(k, d))
            cls = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d][dim - 1]
            layer = cls(cin, cout, k, stride=s, padding=p, output_padding=op, dilation=d, groups=groups)
        else:
            p = rng.choice(['valid', 'same', 'int'])
            if p == 'same': s = (1,) * dim
            if p == 'int': p = tuple(rng.randint(0, 2) for _ in range(dim))
            cls = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dim - 1]
            layer = cls(cin, cout, k, stride=s, padding=p, dilation=d, groups=groups)
        yield layer, (cin, *size), rng.random() < 0.5


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("layer, shape, positive", list(conv_cases()))
def test_frobenius_bound_dominates_every_conv(layer, shape, positive):
    "The bound is >= the layer's operator norm from its dense Jacobian, in every geometry; non-negative kernels are the worst case."
    layer = layer.double()
    if positive:
        with torch.no_grad(): layer.weight.abs_()
    true = dense_norm(lambda x: layer(x[None])[0], shape)
    assert true <= frobenius_lipschitz_bound(layer).item() * (1 + 1e-12)
    kernel = tuple(layer.kernel_size)
    reshaped = torch.linalg.matrix_norm(layer.weight.reshape(layer.weight.shape[0], -1), 'fro').item()
    assert true <= conv_overlap_factor(kernel, tuple(layer.stride), tuple(layer.dilation)) * reshaped * (1 + 1e-12)


@pytest.mark.parametrize("mode", ['reflect', 'replicate', 'circular'])
def test_non_zero_padding_refused(mode):
    with pytest.raises(ValueError, match=f"^frobenius_lipschitz_bound: module '0' of model uses padding_mode='{mode}'"):
        frobenius_lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode=mode)))


def test_circular_padding_breaks_the_overlap_factor():
    "Why non-zero padding is refused: 1/3 kernel, 4x4 input, circular padding 2: ||conv|| = 4.56 > 3 = factor * ||K~||."
    layer = nn.Conv2d(1, 1, 3, padding=2, padding_mode='circular', bias=False).double()
    with torch.no_grad(): layer.weight.fill_(1 / 3)
    true = dense_norm(lambda x: layer(x[None])[0], (1, 4, 4))
    assert true == pytest.approx(4.5616, abs=1e-4)
    assert true > conv_overlap_factor((3, 3)) * torch.linalg.matrix_norm(layer.weight.reshape(1, -1), 2).item()


# --- random chains over every accepted layer ---------------------------------------------------------------------------
def test_frobenius_bound_dominates_random_chains():
    "Random Sequential nets of Linear layers and every parameterised activation: bound >= ||J|| at sampled points."
    rng = random.Random(3)
    acts = [a for a, _ in CASES if rule_constant(a, F64)[0] is not None and not isinstance(a, nn.PReLU)]
    for trial in range(40):
        torch.manual_seed(trial)
        layers, w = [], rng.randint(1, 5)
        for _ in range(rng.randint(1, 3)):
            w2 = rng.randint(1, 5)
            layers += [nn.Linear(w, w2), rng.choice(acts), nn.Dropout(0.3)]
            w = w2
        net = nn.Sequential(*layers).double().eval()
        bound = frobenius_lipschitz_bound(net).item()
        xs = torch.randn(32, layers[0].in_features, dtype=F64) * rng.choice([0.01, 1.0, 10.0])
        jac = max(torch.linalg.matrix_norm(jacrev(net)(x), 2).item() for x in xs)
        assert jac <= bound * (1 + 1e-9)


def test_half_precision_bound_rounds_up():
    "A float16 model's bound is the float64 product rounded up, never below it."
    torch.manual_seed(0)
    for _ in range(20):
        net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).half()
        exact = math.prod(torch.linalg.vector_norm(m.weight.double()).item() for m in (net[0], net[2]))
        b = frobenius_lipschitz_bound(net)
        assert b.dtype == torch.float16 and b.item() >= exact
        assert b.item() <= exact * (1 + 2 ** -10)


# --- ATTACK findings A, B, C: only torch's own call path is walked (class AND instance) ----------------------------------
def _old_walk(net):
    "What the walk returned before the call-path check: the product of the Frobenius bounds of the Linear/Conv weights."
    return math.prod(m.weight.norm().item() * (conv_overlap_factor(tuple(m.kernel_size)) if isinstance(m, nn.Conv2d) else 1)
                     for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def _attack_models():
    torch.set_default_dtype(F64)
    try:
        torch.manual_seed(0)
        lin = nn.Linear(3, 3)
        lin.forward = lambda x: 10 * nn.functional.linear(x, lin.weight, lin.bias)          # A: forward on the instance

        class Twice(nn.Sequential):                                                           # B: the chain run twice
            def __iter__(self): return iter(list(self._modules.values()) * 2)

        class Scaled(nn.Sequential):                                                          # B: 10 times the chain
            def __call__(self, x): return 10 * super().__call__(x)

        class Cv(nn.Conv2d):                                                                  # C: a helper on the path
            def _conv_forward(self, x, w, b): return super()._conv_forward(10 * x, w, b)

        class Impl(nn.Linear):                                                                # C: _call_impl
            def _call_impl(self, x): return 10 * super()._call_impl(x)

        class Getitem(nn.Sequential):                                                         # __getitem__/__len__
            def __len__(self): return 0

        twice = Twice(nn.Linear(3, 3))
        twice[0].weight.data = 2 * torch.eye(3)
        return [('A', nn.Sequential(lin), (3,)), ('B-iter', twice, (3,)), ('B-call', Scaled(nn.Linear(3, 3)), (3,)),
                ('C-conv', nn.Sequential(Cv(1, 1, 3, padding=1)), (1, 5, 5)), ('C-impl', nn.Sequential(Impl(3, 3)), (3,)),
                ('len', Getitem(nn.Linear(3, 3)), (3,))]
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize('label, net, shape', _attack_models(), ids=lambda v: v if isinstance(v, str) else '')
def test_replaced_call_path_is_refused(label, net, shape):
    "Each of the attacker's models: the old walk's value is below the true constant (dense Jacobian); the bound now refuses."
    if label != 'len':
        assert _old_walk(net) < dense_norm(net, shape)
    with pytest.raises(ValueError, match=r"^frobenius_lipschitz_bound: cannot bound module '.*' \(.*\) of model: its class "
                                         r"overrides torch's forward or another method on torch's call path"):
        frobenius_lipschitz_bound(net)
    net.lipschitz_constant = dense_norm(net, shape)                 # a declared constant is honoured
    assert frobenius_lipschitz_bound(net).item() == pytest.approx(net.lipschitz_constant)


def test_attack_values_are_the_reported_ones():
    "The attacker's numbers: Twice with W = 2I has true constant 4 and old bound ||2I||_F = 2 sqrt 3; its lambda-forward Linear 10 ||W||_2."
    models = {label: (net, shape) for label, net, shape in _attack_models()}
    twice, _ = models['B-iter']
    assert dense_norm(twice, (3,)) == pytest.approx(4.0) and _old_walk(twice) == pytest.approx(2 * math.sqrt(3))
    a, _ = models['A']
    assert dense_norm(a, (3,)) == pytest.approx(10 * torch.linalg.matrix_norm(a[0].weight, 2).item())


def test_uses_torch_call_path_accepts_torch_layers_and_parametrizations():
    "Plain torch layers, plain subclasses and parametrised layers (weight_norm, spectral_norm, spectral_normalize) keep the path."
    from lipnotes.core import is_plain_sequential, overrides_forward, uses_torch_call_path
    from lipnotes.spectral import spectral_normalize
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    class Quiet(nn.Linear):
        pass
    torch.manual_seed(0)
    layers = [nn.Linear(3, 3), nn.Conv2d(1, 1, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3)), Quiet(3, 3),
              weight_norm(nn.Linear(3, 3)), spectral_norm(nn.Linear(3, 3)), spectral_normalize(nn.Linear(3, 3))]
    for m in layers:
        assert uses_torch_call_path(m) and not overrides_forward(m), type(m).__name__
    assert type(layers[5]).__name__ == 'ParametrizedLinear' and is_plain_sequential(layers[3])
    for wrap in (weight_norm, spectral_norm, spectral_normalize):
        net = nn.Sequential(wrap(nn.Linear(3, 3).double()), nn.Tanh(), nn.Linear(3, 2).double()).eval()
        true = max(torch.linalg.matrix_norm(jacrev(net)(x), 2).item() for x in torch.randn(32, 3, dtype=F64))
        assert true <= frobenius_lipschitz_bound(net).item() * (1 + 1e-12)
    lin = nn.Linear(3, 3)
    lin.forward = lin.forward                                     # even a same-looking forward on the instance is refused
    assert not uses_torch_call_path(lin) and overrides_forward(lin)
