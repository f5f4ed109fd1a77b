"""Randomized soundness suite (issue 14): every certified upper bound must be >= a Lipschitz constant that the network
attains, measured two independent ways.

`build_net(seed)` draws a small float64 `nn.Sequential` over the layers the bounds accept (Linear; Conv1d/Conv2d in every
geometry and padding mode; max, average, adaptive and LP pooling with int or tuple arguments; eval-mode BatchNorm with
negative gamma and small running_var; every activation, parameterised ones with unusual parameters; Flatten/Unflatten;
Dropout in train and eval mode; modules with a true declared `lipschitz_constant`; nested Sequentials and a module used
twice). For each net, `lipnotes.certificates.lipschitz_upper_bound(model, input_shape)`,
`lipnotes.norms.frobenius_lipschitz_bound(model)` and `lipnotes.tight.certify(model, x)` must either

* return a finite bound >= what the net attains:
  (a) ||J_f(x)||_2 of the dense Jacobian (`torch.autograd.functional.jacobian`, float64) at random points of several
      scales and at points pushed towards large ||J|| by gradient ascent on sigma_max(J);
  (b) ||f(x1) - f(x2)|| / ||x1 - x2|| on pairs chosen adversarially by normalised gradient ascent on the ratio, from
      short pairs, long pairs, spike pairs (one input coordinate moved far: what max pooling rewards) and pairs along the
      top singular vector of the best Jacobian;
* or refuse with a ValueError/TypeError whose message starts with the public function's name.
Anything else (another exception, a NaN or infinite "bound") is a failure. certify's lower bound must be <= its upper
bound and <= ||J_f|| at the point it reports.

Beside the random nets (N_DEFAULT of up to 5 layers, N_SINGLE of one layer, where a wrong per-layer constant is not hidden
by the slack of a product): every activation scanned exactly on a grid, every small pooling geometry and a sample of conv
geometries against their exact constants, certify on every activation, and hand-made regressions for the unsound results
found at 81a32c6. A failure message names the seed, the net and the input shape; reproduce it with
`python tests/test_soundness.py SEED`. `LIPNOTES_SLOW=1` adds a larger run (800 nets, every conv geometry).
"""
import copy
import math
import random
import sys

import pytest
import torch
from torch import nn

import lipnotes.certificates
import lipnotes.norms
import lipnotes.tight
from lipnotes.lipschitz import GroupSort

# Rounding tolerance, and nothing else: every bound and every attained value is computed in float64 (eps 1.1e-16). A bound
# is a product of at most ~10 per-layer constants, each from an SVD/FFT/closed form with relative error ~1e-13; an attained
# Jacobian norm has relative error ~1e-12; a pair ratio divides a difference of outputs by ||x1 - x2|| >= R_MIN = 1e-4, so
# its rounding error is ~1e-16 (||f(x1)|| + ||f(x2)||) / 1e-4 = 1e-12 (||f(x1)|| + ||f(x2)||), where ||f(x)|| <= ||f(0)||
# + bound ||x|| with ||x|| < ~100 at the points searched: below 1e-9 + 2e-10 bound when ||f(0)|| < ~500. 1e-6 relative plus
# 1e-9 absolute covers all of these and is far below any real gap (the defects found so far are factors >= 1.0039).
RTOL, ATOL = 1e-6, 1e-9
R_MIN = 1e-4             # the shortest pair distance allowed in the ratio search (see the rounding budget above)
N_DEFAULT = 40           # nets in the default run
N_SINGLE = 50            # one-layer nets in the default run
N_SLOW = 400             # nets of each kind in the slow run (LIPNOTES_SLOW=1)
F64 = torch.float64


# ------------------------------------------------------------------------------------------------ custom modules
class Residual(nn.Module):
    "x + alpha * lin2(tanh(lin1(x))); tanh is 1-Lipschitz, so 1 + |alpha| ||W2||_2 ||W1||_2 is a true constant."
    def __init__(self, d, h, alpha):
        super().__init__()
        self.lin1, self.lin2, self.alpha = nn.Linear(d, h), nn.Linear(h, d), alpha
    def forward(self, x): return x + self.alpha * self.lin2(torch.tanh(self.lin1(x)))
    @property
    def lipschitz_constant(self):
        s = lambda w: torch.linalg.matrix_norm(w.detach().double(), 2).item()
        return 1.0 + abs(self.alpha) * s(self.lin1.weight) * s(self.lin2.weight)
    def extra_repr(self): return f"alpha={self.alpha}, declared={self.lipschitz_constant:.6g}"


def _conv_tap_bound(conv):
    """A zero-padded stride-1 conv is the sum over kernel taps of (shift o channel matrix W[:, :, tap]); a zero-padded
    shift has norm <= 1, so sum_tap ||W[:, :, tap]||_2 bounds its operator norm (triangle inequality; groups=1)."""
    w = conv.weight.detach().double()
    taps = w.reshape(w.shape[0], w.shape[1], -1)
    return sum(torch.linalg.matrix_norm(taps[:, :, t], 2).item() for t in range(taps.shape[2]))


class ConvResidual(nn.Module):
    "x + alpha * conv2(tanh(conv1(x))) with zero-padded, shape-preserving convs; declared 1 + |alpha| B(conv1) B(conv2)."
    def __init__(self, n, c, h, k, alpha):
        super().__init__()
        Conv = nn.Conv1d if n == 1 else nn.Conv2d
        self.conv1, self.conv2, self.alpha = Conv(c, h, k, padding=k // 2), Conv(h, c, k, padding=k // 2), alpha
    def forward(self, x): return x + self.alpha * self.conv2(torch.tanh(self.conv1(x)))
    @property
    def lipschitz_constant(self): return 1.0 + abs(self.alpha) * _conv_tap_bound(self.conv1) * _conv_tap_bound(self.conv2)
    def extra_repr(self): return f"alpha={self.alpha}, declared={self.lipschitz_constant:.6g}"


class Scale(nn.Module):
    "c * x, declared |c| (as a float, an int or a 0-d tensor)."
    def __init__(self, c, as_type):
        super().__init__()
        self.c = c
        self.lipschitz_constant = {'float': abs(float(c)), 'int': math.ceil(abs(c)), 'tensor': torch.tensor(abs(float(c)))}[as_type]
        assert self.lipschitz_constant >= abs(c)
    def forward(self, x): return self.c * x
    def extra_repr(self): return f"c={self.c}, declared={self.lipschitz_constant!r}"


class MaxMin(nn.Module):
    "GroupSort-2 over dim 1: (max, min) of channel pairs; sorting is 1-Lipschitz in L2, declared 1."
    lipschitz_constant = 1.0
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class Flip(nn.Module):
    "A permutation of the last dimension: an isometry, declared 1."
    lipschitz_constant = 1.0
    def forward(self, x): return x.flip(-1)


class Declared(nn.Module):
    "Identity that declares an arbitrary (possibly invalid) lipschitz_constant."
    def __init__(self, c):
        super().__init__(); self.lipschitz_constant = c
    def forward(self, x): return x
    def extra_repr(self): return f"declared={self.lipschitz_constant!r}"


# ------------------------------------------------------------------------------------------------ the generator
def _int_or_tuple(r, vals):
    "An int (torch repeats it over the dimensions) or a tuple, when the values are equal; else a tuple."
    return vals[0] if len(set(vals)) == 1 and r.random() < 0.75 else tuple(vals)


def _per_dim(r, n, draw):
    "n values of draw(): mostly all equal (so that int arguments are common)."
    return [draw()] * n if r.random() < 0.7 else [draw() for _ in range(n)]


def _scale_weights(r, *mods):
    with torch.no_grad():
        for m in mods: m.weight.mul_(r.uniform(0.5, 2.0))


def _prelu(r, c, values):
    m = nn.PReLU(num_parameters=r.choice([1, c]))
    with torch.no_grad(): m.weight.copy_(torch.tensor([r.choice(values) for _ in range(m.weight.numel())]))
    return m


# (name, factory(r, channels) -> module, train mode): every activation, parameterised ones with ordinary and unusual
# parameters. Hardshrink, Threshold (jumps), CELU(alpha < 0) (unbounded slope) and Softplus with a small threshold (a jump
# of log(1 + e^-threshold) / beta where it switches to x) have no Lipschitz constant: they must be refused.
ACTIVATIONS = (
    [(m.__name__, lambda r, c, m=m: m(), False) for m in (
        nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Mish, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Softsign,
        nn.Tanhshrink, nn.LogSigmoid, nn.SELU, nn.Identity, nn.Hardtanh, nn.ELU, nn.CELU, nn.LeakyReLU, nn.Softplus)]
    + [("GELU('tanh')", lambda r, c: nn.GELU('tanh'), False)]
    + [(f"ELU(alpha={a})", lambda r, c, a=a: nn.ELU(alpha=a), False) for a in (0.3, 2.5, -3.0, -0.5, 0.0)]
    + [(f"CELU(alpha={a})", lambda r, c, a=a: nn.CELU(alpha=a), False) for a in (0.5, 3.0, -1.0)]
    + [(f"LeakyReLU({a})", lambda r, c, a=a: nn.LeakyReLU(a), False) for a in (0.3, -0.5, -2.0, 3.0)]
    + [(f"Softplus(beta={b}, threshold={t})", lambda r, c, b=b, t=t: nn.Softplus(beta=b, threshold=t), False)
       for b in (1.0, 0.5, 3.0, -1.0) for t in (20.0, 5.0, 0.5, -1.0) if (b, t) != (1.0, 20.0)]
    + [(f"Hardtanh({lo}, {hi})", lambda r, c, lo=lo, hi=hi: nn.Hardtanh(lo, hi), False)
       for lo, hi in ((0.0, 0.5), (-3.0, 2.0), (-0.2, 4.0))]
    + [(f"PReLU({v})", lambda r, c, v=v: _prelu(r, c, v), False) for v in ((-3.0,), (5.0,), (0.25, -0.5), (-3.0, 5.0, 0.25))]
    + [(f"RReLU({lo:.3g}, {hi:.3g}, train={t})", lambda r, c, lo=lo, hi=hi: nn.RReLU(lo, hi), t)
       for lo, hi in ((1 / 8, 1 / 3), (-2.0, 0.5), (0.5, 3.0)) for t in (False, True)]
    + [(f"Softshrink({l})", lambda r, c, l=l: nn.Softshrink(l), False) for l in (0.0, 0.5, 2.0)]
    + [("Hardshrink(0.5)", lambda r, c: nn.Hardshrink(0.5), False),
       ("Threshold(0.1, -1)", lambda r, c: nn.Threshold(0.1, -1.0), False)]
    + [(f"{m.__name__}(dim={d})", lambda r, c, m=m, d=d: m(dim=d), False) for m in (nn.Softmax, nn.LogSoftmax) for d in (1, -1)]
    # not elementwise: groups of 2 where the width is even, else one group of the whole width
    + [("GroupSort(2 or width)", lambda r, c: GroupSort(2 if c % 2 == 0 else c), False)])


def random_activation(r, channels):
    "One activation module drawn from ACTIVATIONS; (module, whether to put it in train mode)."
    _, make, trains = r.choice(ACTIVATIONS)
    return make(r, channels), trains


def _conv(r, n, shape):
    cin = shape[0]
    g = r.choice([d for d in range(1, cin + 1) if cin % d == 0])
    cout = g * r.randint(1, 2 if g > 1 else 3)
    k = _per_dim(r, n, lambda: r.randint(1, 4))
    kw = dict(stride=_int_or_tuple(r, _per_dim(r, n, lambda: r.choice([1, 1, 2, 3]))),
              dilation=_int_or_tuple(r, _per_dim(r, n, lambda: r.choice([1, 1, 2]))), groups=g, bias=r.random() < 0.7,
              padding_mode=r.choice(['zeros', 'zeros', 'circular', 'reflect', 'replicate']))
    kind = r.choice(['int', 'tuple', 'same', 'valid', 'none'])
    if kind == 'int': kw['padding'] = r.randint(0, 3)
    elif kind == 'tuple': kw['padding'] = tuple(r.randint(0, 3) for _ in range(n))
    elif kind in ('same', 'valid'): kw['padding'] = kind
    if kind == 'same' and r.random() < 0.7: kw['stride'] = 1
    conv = (nn.Conv1d if n == 1 else nn.Conv2d)(cin, cout, _int_or_tuple(r, k), **kw)
    _scale_weights(r, conv)
    return conv


def _pool(r, n, shape):
    kind = r.choice(['max'] * 4 + ['avg'] * 3 + ['adaptive_avg', 'adaptive_max', 'lp'])
    k = _per_dim(r, n, lambda: r.randint(1, 4))
    stride = None if r.random() < 0.2 else _int_or_tuple(r, _per_dim(r, n, lambda: r.choice([1, 1, 2, 3])))
    pad = _int_or_tuple(r, [r.randint(0, ki // 2) for ki in k])
    ceil = r.random() < 0.3
    K = _int_or_tuple(r, k)
    if kind == 'max':
        return (nn.MaxPool1d if n == 1 else nn.MaxPool2d)(K, stride, pad, _int_or_tuple(r, _per_dim(r, n, lambda: r.choice([1, 1, 2]))),
                                                          ceil_mode=ceil)
    if kind == 'avg':
        if n == 1: return nn.AvgPool1d(K, stride, pad, ceil, count_include_pad=r.random() < 0.5)
        return nn.AvgPool2d(K, stride, pad, ceil, count_include_pad=r.random() < 0.5,
                            divisor_override=r.choice([None, None, None, 1, 3]))
    out = _int_or_tuple(r, [r.randint(1, s + 2) for s in shape[1:]])
    if kind == 'adaptive_avg': return (nn.AdaptiveAvgPool1d if n == 1 else nn.AdaptiveAvgPool2d)(out)
    if kind == 'adaptive_max': return (nn.AdaptiveMaxPool1d if n == 1 else nn.AdaptiveMaxPool2d)(out)
    return (nn.LPPool1d if n == 1 else nn.LPPool2d)(r.choice([1, 2]), K, stride, ceil)


def _batchnorm(r, Cls, c):
    bn = Cls(c, eps=r.choice([1e-5, 1e-5, 1e-3]), affine=r.random() < 0.8)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.copy_(torch.exp(torch.empty(c).uniform_(math.log(1e-4), math.log(3.0))))
        if bn.affine:
            bn.weight.uniform_(-3.0, 3.0); bn.bias.normal_()
    return bn


def _dropout(r, n):
    choices = [nn.Dropout, nn.Dropout, nn.AlphaDropout] + ([nn.Dropout1d if n == 1 else nn.Dropout2d, nn.FeatureAlphaDropout] if n else [])
    return r.choice(choices)(r.choice([0.0, 0.2, 0.5, 0.9])), r.random() < 0.5


def _factorisations(d):
    "(C, L) and (C, H, W) with C <= 3, L >= 3 and H, W >= 2 whose product is d."
    out = []
    for c in (1, 2, 3):
        if d % c: continue
        if d // c >= 3: out.append((c, d // c))
        for h in range(2, d // c):
            if (d // c) % h == 0 and d // c // h >= 2: out.append((c, h, d // c // h))
    return out


def _propose(r, shape, single=False):
    """A short list of new layers for inputs of `shape` (no batch dim), and the modules among them to put in train mode.
    For a one-layer net (`single`) activations are rarer: test_activation_scan covers each of them exactly."""
    n = len(shape) - 1                                   # 0: vectors, 1: sequences (C, L), 2: images (C, H, W)
    c = shape[0]
    u = r.random()
    if single and n and u < 0.8: return [_conv(r, n, shape) if u < 0.35 else _pool(r, n, shape)], []
    if u < (0.1 if single else 0.26):
        act, trains = random_activation(r, c)
        return [act], [act] if trains else []
    if n == 0:
        if u < 0.55:
            lin = nn.Linear(c, r.randint(2, 12), bias=r.random() < 0.7); _scale_weights(r, lin)
            return [lin], []
        if u < 0.62: return [_batchnorm(r, nn.BatchNorm1d, c)], []
        if u < 0.68:
            drop, trains = _dropout(r, 0)
            return [drop], [drop] if trains else []
        if u < 0.76:
            f = _factorisations(c)
            if f: return [nn.Unflatten(1, r.choice(f))], []
            return [nn.Identity()], []
        if u < 0.82: return [Residual(c, r.randint(2, 6), r.choice([0.5, -1.0, 2.0]))], []
        if u < 0.88:                                     # one Linear used twice
            lin = nn.Linear(c, c); _scale_weights(r, lin)
            act, trains = random_activation(r, c)
            return [lin, act, lin], [act] if trains else []
        if u < 0.92: return [Scale(r.choice([-2.5, 0.5, 3.0]), r.choice(['float', 'int', 'tensor']))], []
        if u < 0.96 and c % 2 == 0: return [MaxMin()], []
        return [Flip()], []
    if u < 0.46: return [_conv(r, n, shape)], []
    if u < 0.70: return [_pool(r, n, shape)], []
    if u < 0.77: return [_batchnorm(r, nn.BatchNorm1d if n == 1 else nn.BatchNorm2d, c)], []
    if u < 0.82:
        drop, trains = _dropout(r, n)
        return [drop], [drop] if trains else []
    if u < 0.90: return [nn.Flatten()], []
    if u < 0.94:
        k = r.choice([1, 3])
        block = ConvResidual(n, c, r.randint(1, 3), k, r.choice([0.5, -1.0, 2.0])); _scale_weights(r, block.conv1, block.conv2)
        return [block], []
    if u < 0.97:                                         # one shape-preserving conv used twice
        k = r.choice([1, 3])
        conv = (nn.Conv1d if n == 1 else nn.Conv2d)(c, c, k, padding=k // 2); _scale_weights(r, conv)
        act, trains = random_activation(r, c)
        return [conv, act, conv], [act] if trains else []
    return [Flip()], []


SINGLE = 1_000_000       # seeds from here on draw a net of one proposal (one layer, or a module used twice) on the raw input


def build_net(seed, max_layers=5):
    """(model, input_shape, train_mode_modules): a random float64 nn.Sequential, reproducible from `seed`; every layer is in
    eval mode except those listed (Dropout/RReLU drawn in train mode). Seeds >= SINGLE give one-layer nets, where a bound
    should be nearly attained, so that a wrong per-layer constant is not hidden by the slack of a product."""
    r = random.Random(seed)
    single = seed >= SINGLE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kind = r.choice(['vec', 'seq', 'img', 'img'] + (['seq', 'img'] if single else []))
        if kind == 'vec': shape = (r.randint(1, 16),)
        elif kind == 'seq': shape = (r.randint(1, 3), r.randint(5, 12))
        else: shape = (r.randint(1, 3), r.randint(5, 9), r.randint(5, 9))
        input_shape, layers, train = shape, [], []
        target = 1 if single else r.choice([1, 2, 2, 3] + list(range(3, max_layers + 1)))
        while len(layers) < target:
            for _ in range(50):
                try:
                    new, trains = _propose(r, shape, single)
                    trial = nn.Sequential(*new).double().eval()
                    with torch.no_grad(): out = trial(torch.randn(2, *shape, dtype=F64))
                except Exception:
                    continue
                if out.dim() >= 2 and 1 <= out[0].numel() <= 320: break
            else:
                raise RuntimeError(f"build_net({seed}): no layer fits shape {shape}")
            layers += new; train += trains; shape = tuple(out.shape[1:])
        if not single and r.random() < 0.3 and len(shape) > 1:   # end on a small vector output
            lin = nn.Linear(math.prod(shape), r.randint(1, 6)); _scale_weights(r, lin)
            layers += [nn.Flatten(), lin]
        if not single and r.random() < 0.35 and len(layers) >= 2:   # nest a contiguous run (sometimes twice)
            i = r.randrange(len(layers) - 1); j = r.randint(i + 2, len(layers))
            inner = layers[i:j]
            if r.random() < 0.3 and len(inner) >= 2: inner = [inner[0], nn.Sequential(*inner[1:])]
            layers = layers[:i] + [nn.Sequential(*inner)] + layers[j:]
        model = nn.Sequential(*layers).double().eval()
        for m in train: m.train()
    return model, input_shape, train


def _stochastic(train):
    return any(isinstance(m, nn.RReLU) or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) for m in train)


def describe(seed, model, shape, train):
    modes = f"train-mode modules: {[repr(m) for m in train]}" if train else "all modules in eval mode"
    return (f"seed={seed} input_shape={shape} ({modes})\n{model!r}\n"
            f"reproduce: python tests/test_soundness.py {seed}   (or build_net({seed}) in tests/test_soundness.py)")


# ------------------------------------------------------------------------------------------------ attained constants
def _fixed_noise(model, stochastic, seed):
    """The model in train mode as one realisation: Dropout masks drawn from the same seed on every call (the same mask for
    the same batch shape). torch's RReLU draws a slope only for each non-positive input, so its noise shifts with the
    sign pattern; on a copy, each train-mode RReLU is replaced by its definition with slopes a ~ U(lower, upper) drawn per
    position from a fixed seed."""
    if not stochastic: return model
    model = copy.deepcopy(model)
    def rrelu_realisation(m, inputs, out):
        (x,) = inputs
        a = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype) * (m.upper - m.lower) + m.lower
        return torch.where(x >= 0, x, a * x)
    for m in model.modules():
        if isinstance(m, nn.RReLU) and m.training: m.register_forward_hook(rrelu_realisation)
    def f(x):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return model(x)
    return f


def _jacobian(f, x, create_graph=False):
    "Dense Jacobian (outputs x inputs) of one example's map x -> f(x[None]).flatten(), float64."
    fx = lambda z: f(z.unsqueeze(0)).reshape(-1)
    try:
        J = torch.autograd.functional.jacobian(fx, x, create_graph=create_graph, vectorize=True)
    except Exception:                                    # an op without a batching rule: one backward per output
        J = torch.autograd.functional.jacobian(fx, x, create_graph=create_graph, vectorize=False)
    return J.reshape(J.shape[0], -1)


def _jacobian_norm(f, x):
    "(||J_f(x)||_2, top right singular vector) or (nan, None) where the Jacobian is not finite."
    J = _jacobian(f, x).detach()
    if not torch.isfinite(J).all(): return math.nan, None
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    return S[0].item(), Vh[0].reshape(x.shape)


def attained(model, shape, train, seed, budget=1):
    """The largest Lipschitz ratios the net attains, two ways: {'jacobian': (value, point), 'pair': (value, x1, x2)}.
    `budget` scales the number of points, starts and steps (1 in the default run)."""
    f = _fixed_noise(model, _stochastic(train), seed)
    g = torch.Generator().manual_seed(seed + 7919)
    rnd = lambda k, s: torch.randn(k, *shape, generator=g, dtype=F64) * s
    # (a) dense ||J||_2 at random points of several scales, then gradient ascent on sigma_max(J) from the best ones
    points = torch.cat([rnd(2 * budget, s) for s in (0.01, 0.3, 1.0, 3.0)])
    scored = [(v, x, vec) for x in points for v, vec in [_jacobian_norm(f, x)] if math.isfinite(v)]
    scored.sort(key=lambda t: -t[0])
    for v0, x0, _ in scored[:2 * budget]:
        x = x0.clone()
        lr = 0.1 * max(1.0, x.norm().item() / math.sqrt(x.numel()))
        for _ in range(4 * budget):
            x.requires_grad_(True)
            try:
                s = torch.linalg.svdvals(_jacobian(f, x, create_graph=True))[0]
                (gx,) = torch.autograd.grad(s, x)
            except Exception:                            # not twice differentiable here: keep the points sampled so far
                break
            x = x.detach()
            if not torch.isfinite(gx).all() or gx.norm() == 0: break
            x = x + lr * gx / gx.norm()
            v, vec = _jacobian_norm(f, x)
            if math.isfinite(v): scored.append((v, x.clone(), vec))
    scored.sort(key=lambda t: -t[0])
    best_j = scored[0] if scored else (0.0, None, None)
    # (b) pair ratios ||f(x1) - f(x2)|| / ||x1 - x2||, maximised by normalised gradient ascent over (midpoint, half-gap)
    k = 4 * budget
    mids = [rnd(k, 1.0), rnd(k, 1.0), rnd(k, 0.05)]
    gaps = [rnd(k, 1.0), rnd(k, 1.0), torch.zeros(k, *shape, dtype=F64)]
    radii = [1e-2, 3.0, 5.0]                             # short pairs, long pairs, spike pairs (one coordinate moved)
    spikes = gaps[2].view(k, -1)
    for i in range(k): spikes[i, torch.randint(spikes.shape[1], (1,), generator=g)] = 1.0
    for v, x, vec in scored[:k]:                         # along the top singular vector at the best Jacobian points
        if vec is not None: mids.append(x[None]); gaps.append(vec[None]); radii.append(1e-3)
    pairs = []
    for m, h, rad in zip(mids, gaps, radii):
        h = h / h.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *[1] * len(shape)) * rad
        pairs.append((m, h))
    m = torch.cat([p[0] for p in pairs]); h = torch.cat([p[1] for p in pairs])
    view = (-1,) + (1,) * len(shape)
    best_p, best_x1, best_x2 = torch.zeros(m.shape[0], dtype=F64), m - h, m + h
    steps = 30 * budget
    for t in range(steps + 1):
        m.requires_grad_(True); h.requires_grad_(True)
        x1, x2 = m - h, m + h
        dist = (x1 - x2).flatten(1).norm(dim=1)
        ratio = (f(x1) - f(x2)).flatten(1).norm(dim=1) / dist
        ok = torch.isfinite(ratio)
        with torch.no_grad():
            better = ok & (ratio > best_p)
            best_p = torch.where(better, ratio, best_p)
            best_x1 = torch.where(better.view(view), x1, best_x1); best_x2 = torch.where(better.view(view), x2, best_x2)
        if t == steps: break
        gm, gh = torch.autograd.grad(torch.where(ok, ratio, 0.0).sum(), (m, h))
        with torch.no_grad():
            lr = 0.2 * (1 - t / steps) + 0.02
            gm = torch.nan_to_num(gm, 0.0, 0.0, 0.0); gh = torch.nan_to_num(gh, 0.0, 0.0, 0.0)
            hn = h.flatten(1).norm(dim=1).view(view)
            m = m + lr * gm / gm.flatten(1).norm(dim=1).clamp_min(1e-300).view(view)
            h = h + lr * hn * gh / gh.flatten(1).norm(dim=1).clamp_min(1e-300).view(view)
            hn = h.flatten(1).norm(dim=1).view(view)     # keep ||x1 - x2|| = 2 ||h|| >= R_MIN
            h = torch.where(hn < R_MIN / 2, h / hn.clamp_min(1e-300) * (R_MIN / 2), h)
            m = m.detach(); h = h.detach()
    i = int(best_p.argmax())
    return {'jacobian': (best_j[0], best_j[1]), 'pair': (best_p[i].item(), best_x1[i], best_x2[i])}


_CACHE = {}


def _attained_cached(seed, budget=1):
    if (seed, budget) not in _CACHE:
        model, shape, train = build_net(seed)
        _CACHE[seed, budget] = attained(model, shape, train, seed, budget)
    return _CACHE[seed, budget]


# ------------------------------------------------------------------------------------------------ checks
def _call(fname, fn, *args, ctx='', **kwargs):
    """fn(*args) -> result, or None for a refusal by ValueError/TypeError whose message starts with '<fname>: '. The global
    RNG (random starts of power iterations and of the lower bound's ascent) is seeded, so a run can be reproduced alone."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        if not str(e).startswith(f"{fname}: "):
            pytest.fail(f"{fname} refused with a message that does not start with '{fname}: ': "
                        f"{type(e).__name__}: {e}\n{ctx}")
        return None
    except Exception as e:
        pytest.fail(f"{fname} raised {type(e).__name__} (only a ValueError/TypeError refusal is allowed): {e}\n{ctx}")


def _as_float(fname, bound, ctx):
    if not isinstance(bound, torch.Tensor) or bound.numel() != 1:
        pytest.fail(f"{fname} returned {bound!r}, not a one-element tensor\n{ctx}")
    b = bound.item()
    if not (math.isfinite(b) and b >= 0):
        pytest.fail(f"{fname} returned {b}: a certified bound must be finite and >= 0 (else refuse)\n{ctx}")
    return b


def _fits(value, bound):
    return value <= bound * (1 + RTOL) + ATOL


def _assert_sound(fname, b, att, ctx):
    jv, jx = att['jacobian']
    assert _fits(jv, b), (f"{fname} = {b:.9g} < {jv:.9g} = ||J_f(x)||_2 attained at x = {jx.flatten().tolist()}\n{ctx}")
    pv, x1, x2 = att['pair']
    assert _fits(pv, b), (f"{fname} = {b:.9g} < {pv:.9g} = ||f(x1)-f(x2)||/||x1-x2|| attained at ||x1-x2|| = "
                          f"{(x1 - x2).norm().item():.3g}, x1 = {x1.flatten().tolist()}, x2 = {x2.flatten().tolist()}\n{ctx}")


def check_upper_bound(seed, budget=1):
    model, shape, train = build_net(seed)
    ctx = describe(seed, model, shape, train)
    bound = _call('lipschitz_upper_bound', lipnotes.certificates.lipschitz_upper_bound, model, shape, ctx=ctx)
    if bound is None: return
    _assert_sound('lipschitz_upper_bound', _as_float('lipschitz_upper_bound', bound, ctx), _attained_cached(seed, budget), ctx)


def check_frobenius(seed, budget=1):
    model, shape, train = build_net(seed)
    ctx = describe(seed, model, shape, train)
    bound = _call('frobenius_lipschitz_bound', lipnotes.norms.frobenius_lipschitz_bound, model, ctx=ctx)
    if bound is None: return
    _assert_sound('frobenius_lipschitz_bound', _as_float('frobenius_lipschitz_bound', bound, ctx),
                  _attained_cached(seed, budget), ctx)


def check_certify(seed, budget=1):
    model, shape, train = build_net(seed)
    ctx = describe(seed, model, shape, train)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed + 31), dtype=F64)
    cert = _call("certify", lipnotes.tight.certify, model, x, ctx=ctx, steps=3 if budget == 1 else 10, n_iter=2)
    if cert is None: return
    lower = cert.lower.item()
    upper = _as_float('certify', cert.upper, ctx)
    assert math.isfinite(lower) and lower >= 0, f"certify: lower = {lower}\n{ctx}"
    assert _fits(lower, upper), f"certify: lower {lower:.9g} > upper {upper:.9g}\n{ctx}"
    _assert_sound('certify (upper)', upper, _attained_cached(seed, budget), ctx)
    if not _stochastic(train):                           # the lower bound is a true ||J v|| at its point
        jv, _ = _jacobian_norm(model, cert.point.detach().to(F64))
        assert _fits(lower, jv), f"certify: lower {lower:.9g} > ||J_f(point)||_2 = {jv:.9g} at its own point\n{ctx}"


# ------------------------------------------------------------------------------------------------ randomized tests
@pytest.fixture(autouse=True)
def _one_thread():
    "Tiny nets: one thread is fastest and keeps results independent of the thread count."
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


SEEDS = list(range(N_DEFAULT))
SLOW_SEEDS = list(range(10_000, 10_000 + N_SLOW))
SINGLE_SEEDS = list(range(SINGLE, SINGLE + N_SINGLE))
SLOW_SINGLE_SEEDS = list(range(SINGLE + 10_000, SINGLE + 10_000 + N_SLOW))


@pytest.mark.parametrize("seed", SEEDS)
def test_upper_bound_sound(seed): check_upper_bound(seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_frobenius_bound_sound(seed): check_frobenius(seed)


@pytest.mark.parametrize("seed", SEEDS[::2])           # certify runs the lower bound's ascent too: half the nets
def test_certify_sound(seed): check_certify(seed)


@pytest.mark.parametrize("seed", SINGLE_SEEDS)
def test_upper_bound_sound_one_layer(seed): check_upper_bound(seed)


@pytest.mark.parametrize("seed", SINGLE_SEEDS)
def test_frobenius_bound_sound_one_layer(seed): check_frobenius(seed)


def _check_many(check, seeds, budget=2):
    "Run `check` on every seed with a larger search budget; list every failure (each names its seed and net)."
    failures = []
    for seed in seeds:
        try:
            check(seed, budget)
        except (AssertionError, pytest.fail.Exception) as e:
            failures.append(str(e))
    assert not failures, f"{len(failures)} of {len(seeds)} nets:\n\n" + "\n\n".join(failures[:10])


SLOW_CHUNKS = [(SLOW_SEEDS + SLOW_SINGLE_SEEDS)[i:i + 50] for i in range(0, 2 * N_SLOW, 50)]
CHUNK_IDS = [f"{c[0]}-{c[-1]}" for c in SLOW_CHUNKS]


@pytest.mark.slow
@pytest.mark.parametrize("seeds", SLOW_CHUNKS, ids=CHUNK_IDS)
def test_upper_bound_sound_slow(seeds): _check_many(check_upper_bound, seeds)


@pytest.mark.slow
@pytest.mark.parametrize("seeds", SLOW_CHUNKS, ids=CHUNK_IDS)
def test_frobenius_bound_sound_slow(seeds): _check_many(check_frobenius, seeds)


@pytest.mark.slow
@pytest.mark.parametrize("seeds", SLOW_CHUNKS[:N_SLOW // 50], ids=CHUNK_IDS[:N_SLOW // 50])
def test_certify_sound_slow(seeds): _check_many(check_certify, seeds[::4])


SCALAR_ACTIVATIONS = [a for a in ACTIVATIONS if 'Softmax' not in a[0] and 'GroupSort' not in a[0]]


@pytest.mark.parametrize("name, make, trains", SCALAR_ACTIVATIONS, ids=[a[0] for a in SCALAR_ACTIVATIONS])
def test_activation_scan(name, make, trains):
    """x -> act(1 * x + 0) on a grid of step 5e-4 over [-40, 40]: the largest |act'| (autograd) and the largest
    difference quotient of neighbours (which sees a jump) must not exceed either bound (both are tight here: the
    Linear(1, 1) has ||W||_2 = ||W||_F = 1); an activation with no Lipschitz constant must be refused."""
    lin = nn.Linear(1, 1)
    with torch.no_grad(): lin.weight.fill_(1.0); lin.bias.zero_()
    model = nn.Sequential(lin, make(random.Random(0), 1)).double().eval()
    if trains: model[1].train()
    f = _fixed_noise(model, trains, 0)
    x = torch.linspace(-40, 40, 160_001, dtype=F64).reshape(-1, 1).requires_grad_(True)
    y = f(x)
    (d,) = torch.autograd.grad(y.sum(), x)               # elementwise: the gradient of the sum is the slope
    with torch.no_grad():
        slopes = d.abs()[torch.isfinite(d)]
        value, how = slopes.max().item(), f"|act'(x)| at x = {x[int(d.abs().nan_to_num(-1.0).argmax())].item():.6g}"
        if not trains:                                   # neighbours are two inputs of one function (RReLU draws per position)
            q = ((y[1:] - y[:-1]).abs() / (x[1:] - x[:-1])).flatten()
            q = torch.where(torch.isfinite(q), q, 0.0)
            if q.max() > value:
                i = int(q.argmax()); value, how = q[i].item(), f"(act(x2) - act(x1)) / (x2 - x1) at x1 = {x[i].item():.6g}"
    _sound_or_refused(model, (1,), value, how)


def _certify_activation(name, make, trains, steps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), make(random.Random(0), 4), nn.Linear(4, 2)).double().eval()
    if trains: model[1].train()
    ctx = f"input_shape=(3,)\n{model!r}" + ("  (activation in train mode)" if trains else "")
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    cert = _call('certify', lipnotes.tight.certify, model, x, ctx=ctx, steps=steps, n_iter=2)
    if cert is None: return
    lower, upper = cert.lower.item(), _as_float('certify', cert.upper, ctx)
    assert math.isfinite(lower) and _fits(lower, upper), f"certify: lower {lower} > upper {upper}\n{ctx}"
    if not trains:
        jv, _ = _jacobian_norm(model, cert.point.detach().to(F64))
        assert _fits(lower, jv), f"certify: lower {lower:.9g} > ||J_f(point)||_2 = {jv:.9g} at its own point\n{ctx}"


_FIRST_OF_EACH = [a for i, a in enumerate(ACTIVATIONS) if a[0].split('(')[0] not in {b[0].split('(')[0] for b in ACTIVATIONS[:i]}
                  or a[2]]                              # one of each class, and each train-mode one


@pytest.mark.parametrize("name, make, trains", _FIRST_OF_EACH, ids=[a[0] for a in _FIRST_OF_EACH])
def test_certify_every_activation(name, make, trains):
    """certify on Linear -> activation -> Linear: a result with lower <= upper and lower <= ||J|| at its point, or a
    refusal naming certify (never an error from deep in torch, e.g. a missing double derivative or vmap rule)."""
    _certify_activation(name, make, trains, steps=2)


@pytest.mark.slow
@pytest.mark.parametrize("name, make, trains", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_certify_every_activation_slow(name, make, trains):
    _certify_activation(name, make, trains, steps=10)


def _pool_geometries(cls):
    "Every geometry of a pooling class over small arguments, int and tuple forms, padding, dilation, ceil_mode and options."
    n = 1 if cls.__name__.endswith('1d') else 2
    if cls.__name__.startswith('Adaptive'):
        for out in ([1, 2, 3, 4, 5, 8] if n == 1 else [1, 2, 4, 5, (2, 5), (4, 3), (7, 1)]):
            yield cls(out)
        return
    forms = [lambda v: v, lambda v: (v,) * n]            # int (torch repeats it over the dimensions) and tuple
    for k in (1, 2, 3):
        for s in (None, 1, 2, 3):
            for p in range(k // 2 + 1):
                for form in forms:
                    for ceil in (False, True):
                        if cls in (nn.MaxPool1d, nn.MaxPool2d):
                            for d in (1, 2):
                                yield cls(form(k), None if s is None else form(s), form(p), form(d), ceil_mode=ceil)
                        else:
                            for cip in (True, False):
                                extra = {} if n == 1 else {'divisor_override': None if (k + p) % 2 else 1}
                                yield cls(form(k), None if s is None else form(s), form(p), ceil, cip, **extra)
    if n == 2:                                           # anisotropic
        for k, s, p in (((1, 3), (1, 1), (0, 1)), ((3, 2), (2, 1), (1, 0)), ((2, 3), 1, (1, 1)), (3, (1, 2), (1, 0))):
            yield cls(k, s, p)


def _exact_pool_constant(model, shape):
    """The Lipschitz constant of a pooling layer, exactly. Max pooling: ||f(x) - f(y)||^2 <= sum_i w_i (x_i - y_i)^2 with w_i
    the number of windows holding input i, and a unit spike in the busiest input attains sqrt(max w_i). Average pooling is
    linear: ||J||_2 of its dense matrix."""
    n = math.prod(shape)
    with torch.no_grad():
        cols = (model(torch.eye(n, dtype=F64).reshape(n, *shape)) - model(torch.zeros(1, *shape, dtype=F64))).flatten(1)
    if any(isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)) for m in model.modules()):
        return cols.norm(dim=1).max().item(), "unit spike in the input lying in the most windows"
    return torch.linalg.matrix_norm(cols.T, 2).item(), "||J||_2 of the linear map"


POOLS = [nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d]


@pytest.mark.parametrize("cls", POOLS, ids=[c.__name__ for c in POOLS])
def test_pooling_geometry_sweep(cls):
    """Every small geometry of each pooling class, behind a 1 x 1 identity conv (||W||_2 = ||W||_F = 1, so both bounds are
    tight), on a non-square input: each bound is >= the exact constant or refuses. All failures are listed."""
    n = 1 if cls.__name__.endswith('1d') else 2
    shape = (1, 9) if n == 1 else (1, 6, 7)
    failures, tried = [], 0
    for pool in _pool_geometries(cls):
        conv = (nn.Conv1d if n == 1 else nn.Conv2d)(1, 1, 1, bias=False)
        with torch.no_grad(): conv.weight.fill_(1.0)
        model = nn.Sequential(conv, pool).double().eval()
        try:
            value, how = _exact_pool_constant(model, shape)
        except RuntimeError:                             # a geometry torch itself rejects for this input
            continue
        tried += 1
        try:
            _sound_or_refused(model, shape, value, how)
        except (AssertionError, pytest.fail.Exception) as e:
            failures.append(str(e).split("\n")[0] + f"  [{pool!r}]")
    assert tried >= 6
    assert not failures, f"{len(failures)} of {tried} {cls.__name__} geometries on input {shape}:\n" + "\n".join(failures[:40])


def _conv_geometries(n):
    "Every small Conv{n}d geometry: channels and groups, kernel, stride, dilation, padding (int, 'same', 'valid'), padding mode."
    for cin, cout, groups in ((1, 1, 1), (2, 2, 2), (2, 4, 2), (3, 2, 1)):
        for k in (1, 2, 3):
            for s in (1, 2):
                for d in (1, 2):
                    for pad in (0, 1, 2, 'same', 'valid'):
                        for mode in ('zeros', 'circular', 'reflect', 'replicate'):
                            if pad == 'same' and s > 1: continue           # torch refuses it
                            yield dict(in_channels=cin, out_channels=cout, kernel_size=k, stride=s, dilation=d,
                                       padding=pad, padding_mode=mode, groups=groups)


def _conv_sweep(n, geometries, seed):
    """Each geometry with seeded random weights (and a bias) on a non-square input: each bound is >= ||J||_2 of the affine
    map (exact: the Jacobian is the conv's matrix) or refuses. Returns (number tried, failures)."""
    g = torch.Generator().manual_seed(seed)
    failures, tried = [], 0
    for kw in geometries:
        conv = (nn.Conv1d if n == 1 else nn.Conv2d)(**kw)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)); conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
        model = nn.Sequential(conv).double().eval()
        shape = (kw['in_channels'], 7) if n == 1 else (kw['in_channels'], 5, 6)
        try:
            value, _ = _jacobian_norm(model, torch.zeros(shape, dtype=F64))
        except RuntimeError:                             # a geometry torch itself rejects for this input
            continue
        tried += 1
        try:
            _sound_or_refused(model, shape, value, "||J||_2 of the affine map")
        except (AssertionError, pytest.fail.Exception) as e:
            failures.append(str(e).split("\n")[0] + f"  [{conv!r} on {shape}]")
    return tried, failures


@pytest.mark.parametrize("n", [1, 2])
def test_conv_geometry_sweep(n):
    "A seeded sample of the conv geometries (all of them in the slow run). All failures are listed."
    geometries = list(_conv_geometries(n))
    sample = random.Random(n).sample(geometries, 40 if n == 2 else 25)
    tried, failures = _conv_sweep(n, sample, n)
    assert tried >= 10
    assert not failures, f"{len(failures)} of {tried} Conv{n}d geometries:\n" + "\n".join(failures[:40])


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
def test_conv_geometry_sweep_slow(n):
    tried, failures = _conv_sweep(n, _conv_geometries(n), 100 + n)
    assert not failures, f"{len(failures)} of {tried} Conv{n}d geometries:\n" + "\n".join(failures[:40])


def _types(seeds):
    out = set()
    for s in seeds:
        model, _, train = build_net(s)
        out |= {type(m) for m in model.modules()}
    return out


def test_generator_covers_the_layers():
    "The default run draws every layer kind the issue names (so that the randomized tests are not vacuous)."
    types = _types(SEEDS + SINGLE_SEEDS)
    need = {nn.Linear, nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.BatchNorm1d,
            nn.BatchNorm2d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Sequential, Residual, ConvResidual}
    # every activation: test_activation_scan; every pooling geometry: test_pooling_geometry_sweep
    assert need <= types, f"the default seeds never draw {sorted(t.__name__ for t in need - types)}"


@pytest.mark.slow
def test_generator_covers_every_layer_slow():
    types = _types(SLOW_SEEDS + SLOW_SINGLE_SEEDS)
    need = {nn.Linear, nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.LPPool1d, nn.LPPool2d, nn.BatchNorm1d,
            nn.BatchNorm2d, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
            nn.FeatureAlphaDropout, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Mish, nn.GELU, nn.Hardswish,
            nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.LogSigmoid, nn.SELU, nn.Softmax, nn.ELU, nn.CELU,
            nn.LeakyReLU, nn.Softplus, nn.Hardtanh, nn.PReLU, nn.RReLU, nn.Hardshrink, nn.Threshold, nn.LogSoftmax,
            nn.Sequential, Residual, ConvResidual, Scale, MaxMin, Flip}
    assert need <= types, f"the slow seeds never draw {sorted(t.__name__ for t in need - types)}"


# ------------------------------------------------------------------------------------------------ hand-made regressions
# Each was unsound at 81a32c6. The attained value is computed here (dense Jacobian or a pair ratio), never typed in; a
# sanity assertion checks that the case attains what it is meant to, so that the regression cannot pass vacuously.
BOUNDS = [('lipschitz_upper_bound', lambda m, s: lipnotes.certificates.lipschitz_upper_bound(m, s)),
          ('frobenius_lipschitz_bound', lambda m, s: lipnotes.norms.frobenius_lipschitz_bound(m))]


def _sound_or_refused(model, shape, value, how):
    "Each bound function either refuses (ValueError/TypeError naming itself) or returns a finite bound >= value."
    ctx = f"input_shape={shape}\n{model!r}"
    for fname, fn in BOUNDS:
        bound = _call(fname, fn, model, shape, ctx=ctx)
        if bound is None: continue
        b = _as_float(fname, bound, ctx)
        assert _fits(value, b), f"{fname} = {b:.9g} < {value:.9g} attained ({how})\n{ctx}"


def _spike_ratio(model, shape):
    "max over input coordinates p of ||f(e_p) - f(0)|| / ||e_p||: one unit spike against the zero input."
    n = math.prod(shape)
    with torch.no_grad():
        out = model(torch.eye(n, dtype=F64).reshape(n, *shape)) - model(torch.zeros(1, *shape, dtype=F64))
    return out.flatten(1).norm(dim=1).max().item()


@pytest.mark.parametrize("pool, shape, windows", [
    (nn.MaxPool2d(3, stride=1), (1, 5, 5), 9),           # int arguments: the centre pixel lies in 3 x 3 windows
    (nn.MaxPool2d(3, 2, 1), (1, 6, 6), 4),               # the ResNet stem: pixel (1, 1) lies in 2 x 2 windows
    (nn.MaxPool2d((3, 3), (1, 1)), (1, 5, 5), 9),
    (nn.MaxPool2d(2, stride=1, dilation=2), (1, 6, 6), 4),
    (nn.MaxPool2d(3, stride=2, ceil_mode=True), (2, 6, 6), 4),
    (nn.MaxPool1d(3, 1), (1, 7), 3),
    (nn.AdaptiveMaxPool2d(4), (1, 5, 5), 4),             # windows [0,2), [1,3), [2,4), [3,5) overlap
])
def test_regression_maxpool_overlap(pool, shape, windows):
    "A unit spike in a pixel that lies in w windows moves w outputs by 1: ratio sqrt(w). (81a32c6: int k read as 1-D.)"
    model = nn.Sequential(pool).double().eval()
    value = _spike_ratio(model, shape)
    assert value == pytest.approx(math.sqrt(windows), rel=1e-12)
    _sound_or_refused(model, shape, value, f"unit spike in a pixel of {windows} windows")


class AddLin(nn.Module):
    "x + lin(x): one child, but not the child's function."
    def __init__(self, d):
        super().__init__(); self.lin = nn.Linear(d, d)
    def forward(self, x): return x + self.lin(x)


class Times100(nn.Module):
    "100 * lin(x)."
    def __init__(self, d):
        super().__init__(); self.lin = nn.Linear(d, d)
    def forward(self, x): return 100 * self.lin(x)


def _one_child_cases():
    torch.manual_seed(0)
    add, add2 = AddLin(4), AddLin(4)
    with torch.no_grad():
        for a in (add, add2): a.lin.weight.zero_(); a.lin.bias.zero_()
    return [add, Times100(4), nn.Sequential(nn.Linear(4, 4), add2), nn.Sequential(Times100(4), nn.Tanh())]


@pytest.mark.parametrize("case", range(4))
def test_regression_one_child_module(case):
    "A module with one child is not that child (81a32c6: x + lin(x) with lin = 0 got 0; 100 lin(x) got ||W||_F)."
    model = _one_child_cases()[case].double().eval()
    x = torch.randn(4, generator=torch.Generator().manual_seed(case), dtype=F64)
    if case == 3:                                        # where lin(x) = 0, so that tanh is not saturated: J = 100 W
        lin = model[0].lin
        x = torch.linalg.solve(lin.weight.detach(), -lin.bias.detach())
    value, _ = _jacobian_norm(model, x)
    if case == 0: assert value == pytest.approx(1.0, rel=1e-12)
    _sound_or_refused(model, (4,), value, "dense ||J||_2")


def _jump_pair(act, x0, jump, bound):
    "A pair straddling the jump of `act` at x0, so close that the ratio is about 2 (bound + 1)."
    d = abs(jump) / (4 * (bound + 1))
    x = torch.tensor([[x0 - d], [x0 + d]], dtype=F64)
    with torch.no_grad(): y = act(x)
    return ((y[0] - y[1]).abs() / (2 * d)).item()


# (activation, attained(bound)): the slope a returned bound must cover. For an activation that is not Lipschitz (a jump,
# or CELU with alpha < 0 whose slope e^{-x} is unbounded) every finite bound is beaten, so it must be refused.
def _slope_at(act, x0):
    value, _ = _jacobian_norm(nn.Sequential(act), torch.tensor([x0], dtype=F64))
    return value


ACTIVATION_CASES = [
    ("ELU(alpha=-3)", lambda: nn.ELU(alpha=-3.0), lambda b, a: _slope_at(a, -1e-9), 3.0),
    ("ELU(alpha=-0.5)", lambda: nn.ELU(alpha=-0.5), lambda b, a: _slope_at(a, 1.0), 1.0),
    ("ELU(alpha=2.5)", lambda: nn.ELU(alpha=2.5), lambda b, a: _slope_at(a, -1e-9), 2.5),
    ("LeakyReLU(-2)", lambda: nn.LeakyReLU(-2.0), lambda b, a: _slope_at(a, -1.0), 2.0),
    ("LeakyReLU(3)", lambda: nn.LeakyReLU(3.0), lambda b, a: _slope_at(a, -1.0), 3.0),
    ("PReLU(-3)", lambda: nn.PReLU(init=-3.0), lambda b, a: _slope_at(a, -1.0), 3.0),
    ("PReLU(5)", lambda: nn.PReLU(init=5.0), lambda b, a: _slope_at(a, -1.0), 5.0),
    ("CELU(alpha=3)", lambda: nn.CELU(alpha=3.0), lambda b, a: _slope_at(a, 1.0), 1.0),
    ("CELU(alpha=-1)", lambda: nn.CELU(alpha=-1.0), lambda b, a: _slope_at(a, -(math.log(b + 1) + 1)), None),
    ("Softplus(beta=-1)", lambda: nn.Softplus(beta=-1.0), lambda b, a: _slope_at(a, -3.0), 1 / (1 + math.exp(-3.0))),
    ("Softplus(threshold=0.5)", lambda: nn.Softplus(threshold=0.5),
     lambda b, a: _jump_pair(a, 0.5, math.log1p(math.exp(0.5)) - 0.5, b), None),
    ("Softplus(beta=2, threshold=5)", lambda: nn.Softplus(beta=2.0, threshold=5.0),
     lambda b, a: _jump_pair(a, 2.5, math.log1p(math.exp(-5.0)) / 2, b), None),
    ("Softplus(beta=-1, threshold=-1)", lambda: nn.Softplus(beta=-1.0, threshold=-1.0),
     lambda b, a: _jump_pair(a, 1.0, 1 + math.log1p(math.exp(-1.0)), b), None),
    ("Hardtanh(0, 0.5)", lambda: nn.Hardtanh(0.0, 0.5), lambda b, a: _slope_at(a, 0.25), 1.0),
    ("Hardtanh(-3, 2)", lambda: nn.Hardtanh(-3.0, 2.0), lambda b, a: _slope_at(a, -2.0), 1.0),
    ("Softshrink(0)", lambda: nn.Softshrink(0.0), lambda b, a: _slope_at(a, 1.0), 1.0),
    ("Hardshrink(0.5)", lambda: nn.Hardshrink(0.5), lambda b, a: _jump_pair(a, 0.5, 0.5, b), None),
    ("Threshold(0.1, -1)", lambda: nn.Threshold(0.1, -1.0), lambda b, a: _jump_pair(a, 0.1, 1.1, b), None),
]


@pytest.mark.parametrize("name, make, attained_at, expected", ACTIVATION_CASES, ids=[c[0] for c in ACTIVATION_CASES])
def test_regression_activation_parameters(name, make, attained_at, expected):
    """Identity Linear then the activation: a bound must cover the activation's largest slope (81a32c6: ELU(alpha=-3)
    got 1; the slope near 0- is 3), and an activation with a jump or an unbounded slope must be refused."""
    lin = nn.Linear(1, 1)
    with torch.no_grad(): lin.weight.fill_(1.0); lin.bias.zero_()
    act = make().double()
    model = nn.Sequential(lin, act).double().eval()
    ctx = f"input_shape=(1,)\n{model!r}"
    if expected is not None:                             # sanity: the case attains its slope
        assert attained_at(None, act) == pytest.approx(expected, rel=1e-6)
    for fname, fn in BOUNDS:
        bound = _call(fname, fn, model, (1,), ctx=ctx)
        if bound is None: continue
        b = _as_float(fname, bound, ctx)
        value = attained_at(b, act)
        assert _fits(value, b), f"{fname} = {b:.9g} < {value:.9g} attained by {name}\n{ctx}"


@pytest.mark.parametrize("declared", [math.nan, math.inf, -math.inf, -1.0, -1, '3', True, None, 3 + 0j,
                                      torch.tensor(math.nan), torch.tensor([1.0, 2.0])],
                         ids=['nan', 'inf', '-inf', '-1.0', '-1', "'3'", 'True', 'None', 'complex', 'tensor-nan', 'tensor-2'])
def test_regression_declared_constant_refused(declared):
    "A declared lipschitz_constant must be a finite real >= 0; anything else is refused (81a32c6: NaN gave a NaN bound)."
    model = nn.Sequential(nn.Linear(2, 2), Declared(declared)).double().eval()
    x = torch.randn(3, 2, dtype=F64)
    for fname, call in BOUNDS + [('certify', lambda m, s: lipnotes.tight.certify(m, x, steps=2))]:
        with pytest.raises((ValueError, TypeError)) as e:
            call(model, (2,))
        assert str(e.value).startswith(f"{fname}: "), f"{fname}: {type(e.value).__name__}: {e.value}"


def test_wide_circular_padding():
    "Circular padding wider than the kernel's reach wraps one pixel into a window twice (sound at 81a32c6: a guard)."
    conv = nn.Conv2d(1, 1, 3, padding=2, padding_mode='circular', bias=False)
    with torch.no_grad(): conv.weight.fill_(1 / 3)
    model = nn.Sequential(conv).double()
    value, _ = _jacobian_norm(model, torch.zeros(1, 4, 4, dtype=F64))
    _sound_or_refused(model, (1, 4, 4), value, "dense ||J||_2 of a linear map")


def test_core_layers_are_bounded():
    "The layers both bound functions accepted at 81a32c6 stay accepted, so the randomized tests are not vacuous."
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2, 1),
                          nn.Dropout(0.3), nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    shape = (2, 6, 6)
    b = lipnotes.certificates.lipschitz_upper_bound(model, shape).item()
    att = attained(model, shape, [], 0)
    _assert_sound('lipschitz_upper_bound', b, att, f"{model!r}")
    mlp = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 3)).double().eval()
    b = lipnotes.norms.frobenius_lipschitz_bound(mlp).item()
    _assert_sound('frobenius_lipschitz_bound', b, attained(mlp, (5,), [], 0), f"{mlp!r}")


if __name__ == "__main__":                              # python tests/test_soundness.py SEED [SEED ...]
    torch.set_num_threads(1)
    for seed in map(int, sys.argv[1:]):
        model, shape, train = build_net(seed)
        print(describe(seed, model, shape, train))
        att = attained(model, shape, train, seed)
        print(f"attained: dense ||J||_2 = {att['jacobian'][0]:.9g}, pair ratio = {att['pair'][0]:.9g}")
        for fname, fn in BOUNDS:
            try: print(f"{fname}: {fn(model, shape).item():.9g}")
            except Exception as e: print(f"{fname}: {type(e).__name__}: {e}")
