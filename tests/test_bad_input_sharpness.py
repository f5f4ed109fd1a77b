"""Bad-input suite for lipnotes.sharpness (issue 14): for every exported function and class, each class of bad or unusual
input (NaN/inf, empty, wrong rank, int/bool/complex/half dtypes, non-contiguous and expanded tensors, meta tensors, wrong
Python types, out-of-range hyperparameters, train/eval mode) ends either in a ValueError/TypeError whose message starts
with the public name and names the argument, or in a correct result checked against an independent reference
(torch.func.grad / torch.func.hessian + torch.linalg.eigvalsh, a closed form, torch.optim.SGD written out)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipnotes.sharpness import (SAM, GradientNormPenalty, flooding, frozen_batchnorm_statistics, gradient_norm_penalty,
                                hessian_top_eigenvalue)

f64 = torch.float64
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
x = torch.randn(8, 5, dtype=f64)
y = torch.randint(0, 3, (8,))
ce = lambda: F.cross_entropy(net(x), y)
w = torch.randn(4, dtype=f64, requires_grad=True)
meta = lambda *s, **k: torch.empty(*s, device='meta', dtype=f64, **k)
scalar = lambda v, dtype=f64: torch.tensor(v, dtype=dtype)
nan, inf = float('nan'), float('inf')


def params():
    return list(nn.Linear(3, 2).double().parameters())


def sam_step(closure_kind):
    m = nn.Linear(3, 2).double(); opt = SAM(m.parameters(), torch.optim.SGD, lr=0.1); xb = torch.randn(4, 3, dtype=f64)
    def ok():
        opt.zero_grad(); loss = m(xb).pow(2).mean(); loss.backward(); return loss
    closures = {'none': None, 'int': 5, 'returns None': lambda: None,
                'no backward': lambda: (opt.zero_grad(), m(xb).pow(2).mean().detach())[1],
                'nan loss': lambda: (opt.zero_grad(), (m(xb).pow(2).mean() * nan).backward(), scalar(nan))[2],
                'inf loss': lambda: (opt.zero_grad(), (m(xb).pow(2).mean() * inf).backward(), scalar(inf))[2]}
    return opt.step(closures[closure_kind])


def hessian(**kw):
    return hessian_top_eigenvalue(**{'loss_fn': lambda: (w ** 4).sum(), 'params': [w], 'n_iter': 5, **kw})


# (public name, call, exception, argument named in the message)
CASES = [
    # gradient_norm_penalty: loss
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(ce() * nan, net.parameters()), ValueError, 'loss'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(ce() * inf, net.parameters()), ValueError, 'loss'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(F.cross_entropy(net(x), y, reduction='none'), net.parameters()),
     ValueError, 'loss'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(torch.zeros(0, dtype=f64), net.parameters()), ValueError, 'loss'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(scalar(1, torch.int64), net.parameters()), TypeError, 'loss'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(scalar(True, torch.bool), net.parameters()), TypeError, 'loss'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(ce().to(torch.complex128), net.parameters()), TypeError, 'loss'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(1.0, net.parameters()), TypeError, 'loss'),
    # gradient_norm_penalty: params
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(ce(), []), ValueError, 'params'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(ce(), None), TypeError, 'params'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(ce(), [1.0]), TypeError, 'params'),
    ('gradient_norm_penalty', lambda: gradient_norm_penalty(ce(), [torch.ones(3)]), ValueError, 'params'),
    # flooding: loss
    ('flooding', lambda: flooding(scalar(nan), 0.1), ValueError, 'loss'),
    ('flooding', lambda: flooding(scalar(inf), 0.1), ValueError, 'loss'),
    ('flooding', lambda: flooding(scalar(-inf), 0.1), ValueError, 'loss'),
    ('flooding', lambda: flooding(torch.ones(3, dtype=f64), 0.1), ValueError, 'loss'),
    ('flooding', lambda: flooding(torch.ones(0, dtype=f64), 0.1), ValueError, 'loss'),
    ('flooding', lambda: flooding(scalar(1, torch.int64), 0.1), TypeError, 'loss'),
    ('flooding', lambda: flooding(scalar(True, torch.bool), 0.1), TypeError, 'loss'),
    ('flooding', lambda: flooding(scalar(1 + 0j, torch.complex128), 0.1), TypeError, 'loss'),
    ('flooding', lambda: flooding(0.3, 0.1), TypeError, 'loss'),
    # flooding: b
    ('flooding', lambda: flooding(scalar(0.3), -0.1), ValueError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), nan), ValueError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), inf), ValueError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), '0.1'), TypeError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), None), TypeError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), True), TypeError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), 0.1 + 0j), TypeError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), scalar(True, torch.bool)), TypeError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), scalar(-0.1)), ValueError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), scalar(nan)), ValueError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), torch.ones(2)), TypeError, 'b'),
    ('flooding', lambda: flooding(scalar(0.3), meta(())), TypeError, 'b'),
    # frozen_batchnorm_statistics
    ('frozen_batchnorm_statistics', lambda: frozen_batchnorm_statistics('net').__enter__(), TypeError, 'model'),
    ('frozen_batchnorm_statistics', lambda: frozen_batchnorm_statistics(None).__enter__(), TypeError, 'model'),
    ('frozen_batchnorm_statistics', lambda: frozen_batchnorm_statistics(net.parameters()).__enter__(), TypeError, 'model'),
    # GradientNormPenalty and SAM: hyperparameters
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, r=0.0, lr=0.1), ValueError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, r=-1.0, lr=0.1), ValueError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, r=nan, lr=0.1), ValueError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, r=inf, lr=0.1), ValueError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, r='0.1', lr=0.1), TypeError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, r=True, lr=0.1), TypeError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, r=scalar(0.1), lr=0.1), TypeError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, alpha=1.5, lr=0.1), ValueError, 'alpha'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, alpha=-0.1, lr=0.1), ValueError, 'alpha'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, alpha=nan, lr=0.1), ValueError, 'alpha'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, alpha='0.5', lr=0.1), TypeError, 'alpha'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, alpha=None, lr=0.1), TypeError, 'alpha'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, adaptive=1, lr=0.1), TypeError, 'adaptive'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, model='net', lr=0.1), TypeError, 'model'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD(params(), lr=0.1)), TypeError, 'base_optimizer'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), 'SGD', lr=0.1), TypeError, 'base_optimizer'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), nn.Linear, lr=0.1), TypeError, 'base_optimizer'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.RMSprop, lr=0.1), TypeError, 'base_optimizer'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, lr=-0.1), ValueError, 'base_optimizer'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, lr=0.1, nesterov=True), ValueError, 'base_optimizer'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(params(), torch.optim.SGD, lr=0.1, betas=(0.9, 0.99)), TypeError, 'base_optimizer'),
    ('GradientNormPenalty', lambda: GradientNormPenalty([{'params': params(), 'r': -1.0}], torch.optim.SGD, lr=0.1), ValueError, 'r'),
    ('GradientNormPenalty', lambda: GradientNormPenalty([{'params': params(), 'alpha': 2}], torch.optim.SGD, lr=0.1), ValueError, 'alpha'),
    # params
    ('GradientNormPenalty', lambda: GradientNormPenalty([], torch.optim.SGD, lr=0.1), ValueError, 'params'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(None, torch.optim.SGD, lr=0.1), TypeError, 'params'),
    ('GradientNormPenalty', lambda: GradientNormPenalty(torch.ones(3, requires_grad=True), torch.optim.SGD, lr=0.1), TypeError, 'params'),
    ('GradientNormPenalty', lambda: GradientNormPenalty([w * 2], torch.optim.SGD, lr=0.1), ValueError, 'params'),
    ('SAM', lambda: SAM(params(), torch.optim.SGD, rho=0.0, lr=0.1), ValueError, 'rho'),
    ('SAM', lambda: SAM(params(), torch.optim.SGD, rho=nan, lr=0.1), ValueError, 'rho'),
    ('SAM', lambda: SAM(params(), torch.optim.SGD, rho='0.05', lr=0.1), TypeError, 'rho'),
    ('SAM', lambda: SAM(params(), torch.optim.SGD, r=0.1, lr=0.1), TypeError, 'rho'),
    ('SAM', lambda: SAM(params(), torch.optim.SGD, alpha=0.5, lr=0.1), TypeError, 'alpha'),
    ('SAM', lambda: SAM(params(), torch.optim.SGD, adaptive='yes', lr=0.1), TypeError, 'adaptive'),
    ('SAM', lambda: SAM(params(), torch.optim.ASGD, lr=0.1), TypeError, 'base_optimizer'),
    ('SAM', lambda: SAM([], torch.optim.SGD, lr=0.1), ValueError, 'params'),
    # step
    ('SAM.step', lambda: sam_step('none'), ValueError, 'closure'),
    ('SAM.step', lambda: sam_step('int'), TypeError, 'closure'),
    ('SAM.step', lambda: sam_step('returns None'), ValueError, 'closure'),
    ('SAM.step', lambda: sam_step('no backward'), ValueError, 'closure'),
    ('SAM.step', lambda: sam_step('nan loss'), ValueError, 'closure'),
    ('SAM.step', lambda: sam_step('inf loss'), ValueError, 'closure'),
    # hessian_top_eigenvalue
    ('hessian_top_eigenvalue', lambda: hessian(loss_fn='loss'), TypeError, 'loss_fn'),
    ('hessian_top_eigenvalue', lambda: hessian(loss_fn=lambda: w ** 2), ValueError, 'loss_fn'),
    ('hessian_top_eigenvalue', lambda: hessian(loss_fn=lambda: 1.0), ValueError, 'loss_fn'),
    ('hessian_top_eigenvalue', lambda: hessian(loss_fn=lambda: (w ** 2).sum() * nan), ValueError, 'loss_fn'),
    ('hessian_top_eigenvalue', lambda: hessian(loss_fn=lambda: (w ** 2).sum() * inf), ValueError, 'loss_fn'),
    ('hessian_top_eigenvalue', lambda: hessian(loss_fn=lambda: (w ** 2).sum().to(torch.complex128)), ValueError, 'loss_fn'),
    ('hessian_top_eigenvalue', lambda: hessian(n_iter=0), ValueError, 'n_iter'),
    ('hessian_top_eigenvalue', lambda: hessian(n_iter=-3), ValueError, 'n_iter'),
    ('hessian_top_eigenvalue', lambda: hessian(n_iter=2.5), TypeError, 'n_iter'),
    ('hessian_top_eigenvalue', lambda: hessian(n_iter=True), TypeError, 'n_iter'),
    ('hessian_top_eigenvalue', lambda: hessian(params=[]), ValueError, 'params'),
    ('hessian_top_eigenvalue', lambda: hessian(params=None), TypeError, 'params'),
    ('hessian_top_eigenvalue', lambda: hessian(params=[w.detach()]), ValueError, 'params'),
    ('hessian_top_eigenvalue', lambda: hessian(params=[meta(4, requires_grad=True)]), ValueError, 'params'),
    ('hessian_top_eigenvalue', lambda: hessian(params=[torch.ones(2, dtype=torch.complex128, requires_grad=True)]), ValueError, 'params'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[torch.full((4,), nan, dtype=f64)]), ValueError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[torch.tensor([inf, 0, 0, 0], dtype=f64)]), ValueError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[torch.ones(5, dtype=f64)]), ValueError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[torch.ones(4, dtype=f64)] * 2), ValueError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[]), ValueError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[[1.0, 2.0, 3.0, 4.0]]), ValueError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=5), TypeError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[torch.ones(4, dtype=torch.complex128)]), TypeError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[torch.ones(4, dtype=torch.bool)]), TypeError, 'v'),
    ('hessian_top_eigenvalue', lambda: hessian(v=[meta(4)]), TypeError, 'v'),
]


@pytest.mark.parametrize('name, call, exc, arg', CASES, ids=[f'{c[0]}-{i}' for i, c in enumerate(CASES)])
def test_bad_input_is_refused_clearly(name, call, exc, arg, rejects):
    rejects(call, exc, name, arg)


# --- unusual but valid input: a correct result, checked against an independent reference ----------------------------
cube = lambda t: t.pow(3).sum()          # grad 3 t^2, Hessian diag(6 t)


@pytest.mark.parametrize('dtype, rtol', [(f64, 1e-12), (torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_gradient_norm_penalty_keeps_the_callers_dtype(dtype, rtol):
    t = torch.randn(6, dtype=f64)
    p = t.to(dtype).requires_grad_()
    pen = gradient_norm_penalty(cube(p), [p])
    ref = torch.func.grad(cube)(p.detach().double()).norm()
    assert pen.dtype == dtype and torch.isclose(pen.double(), ref, rtol=rtol)


@pytest.mark.parametrize('layout', ['non-contiguous', 'expanded'])
def test_gradient_norm_penalty_non_contiguous_and_expanded_params(layout):
    base = torch.randn(6, 4, dtype=f64) if layout == 'non-contiguous' else torch.randn(1, 4, dtype=f64)
    p = (base.t() if layout == 'non-contiguous' else base.expand(3, 4)).detach().requires_grad_()
    assert not p.is_contiguous()
    pen = gradient_norm_penalty(torch.tanh(p).pow(2).sum(), [p])
    f = lambda q: torch.tanh(q).pow(2).sum()
    ref = torch.func.grad(f)(p.detach().contiguous())
    assert torch.isclose(pen, ref.norm(), rtol=1e-12)
    d = torch.autograd.grad(pen, p)[0]
    assert torch.allclose(d, torch.func.grad(lambda q: torch.func.grad(f)(q).norm())(p.detach().contiguous()), rtol=1e-10)


def test_gradient_norm_penalty_meta_and_degenerate():
    m = meta(3, requires_grad=True)
    out = gradient_norm_penalty((m ** 2).sum(), [m])
    assert out.is_meta and out.shape == ()
    u = torch.randn(3, dtype=f64, requires_grad=True)
    zero = gradient_norm_penalty(cube(w), [u])                       # the loss ignores u: its gradient is 0
    assert zero.item() == 0 and torch.autograd.grad(zero, u)[0].eq(0).all()


@pytest.mark.parametrize('dtype', [f64, torch.float32, torch.float16, torch.bfloat16])
def test_flooding_dtypes_and_b_forms(dtype):
    for value in (0.3, 0.8):
        loss = torch.tensor(value, dtype=dtype, requires_grad=True)
        for b in (0.5, scalar(0.5, torch.float32), scalar(0.5), 1 / 2):
            out = flooding(loss, b)
            expected = abs(loss.item() - 0.5) + 0.5                  # closed form |L - b| + b
            assert out.dtype == dtype and abs(out.item() - expected) <= 1e-2 * expected
            assert torch.autograd.grad(out, loss)[0].item() == (1 if value > 0.5 else -1)
    assert flooding(scalar(0.3), 0).item() == 0.3 and flooding(scalar(0.3), 1).item() == pytest.approx(1.7)
    assert flooding(meta(()), 0.1).is_meta


def bn_model(track=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=track), nn.ReLU()).double()


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_frozen_batchnorm_statistics_modes(mode):
    m = bn_model(); m.train(mode == 'train'); m(torch.randn(8, 4, dtype=f64))
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError):
        with frozen_batchnorm_statistics(m):
            m(torch.randn(8, 4, dtype=f64) * 3 + 2)
            raise RuntimeError('interrupted')                   # restored on an exception too
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in saved.items())
    assert m.training == (mode == 'train')
    if mode == 'train':   # still batch statistics inside: the normalised pre-activations have mean 0
        assert torch.allclose(m[1](m[0](torch.randn(8, 4, dtype=f64))).mean(0), torch.zeros(5, dtype=f64), atol=1e-12)


def test_frozen_batchnorm_statistics_without_buffers_and_on_meta():
    for m in (nn.Linear(3, 2), bn_model(track=False), nn.BatchNorm1d(3, device='meta')):
        with frozen_batchnorm_statistics(m):
            pass


def hand_sam(m, xb, rho, lr):
    "One SAM step over plain SGD, written out."
    ps = list(m.parameters())
    g = torch.autograd.grad(m(xb).pow(2).mean(), ps)
    n = torch.cat([t.flatten() for t in g]).norm()
    with torch.no_grad():
        for p, t in zip(ps, g): p.add_(rho * t / n)
    g2 = torch.autograd.grad(m(xb).pow(2).mean(), ps)
    with torch.no_grad():
        for p, t, d in zip(ps, g, g2): p.sub_(rho * t / n).sub_(lr * d)


@pytest.mark.parametrize('dtype, atol', [(f64, 1e-15), (torch.float32, 1e-6)])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_sam_step_dtype_and_mode(dtype, atol, mode):
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    m(torch.randn(8, 3, dtype=dtype)); m.train(mode == 'train')
    twin = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    twin.load_state_dict(m.state_dict()); twin.train(mode == 'train')
    xb = torch.randn(8, 3, dtype=dtype)
    buffers = {k: v.clone() for k, v in m.state_dict().items() if 'running' in k}
    opt = SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, model=m)
    def closure():
        opt.zero_grad(); loss = m(xb).pow(2).mean(); loss.backward(); return loss
    opt.step(closure)
    with frozen_batchnorm_statistics(twin): hand_sam(twin, xb, 0.05, 0.1)
    for p, q in zip(m.parameters(), twin.parameters()):
        assert p.dtype == dtype and torch.allclose(p, q, rtol=0, atol=atol)
    if mode == 'eval':
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in buffers.items())


def test_sam_half_and_meta_params():
    m = nn.Linear(3, 2).half(); xb = torch.randn(4, 3).half()
    opt = SAM(m.parameters(), torch.optim.SGD, lr=0.1)
    def closure():
        opt.zero_grad(); loss = m(xb).float().pow(2).mean(); loss.backward(); return loss
    ref = nn.Linear(3, 2).float(); ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    opt.step(closure); hand_sam(ref, xb.float(), 0.05, 0.1)
    assert m.weight.dtype == torch.float16 and torch.allclose(m.weight.float(), ref.weight, atol=2e-3)
    mm = nn.Linear(3, 2, device='meta'); opt = SAM(mm.parameters(), torch.optim.SGD, lr=0.1)
    def meta_closure():
        opt.zero_grad(); loss = mm(torch.empty(4, 3, device='meta')).pow(2).mean(); loss.backward(); return loss
    assert opt.step(meta_closure).is_meta


def dense_hessian_top(f, p):
    "The eigenvalue of largest |lambda| of torch.func.hessian(f) by eigvalsh."
    H = torch.func.hessian(f)(p.detach().double().contiguous())
    H = H.reshape(p.numel(), p.numel())
    e = torch.linalg.eigvalsh(H)
    return e[e.abs().argmax()]


@pytest.mark.parametrize('dtype, rtol', [(f64, 1e-10), (torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
def test_hessian_top_eigenvalue_dtypes(dtype, rtol):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, generator=g, dtype=f64); A = A + A.T
    t = torch.randn(5, generator=g, dtype=f64)
    p = t.to(dtype).requires_grad_()
    torch.manual_seed(0)
    est = hessian_top_eigenvalue(lambda: p @ A.to(dtype) @ p / 2, [p], n_iter=300)
    assert est.dtype == dtype and torch.isclose(est.double(), dense_hessian_top(lambda q: q @ A @ q / 2, p), rtol=rtol)


@pytest.mark.parametrize('start', ['non-contiguous', 'expanded', 'int', 'zero', 'float32 for float64'])
def test_hessian_top_eigenvalue_start_vectors(start):
    torch.manual_seed(4)
    p = torch.randn(3, 4, dtype=f64).requires_grad_()
    f = lambda q: torch.tanh(q).pow(2).sum() + 2 * (q[0] * q[1]).sum()      # top |lambda| 3.31, next 2.56
    v = {'non-contiguous': torch.randn(4, 6, dtype=f64).t()[::2], 'expanded': torch.randn(1, 4, dtype=f64).expand(3, 4),
         'int': torch.ones(3, 4, dtype=torch.int64), 'zero': torch.zeros(3, 4, dtype=f64),
         'float32 for float64': torch.randn(3, 4)}[start]
    assert v.shape == p.shape
    est = hessian_top_eigenvalue(lambda: f(p), [p], n_iter=500, v=[v])
    assert est.dtype == f64 and torch.isclose(est, dense_hessian_top(f, p), rtol=1e-8)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_hessian_top_eigenvalue_train_and_eval_mode(mode):
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    m(torch.randn(16, 3, dtype=f64)); m.train(mode == 'train')
    xb, yb = torch.randn(16, 3, dtype=f64), torch.randint(0, 2, (16,))
    names = [k for k, _ in m.named_parameters()]; shapes = [p.shape for p in m.parameters()]
    def flat_loss(z):
        parts, i = {}, 0
        for k, s in zip(names, shapes): parts[k] = z[i:i + s.numel()].reshape(s); i += s.numel()
        return F.cross_entropy(torch.func.functional_call(m, parts, (xb,)), yb)
    z0 = torch.cat([p.detach().flatten() for p in m.parameters()])
    with frozen_batchnorm_statistics(m):
        e = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, z0)); top = e[e.abs().argmax()]
    torch.manual_seed(0)
    with frozen_batchnorm_statistics(m):
        est = hessian_top_eigenvalue(lambda: F.cross_entropy(m(xb), yb), m.parameters(), n_iter=1000)
    assert torch.isclose(est, top, rtol=1e-6), (est, top)
