"""lipnotes.gradients: the gradient inequality on random MLPs (hypothesis), equality for one-layer scalar nets, the
per-example norms against plain torch.autograd.grad loops, and bad input refused before any work with the function named."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from lipnotes.gradients import GradientInequality, gradient_inequality, input_grad_norm, param_grad_norm

D = torch.float64
ACTS = {'tanh': nn.Tanh, 'relu': nn.ReLU, 'softplus': nn.Softplus, 'sigmoid': nn.Sigmoid, 'identity': nn.Identity}
FS = {'sum': lambda o, y: o.sum(1), 'logsumexp': lambda o, y: o.logsumexp(1),
      'square': lambda o, y: 0.5 * o.pow(2).sum(1), 'sin': lambda o, y: torch.sin(2 * o).sum(1),
      'cross_entropy': lambda o, y: F.cross_entropy(o, y % o.shape[1], reduction='none')}


def mlp(widths, act, seed, bias=True):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b, bias=bias, dtype=D)] + ([ACTS[act]()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def loop_norms(f, model, x, args=(), create_graph=False):
    "Reference: per example, torch.autograd.grad of f(model(x_i)) w.r.t. x_i and the trainable parameters."
    params = [p for p in model.parameters() if p.requires_grad]
    gx, gp = [], []
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_()
        g = torch.autograd.grad(f(model(xi), *(a[i:i + 1] for a in args)).sum(), [xi, *params], create_graph=create_graph)
        gx.append(g[0].norm()); gp.append(torch.cat([t.flatten() for t in g[1:]]).norm())
    return torch.stack(gx), torch.stack(gp)


# --- the inequality ---------------------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(widths=st.lists(st.integers(1, 32), min_size=2, max_size=6), act=st.sampled_from(sorted(ACTS)),
       f=st.sampled_from(sorted(FS)), ords=st.sampled_from([(2, 2), (2, 'fro'), ('fro', 2), ('fro', 'fro')]),
       bias=st.booleans(), scale=st.sampled_from([0.1, 1.0, 5.0]), seed=st.integers(0, 2**31 - 1))
def test_inequality_on_random_mlps(widths, act, f, ords, bias, scale, seed):
    "Depth 1-5, widths 1-32: no example's left side exceeds its right side by more than 1e-9 relative, layer by layer."
    net = mlp(widths, act, seed, bias)
    x = scale * torch.randn(6, widths[0], dtype=D)
    y = torch.randint(0, 32, (6,))
    r = gradient_inequality(net, x, FS[f], (y,), weight_ord=ords[0], jacobian_ord=ords[1])
    assert r.lhs.shape == r.rhs.shape == (6,) and r.lhs_terms.shape == (6, len(widths) - 1)
    assert (r.lhs_terms <= r.rhs_terms * (1 + 1e-9)).all()
    assert (r.lhs <= r.rhs * (1 + 1e-9)).all()
    assert torch.isfinite(r.lhs).all() and (r.lhs >= 0).all()
    # the right side is the squared parameter-gradient norm, computed independently
    _, gp = loop_norms(FS[f], net, x, (y,))
    assert torch.allclose(r.rhs, gp ** 2, rtol=1e-10, atol=1e-300)


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 32), act=st.sampled_from(sorted(ACTS)), f=st.sampled_from(['sum', 'square', 'sin', 'logsumexp']),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_one_layer_scalar_output_is_an_equality(d, act, f, bias, seed):
    net = nn.Sequential(nn.Linear(d, 1, bias=bias, dtype=D), ACTS[act]())
    torch.manual_seed(seed)
    x = torch.randn(6, d, dtype=D)
    r = gradient_inequality(net, x, FS[f], (torch.zeros(6),))
    assert torch.allclose(r.lhs, r.rhs, rtol=1e-9, atol=1e-300)


def test_per_layer_quantities_against_dense_references():
    net = mlp([5, 7, 4, 3], 'tanh', 0)
    x = torch.randn(4, 5, dtype=D)
    r = gradient_inequality(net, x, FS['logsumexp'], (torch.zeros(4),))
    lin = [net[0], net[2], net[4]]
    hs = [x, net[1](net[0](x)), net[3](net[2](net[1](net[0](x))))]
    for t, m in enumerate(lin):
        assert torch.isclose(r.weight_norms[t], torch.linalg.svdvals(m.weight)[0], rtol=1e-12)
        assert torch.allclose(r.activation_terms[:, t], 1 + hs[t].detach().pow(2).sum(1), rtol=1e-12)
    for i in range(4):
        J2 = torch.autograd.functional.jacobian(lambda z: net[1](net[0](z)), x[i])
        J3 = torch.autograd.functional.jacobian(lambda z: net[3](net[2](net[1](net[0](z)))), x[i])
        ref = torch.stack([torch.tensor(1.0, dtype=D), torch.linalg.svdvals(J2)[0], torch.linalg.svdvals(J3)[0]])
        assert torch.allclose(r.jacobian_norms[i], ref, rtol=1e-10)
    assert r.layers == ['0', '2', '4']


def test_bias_free_layers_use_h_squared_alone():
    net = mlp([3, 4, 2], 'tanh', 1, bias=False)
    x = torch.randn(3, 3, dtype=D)
    r = gradient_inequality(net, x, FS['sum'], (torch.zeros(3),))
    h2 = net[1](net[0](x)).detach()
    assert torch.allclose(r.activation_terms, torch.stack([x.pow(2).sum(1), h2.pow(2).sum(1)], 1), rtol=1e-12)


def test_nested_sequential_and_eval_dropout():
    net = nn.Sequential(nn.Sequential(nn.Linear(3, 5), nn.ReLU()), nn.Dropout(0.5), nn.Linear(5, 2)).double().eval()
    r = gradient_inequality(net, torch.randn(4, 3, dtype=D), lambda o: o.sum(1))
    assert r.layers == ['0.0', '2'] and (r.lhs <= r.rhs * (1 + 1e-12)).all()


@pytest.mark.parametrize('kill', ['relu', 'zero_weight'])
def test_dead_layer_contributes_zero_not_nan(kill):
    net = mlp([4, 6, 3], 'relu', 2)
    with torch.no_grad():
        if kill == 'relu': net[0].bias.fill_(-100.0)
        else: net[2].weight.zero_()
    r = gradient_inequality(net, torch.randn(5, 4, dtype=D), FS['cross_entropy'], (torch.arange(5),))
    assert not r.lhs.isnan().any() and (r.lhs == 0).all() and (r.input_grad_norm == 0).all() and (r.rhs > 0).all()


# --- the per-example norms --------------------------------------------------------------------------------------------
def test_norms_match_autograd_loops_in_float64():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).double()
    net.train(); net(torch.randn(16, 1, 8, 8, dtype=D)); net.eval()         # non-trivial running statistics
    net[0].bias.requires_grad_(False)                                         # frozen: not part of theta
    x, y = torch.randn(9, 1, 8, 8, dtype=D), torch.randint(0, 4, (9,))
    ce = lambda o, t: F.cross_entropy(o, t, reduction='none')
    ref_x, ref_p = loop_norms(ce, net, x, (y,))
    assert torch.allclose(param_grad_norm(ce, net, x, (y,)), ref_p, rtol=1e-10, atol=0)
    assert torch.allclose(input_grad_norm(lambda z, t: ce(net(z), t), x, (y,)), ref_x, rtol=1e-10, atol=0)
    assert torch.allclose(input_grad_norm(lambda z: net(z)[:, 1], x), loop_norms(lambda o: o[:, 1], net, x)[0], rtol=1e-10)


def test_penalties_are_differentiable_like_create_graph():
    "d/dtheta of mean ||grad||^2 matches the double-backward reference, for both norms."
    net = mlp([6, 8, 3], 'tanh', 3)
    x, y = torch.randn(5, 6, dtype=D), torch.randint(0, 3, (5,))
    ce = lambda o, t: F.cross_entropy(o, t, reduction='none')
    ref_x, ref_p = loop_norms(ce, net, x, (y,), create_graph=True)
    ours = [input_grad_norm(lambda z, t: ce(net(z), t), x, (y,)), param_grad_norm(ce, net, x, (y,))]
    for a, b in zip(ours, [ref_x, ref_p]):
        ga = torch.autograd.grad(a.pow(2).mean(), list(net.parameters()))
        gb = torch.autograd.grad(b.pow(2).mean(), list(net.parameters()), retain_graph=True)
        assert all(torch.allclose(u, v, rtol=1e-9, atol=1e-14) for u, v in zip(ga, gb))


def test_zero_gradient_has_zero_norm_and_zero_penalty_gradient():
    net = mlp([3, 2], 'identity', 0)
    with torch.no_grad(): net[0].weight.zero_()
    x = torch.randn(4, 3, dtype=D)
    n = input_grad_norm(lambda z: net(z).sum(1), x)
    assert (n == 0).all()
    g = torch.autograd.grad(n.sum(), net[0].weight)[0]
    assert torch.isfinite(g).all()


# --- bad input --------------------------------------------------------------------------------------------------------
net0 = mlp([3, 4, 2], 'relu', 0)
x0 = torch.randn(5, 3, dtype=D)
s = lambda o: o.sum(1)


@pytest.mark.parametrize('call, exc, words', [
    (lambda: gradient_inequality(nn.Linear(3, 2).double(), x0, s), TypeError, "gradient_inequality: model must be an nn.Sequential"),
    (lambda: gradient_inequality(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)).double(), x0, s), ValueError,
     "layer '1' (LayerNorm) is not a Linear layer or an elementwise activation"),
    (lambda: gradient_inequality(nn.Sequential(nn.Linear(3, 4), nn.Softmax(1)).double(), x0, s), ValueError, "(Softmax)"),
    (lambda: gradient_inequality(nn.Sequential(nn.Tanh(), nn.Linear(3, 4)).double(), x0, s), ValueError, "first layer must be Linear"),
    (lambda: gradient_inequality(nn.Sequential(nn.Linear(3, 4), nn.PReLU()).double(), x0, s), ValueError, "(PReLU) has parameters"),
    (lambda: gradient_inequality(nn.Sequential(nn.Linear(3, 4), nn.Dropout()).double(), x0, s), ValueError, "call model.eval()"),
    (lambda: gradient_inequality(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)).double(), x0, s), ValueError,
     "layer '1' (Linear) takes 5 features but gets 4"),
    (lambda: gradient_inequality(net0, torch.randn(5, 4, dtype=D), s), ValueError, "layer '0' (Linear) takes 3 features but gets 4"),
    (lambda: gradient_inequality(net0, torch.randn(5, 1, 3, dtype=D), s), ValueError, "x must be a batch of feature vectors"),
    (lambda: gradient_inequality(net0, x0, s, weight_ord=1), ValueError, "weight_ord must be 2 (spectral) or 'fro'"),
    (lambda: gradient_inequality(net0, x0, s, jacobian_ord=-2), ValueError, "jacobian_ord must be 2"),
    (lambda: gradient_inequality(net0, x0, lambda o: o.sum()), ValueError, "f must map the model's output batch to one float per example"),
    (lambda: gradient_inequality(net0, x0, lambda o: o), ValueError, "returned shape (1, 2)"),
    (lambda: gradient_inequality(net0, x0, 'sum'), TypeError, "gradient_inequality: f must be callable"),
    (lambda: gradient_inequality(net0, x0.float(), s), ValueError, "is torch.float64 on cpu but x is torch.float32"),
    (lambda: gradient_inequality(net0, torch.ones(5, 3, dtype=torch.int64), s), TypeError, "x must have a real floating dtype"),
    (lambda: gradient_inequality(net0, torch.full((5, 3), float('nan'), dtype=D), s), ValueError, "x contains NaN"),
    (lambda: gradient_inequality(net0, x0, FS['cross_entropy'], (torch.zeros(4),)), ValueError,
     "args[0] must be a tensor with one row per example (first dimension 5), got (4,)"),
    (lambda: gradient_inequality(net0, x0, FS['cross_entropy'], 3), TypeError, "args must be a tuple of tensors"),
    (lambda: param_grad_norm(s, "net", x0), TypeError, "param_grad_norm: model must be a torch.nn.Module"),
    (lambda: param_grad_norm(s, net0, x0[0]), ValueError, "param_grad_norm: x must be a non-empty batch"),
    (lambda: param_grad_norm(lambda o: o.mean(0), net0, x0), ValueError, "param_grad_norm: f must map"),
    (lambda: param_grad_norm(s, nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double(), x0), ValueError, "training mode"),
    (lambda: param_grad_norm(s, nn.Sequential(nn.Linear(3, 2).requires_grad_(False)).double(), x0), ValueError,
     "no parameters that require grad"),
    (lambda: input_grad_norm(lambda z: z.sum(), x0), ValueError, "input_grad_norm: f must map the input batch to one float"),
    (lambda: input_grad_norm(lambda z: z.sum(1).long(), x0), ValueError, "dtype torch.int64"),
    (lambda: input_grad_norm(s, [[1.0, 2.0]]), TypeError, "input_grad_norm: x must be a torch.Tensor"),
    (lambda: input_grad_norm(lambda z: torch.sqrt(z[:, 0]), x0.abs().neg()), ValueError, "the gradient is not finite at examples"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=None) as e:
        call()
    assert words in str(e.value), str(e.value)


def test_nan_parameters_and_shared_layers_are_refused():
    bad = mlp([3, 4, 2], 'relu', 0)
    with torch.no_grad(): bad[2].weight[0, 0] = float('nan')
    for call in (lambda: gradient_inequality(bad, x0, s), lambda: param_grad_norm(s, bad, x0)):
        with pytest.raises(ValueError, match="parameter '2.weight' contains NaN"): call()
    shared = nn.Linear(3, 3, dtype=D)
    with pytest.raises(ValueError, match="is the same module as '0'"):
        gradient_inequality(nn.Sequential(shared, nn.Tanh(), shared), x0, s)


# --- issue 14: the product reading, rounding, low precision, degenerate input ----------------------------------------
def preactivation_jacobians(net, x1):
    "Reference: d z^(t+1) / d x for every Linear layer t, densely from torch.func.jacrev of x -> z^(t+1), one example."
    lins = [m for m in net if isinstance(m, nn.Linear)]
    def upto(k):
        def z(v):
            for m in net:
                v = m(v)
                if m is lins[k]: return v
        return z
    return [torch.func.jacrev(upto(k))(x1) for k in range(len(lins))]


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 16), min_size=2, max_size=5), act=st.sampled_from(sorted(ACTS)),
       f=st.sampled_from(['sum', 'logsumexp', 'square', 'sin']), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_product_reading_against_dense_jacrev_reference(widths, act, f, bias, seed):
    "||W_t J_t||_2 from jacrev + matrix_norm; its terms from a loop's ||grad_x f||; each <= its share, and >= spectral."
    net = mlp(widths, act, seed, bias)
    x = 2 * torch.randn(4, widths[0], dtype=D)
    r = gradient_inequality(net, x, FS[f], (torch.zeros(4),))
    gx, gp = loop_norms(FS[f], net, x, (torch.zeros(4),))
    for i in range(4):
        ref = torch.stack([torch.linalg.matrix_norm(A, 2) for A in preactivation_jacobians(net, x[i])])
        assert torch.allclose(r.product_norms[i], ref, rtol=1e-9, atol=1e-300)
        assert (ref <= r.weight_norms * r.jacobian_norms[i] * (1 + 1e-12)).all()
        terms = torch.where(ref > 0, gx[i] ** 2 * r.activation_terms[i] / ref ** 2, torch.zeros_like(ref))
        assert torch.allclose(r.product_lhs_terms[i], terms, rtol=1e-9, atol=1e-300)
    assert (r.product_lhs_terms <= r.rhs_terms * (1 + 1e-9)).all() and (r.product_lhs <= gp ** 2 * (1 + 1e-9)).all()
    assert (r.product_lhs_terms >= r.lhs_terms * (1 - 1e-12)).all()


def test_product_reading_is_larger_and_valid_on_200_random_nets():
    "The issue's check: lhs <= rhs on every example of 200 random nets; the product reading's left side is larger."
    g = torch.Generator().manual_seed(14)
    worst, gains = 0.0, []
    for k in range(200):
        depth = int(torch.randint(2, 5, (), generator=g))
        widths = torch.randint(2, 17, (depth + 1,), generator=g).tolist()
        net = mlp(widths, sorted(ACTS)[k % 5], k)
        x = 2 * torch.randn(6, widths[0], dtype=D, generator=g)
        r = gradient_inequality(net, x, FS[['sum', 'logsumexp', 'square'][k % 3]], (torch.zeros(6),))
        _, gp = loop_norms(FS[['sum', 'logsumexp', 'square'][k % 3]], net, x, (torch.zeros(6),))
        assert (r.product_lhs <= gp ** 2 * (1 + 1e-9)).all()
        worst = max(worst, (r.product_lhs / gp ** 2)[gp > 0].max().item())
        gains.append(r.product_lhs[r.lhs > 0] / r.lhs[r.lhs > 0])
    gains = torch.cat(gains)
    assert worst <= 1 + 1e-9 and (gains >= 1 - 1e-12).all() and gains.median() > 1.2


def test_readings_are_partially_ordered_and_sf_fs_incomparable():
    torch.manual_seed(0)
    for seed in range(20):
        net = mlp([5, 7, 6, 3], 'tanh', seed)
        x = torch.randn(5, 5, dtype=D)
        rs = {o: gradient_inequality(net, x, FS['logsumexp'], (torch.zeros(5),), weight_ord=o[0], jacobian_ord=o[1])
              for o in [(2, 2), (2, 'fro'), ('fro', 2), ('fro', 'fro')]}
        P, S = rs[(2, 2)].product_lhs_terms, rs[(2, 2)].lhs_terms
        SF, FS_, FF = rs[(2, 'fro')].lhs_terms, rs[('fro', 2)].lhs_terms, rs[('fro', 'fro')].lhs_terms
        t = 1 + 1e-12
        assert (S <= P * t).all() and (SF <= S * t).all() and (FS_ <= S * t).all() and (FF <= SF * t).all() and (FF <= FS_ * t).all()
    scalar_input = mlp([1, 8, 8, 3], 'tanh', 1)
    x1 = torch.randn(6, 1, dtype=D)
    sf, fs = [gradient_inequality(scalar_input, x1, FS['sum'], (torch.zeros(6),), weight_ord=w, jacobian_ord=j).lhs
              for w, j in ((2, 'fro'), ('fro', 2))]
    assert (sf > fs).all()
    one = mlp([5, 3], 'tanh', 2)
    x5 = torch.randn(6, 5, dtype=D)
    sf, fs = [gradient_inequality(one, x5, FS['sum'], (torch.zeros(6),), weight_ord=w, jacobian_ord=j).lhs
              for w, j in ((2, 'fro'), ('fro', 2))]
    assert (fs > sf).all()


def test_last_layer_attains_the_product_reading():
    "With f = u.o, u the top left singular vector of W_l J_l, the last term equals its share: no smaller N_l is valid."
    net = mlp([4, 6, 3], 'tanh', 7)
    x = torch.randn(1, 4, dtype=D)
    A = preactivation_jacobians(net, x[0])[-1]
    u = torch.linalg.svd(A).U[:, 0]
    r = gradient_inequality(net, x, lambda o: o @ u)
    assert torch.isclose(r.product_lhs_terms[0, -1], r.rhs_terms[0, -1], rtol=1e-10)
    assert r.product_lhs_terms[0, -1] / 0.99 ** 2 > r.rhs_terms[0, -1]


def cancelling_net(seed):
    "1-6-3-2 with W_2 W_1 = 0 up to rounding, so J_3 and W_2 J_2 are rounding noise."
    g = torch.Generator().manual_seed(seed)
    w1, W2 = torch.randn(6, 1, generator=g, dtype=D), torch.randn(3, 6, generator=g, dtype=D)
    net = nn.Sequential(nn.Linear(1, 6, dtype=D), nn.Identity(), nn.Linear(6, 3, dtype=D), nn.Tanh(), nn.Linear(3, 2, dtype=D))
    with torch.no_grad(): net[0].weight.copy_(w1); net[2].weight.copy_(W2 - (W2 @ w1) @ w1.T / (w1.T @ w1))
    return net, torch.randn(4, 1, generator=g, dtype=D)


def test_rounding_cancellation_keeps_every_term_below_its_share():
    "Was 925x above the share (spectral reading) at HEAD 81a32c6: a ratio of two rounding noises."
    for seed in range(200):
        net, x = cancelling_net(seed)
        r = gradient_inequality(net, x, lambda o: o[:, 0] - 0.5 * o[:, 1])
        assert (r.lhs_terms <= r.rhs_terms).all(), seed
        assert (getattr(r, 'product_lhs_terms', r.lhs_terms) <= r.rhs_terms).all(), seed


@pytest.mark.parametrize('dtype, rtol', [(torch.bfloat16, 2 ** -8), (torch.float16, 2 ** -10)])
def test_gradient_inequality_in_low_precision_against_float64(dtype, rtol):
    "Computed in float32, returned in x's dtype: each field is the float64 value of the same weights to the dtype's rounding."
    import copy
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)
    x = torch.randn(7, 5).to(dtype)
    y = torch.randint(0, 3, (7,))
    ce = lambda o, t: F.cross_entropy(o, t, reduction='none')
    r = gradient_inequality(net, x, ce, (y,))
    ref_net = copy.deepcopy(net).double()
    ref = gradient_inequality(ref_net, x.double(), ce, (y,))
    assert r.layers == ref.layers
    # The left-side terms carry gradient_inequality's float32 rounding allowance, gamma ||W_t||_F prod_s ||W_s||_F
    # max|g_s'| added to N_t (slopes <= 1 for tanh and ReLU): it may lower a term by a factor (1 + gamma P_t / N_t)^-2.
    lins = [m for m in ref_net if isinstance(m, nn.Linear)]
    fro = torch.stack([torch.linalg.matrix_norm(m.weight, 'fro') for m in lins])
    P = fro * torch.cat([torch.ones(1, dtype=D), torch.cumprod(fro, 0)[:-1]])
    gamma = 4 * torch.finfo(torch.float32).eps * (5 + sum(m.out_features for m in lins) + len(lins))
    low = {'lhs_terms': 2 * gamma * P / (ref.weight_norms * ref.jacobian_norms), 'product_lhs_terms': 2 * gamma * P / ref.product_norms}
    low['lhs'], low['product_lhs'] = low['lhs_terms'].max(1).values, low['product_lhs_terms'].max(1).values
    for name in GradientInequality._fields:
        if name == 'layers': continue
        a, b = getattr(r, name).double(), getattr(ref, name)
        assert getattr(r, name).dtype == dtype and getattr(r, name).device == x.device
        # rounding to the nearest `dtype` number is <= 2^-9 (bf16) / 2^-11 (fp16) relative; float32 work adds ~1e-6
        assert (a <= b * (1 + rtol)).all() and (a >= b * (1 - rtol - low.get(name, 0))).all(), \
            (name, ((a - b).abs() / b.abs()).max())
    assert (r.lhs <= r.rhs).all() and (r.product_lhs <= r.rhs).all()


def test_low_precision_overflow_is_refused():
    net = nn.Sequential(nn.Linear(2, 2), nn.Identity(), nn.Linear(2, 1)).to(torch.float16)
    with torch.no_grad(): net[0].weight.fill_(300.0); net[2].weight.fill_(300.0)
    x = torch.full((2, 2), 100.0, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^gradient_inequality: a result .* overflows x's dtype torch.float16"):
        gradient_inequality(net, x, lambda o: o[:, 0])


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_per_example_norms_in_low_precision(dtype):
    "input_grad_norm and param_grad_norm run in the caller's dtype: within a few units of its rounding of float64."
    import copy
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    x = torch.randn(5, 6).to(dtype)
    n64 = copy.deepcopy(net).double()
    gi = input_grad_norm(lambda z: net(z).logsumexp(1), x)
    gp = param_grad_norm(lambda o: o.logsumexp(1), net, x)
    ri, rp = loop_norms(lambda o: o.logsumexp(1), n64, x.double())
    eps = torch.finfo(dtype).eps
    assert gi.dtype == gp.dtype == dtype
    # every operation rounds once in `dtype`: a depth-2 net's forward and backward chain ~10 roundings
    assert torch.allclose(gi.double(), ri, rtol=16 * eps, atol=0) and torch.allclose(gp.double(), rp, rtol=16 * eps, atol=0)


def test_input_grad_norm_model_dtype_mismatch_is_a_clear_error():
    "Was torch's RuntimeError 'mat1 and mat2 must have the same dtype' at HEAD 81a32c6."
    net = nn.Sequential(nn.Linear(3, 2))                         # float32
    with pytest.raises(ValueError, match=r"^input_grad_norm: f fails on the first example of x.*torch.float64.*model.to\(x\)"):
        input_grad_norm(lambda z: net(z).sum(1), torch.randn(4, 3, dtype=D))


@pytest.mark.parametrize('call', [
    lambda x: input_grad_norm(lambda z: z.sum(1), x),
    lambda x: param_grad_norm(lambda o: o.sum(1), nn.Linear(3, 2, device='meta'), x),
    lambda x: gradient_inequality(nn.Sequential(nn.Linear(3, 2, device='meta')), x, lambda o: o.sum(1))])
def test_meta_tensors_are_refused_by_name(call):
    "Was 'Tensor.item() cannot be called on meta tensors' from deep inside torch at HEAD 81a32c6."
    with pytest.raises(ValueError, match=r"^(input_grad_norm|param_grad_norm|gradient_inequality): x is a meta tensor"):
        call(torch.empty(4, 3, device='meta'))


def test_degenerate_inputs_have_the_right_answer_zero():
    "f constant in x, parameters the output ignores, an f that ignores the model: 0, not autograd's 'does not require grad'."
    x = torch.randn(4, 3, dtype=D)
    net = mlp([3, 4, 2], 'tanh', 0)
    assert (input_grad_norm(lambda z: torch.ones(len(z), dtype=D), x) == 0).all()
    assert (input_grad_norm(lambda z: net(z.detach()).sum(1), x) == 0).all()

    class IgnoresOne(nn.Module):
        def __init__(self):
            super().__init__(); self.used, self.unused = nn.Linear(3, 2, dtype=D), nn.Linear(3, 2, dtype=D)
        def forward(self, z): return self.used(z)
    m = IgnoresOne()
    only_used = param_grad_norm(lambda o: o.sum(1), m, x)
    m.unused.requires_grad_(False)
    assert torch.equal(only_used, param_grad_norm(lambda o: o.sum(1), m, x))
    _, ref = loop_norms(lambda o: o.sum(1), nn.Sequential(m.used), x)
    assert torch.allclose(only_used, ref, rtol=1e-12)

    class Constant(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(3, 2, dtype=D)
        def forward(self, z): return torch.zeros(len(z), 2, dtype=D)
    assert (param_grad_norm(lambda o: o.sum(1), Constant(), x) == 0).all()
    r = gradient_inequality(net, x, lambda o: torch.zeros(len(o), dtype=D))
    assert (r.lhs == 0).all() and (r.rhs == 0).all() and (r.product_lhs == 0).all()


def test_tuple_outputs():
    "A model with a tuple output: f picks the part it needs (param_grad_norm); f itself must return a tensor."
    class Pair(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(3, 2, dtype=D)
        def forward(self, z): return self.lin(z), z
    m, x = Pair(), torch.randn(4, 3, dtype=D)
    _, ref = loop_norms(lambda o: o.sum(1), nn.Sequential(m.lin), x)
    assert torch.allclose(param_grad_norm(lambda o: o[0].sum(1), m, x), ref, rtol=1e-12)
    with pytest.raises(ValueError, match=r"^input_grad_norm: f must map the input batch .* returned tuple"):
        input_grad_norm(lambda z: (z.sum(1), z), x)


# --- ATTACK finding I: the layer walk follows torch's own call path only ----------------------------------------------
def _attack_i_models():
    "The attacker's two models: a Linear whose forward is replaced on the instance, a Sequential whose __iter__ stops early."
    torch.manual_seed(0)
    l2 = nn.Linear(3, 3).double()
    l2.weight.data *= 0.01
    l2.forward = lambda z: F.linear(z, l2.weight, l2.bias) + 2 * z

    class FirstOnly(nn.Sequential):
        def __iter__(self): return iter(list(self._modules.values())[:1])
    return [nn.Sequential(nn.Linear(3, 3), nn.Tanh(), l2).double(),
            FirstOnly(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()]


@pytest.mark.parametrize('model', _attack_i_models(), ids=['instance-forward', 'sequential-iter'])
def test_replaced_call_path_is_refused(model):
    "The old walk read these as plain MLPs and returned lhs > rhs (8.8e4 against 34 for the first); now a clear refusal."
    x = torch.randn(4, 3, dtype=D)
    with pytest.raises(ValueError, match=r"^gradient_inequality: model layer '.*' \(.*\) replaces torch's forward or call path"):
        gradient_inequality(model, x, lambda o: o.sum(1))


def test_refused_models_break_the_inequality_that_the_walk_assumed():
    "Why refusing is right: for the instance-forward model, lhs computed from the Linear reading exceeds the true rhs."
    model = _attack_i_models()[0]
    x = torch.randn(4, 3, dtype=D)
    plain = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double()    # what the walk took it for
    plain.load_state_dict(model.state_dict())
    gx = torch.func.vmap(torch.func.grad(lambda z: model(z[None]).sum()))(x)          # the true model's input gradient
    read = gradient_inequality(plain, x, lambda o: o.sum(1))
    fake_lhs = gx.pow(2).sum(1) * read.lhs / read.input_grad_norm.pow(2)
    true_rhs = torch.stack([sum(g.pow(2).sum() for g in torch.autograd.grad(model(z[None]).sum(), list(model.parameters())))
                            for z in x])
    assert (fake_lhs > true_rhs).all()
