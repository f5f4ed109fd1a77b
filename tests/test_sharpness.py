"""lipnotes.sharpness: SAM and GradientNormPenalty under DistributedDataParallel (two gloo processes on localhost) match a
single-process run on the global batch; bad input; zero gradients; schedulers and state; BatchNorm buffers."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lipnotes.sharpness import (SAM, GradientNormPenalty, flooding, frozen_batchnorm_statistics, gradient_norm_penalty,
                                hessian_top_eigenvalue)

STEPS, BATCH = 3, 16


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def global_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g)


def make_opt(kind, params):
    if kind == 'SAM': return SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    return GradientNormPenalty(params, torch.optim.SGD, r=0.05, alpha=0.7, lr=0.1, momentum=0.9)


def train(model, opt, x, y):
    for _ in range(STEPS):
        def closure():
            opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); return loss
        opt.step(closure)


def _worker(rank, world, port, kind, out):
    os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'] = '127.0.0.1', str(port)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = make_model()
        ddp = DistributedDataParallel(model)
        x, y = global_batch()
        shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)   # equal shards: DDP's mean is the global mean
        train(ddp, make_opt(kind, ddp.parameters()), x[shard], y[shard])
        torch.save(torch.cat([p.detach().flatten() for p in model.parameters()]), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
def test_ddp_two_processes_match_one_process_on_the_global_batch(kind, tmp_path):
    out = str(tmp_path / 'params')
    mp.spawn(_worker, args=(2, free_port(), kind, out), nprocs=2, join=True)
    model = make_model()
    x, y = global_batch()
    train(model, make_opt(kind, model.parameters()), x, y)
    single = torch.cat([p.detach().flatten() for p in model.parameters()])
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    assert torch.equal(ranks[0], ranks[1])                                   # the processes stay identical
    assert torch.allclose(ranks[0], single, rtol=0, atol=1e-6), (ranks[0] - single).abs().max()
    assert not torch.allclose(single, torch.cat([p.detach().flatten() for p in make_model().parameters()]))


# --- the optimizers ---------------------------------------------------------------------------------------------------
def closure_for(model, opt, x, y):
    def closure():
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); return loss
    return closure


@pytest.mark.parametrize('call, exc, words', [
    (lambda p: SAM(p, torch.optim.SGD, rho=0.0, lr=0.1), ValueError, "SAM: rho must be positive"),
    (lambda p: SAM(p, torch.optim.SGD, rho=-1.0, lr=0.1), ValueError, "SAM: rho must be positive"),
    (lambda p: GradientNormPenalty(p, torch.optim.SGD, r=0.0, lr=0.1), ValueError, "GradientNormPenalty: r must be positive"),
    (lambda p: GradientNormPenalty(p, torch.optim.SGD, alpha=1.5, lr=0.1), ValueError, "alpha must lie in [0, 1]"),
    (lambda p: GradientNormPenalty(p, torch.optim.SGD, alpha=-0.1, lr=0.1), ValueError, "alpha must lie in [0, 1]"),
    (lambda p: SAM(p, torch.optim.SGD(make_model().parameters(), lr=0.1)), TypeError, "SAM: base_optimizer must be an optimizer class"),
    (lambda p: SAM(p, torch.optim.SGD, adaptive='yes', lr=0.1), TypeError, "SAM: adaptive must be a bool"),
    (lambda p: SAM(p, torch.optim.SGD, model='net', lr=0.1), TypeError, "SAM: model must be None or the torch.nn.Module"),
])
def test_bad_construction(call, exc, words):
    with pytest.raises(exc) as e:
        call(make_model().parameters())
    assert words in str(e.value), str(e.value)


def test_bad_closures():
    model = make_model(); x, y = global_batch()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="SAM.step: needs a closure"): opt.step()
    with pytest.raises(ValueError, match="the closure returned None"): opt.step(lambda: None)
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        opt.zero_grad(); opt.step(lambda: F.cross_entropy(model(x), y).detach())


def test_functions_reject_bad_input():
    model = make_model(); x, y = global_batch()
    with pytest.raises(ValueError, match=r"flooding: b must lie in \[0, inf\]"): flooding(torch.tensor(1.0), -0.1)
    with pytest.raises(TypeError, match="flooding: loss must be a torch.Tensor"): flooding(1.0, 0.1)
    with pytest.raises(ValueError, match="gradient_norm_penalty: loss must be a scalar"):
        gradient_norm_penalty(F.cross_entropy(model(x), y, reduction='none'), model.parameters())
    with pytest.raises(ValueError, match="gradient_norm_penalty: params must be a non-empty"):
        gradient_norm_penalty(F.cross_entropy(model(x), y), [])
    with pytest.raises(ValueError, match="hessian_top_eigenvalue: n_iter must be >= 1"):
        hessian_top_eigenvalue(lambda: F.cross_entropy(model(x), y), model.parameters(), n_iter=0)
    with pytest.raises(TypeError, match="frozen_batchnorm_statistics: model must be a torch.nn.Module"):
        with frozen_batchnorm_statistics('net'): pass


@pytest.mark.parametrize('adaptive', [False, True])
def test_zero_gradient_gives_a_finite_step(adaptive):
    model = make_model()
    with torch.no_grad():
        for p in model.parameters(): p.zero_()
    x = torch.zeros(4, 6, dtype=torch.float64)
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1, adaptive=adaptive)
    def closure():
        opt.zero_grad(); loss = (model(x) ** 2).sum(); loss.backward(); return loss    # zero weights, zero x: g = 0
    opt.step(closure)
    assert all(torch.isfinite(p).all() and (p == 0).all() for p in model.parameters())


def test_schedulers_and_state_reach_the_base_optimizer():
    model = make_model(); x, y = global_batch()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(closure_for(model, opt, x, y)); sched.step()
    assert opt.base_optimizer.param_groups[0]['lr'] == pytest.approx(0.05) and opt.param_groups[0]['r'] == 0.05
    state = opt.state_dict()
    assert 'momentum_buffer' in next(iter(state['state'].values()))
    other = SAM(make_model().parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    other.load_state_dict(state)
    assert other.base_optimizer.param_groups[0]['lr'] == pytest.approx(0.05)


def test_adaptive_perturbation_is_asam():
    "ASAM: e = r |w|^2 g / || |w| g ||; with SGD lr = 1 the step is the gradient at theta + e."
    model = make_model(); x, y = global_batch()
    ps = list(model.parameters())
    g = torch.autograd.grad(F.cross_entropy(model(x), y), ps)
    norm = torch.cat([(p.abs() * t).flatten() for p, t in zip(ps, g)]).norm()
    shifted = make_model()
    with torch.no_grad():
        for q, p, t in zip(shifted.parameters(), ps, g): q.add_(0.05 * p.pow(2) * t / norm)
    expected = torch.autograd.grad(F.cross_entropy(shifted(x), y), list(shifted.parameters()))
    before = [p.detach().clone() for p in ps]
    opt = SAM(ps, torch.optim.SGD, rho=0.05, adaptive=True, lr=1.0)
    opt.step(closure_for(model, opt, x, y))
    for b, p, e in zip(before, ps, expected):
        assert torch.allclose(b - p.detach(), e, rtol=1e-12, atol=1e-15)


def test_frozen_batchnorm_statistics_with_cumulative_average():
    bn = nn.BatchNorm1d(3, momentum=None).double()
    bn(torch.randn(8, 3, dtype=torch.float64))
    saved = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    with frozen_batchnorm_statistics(bn):
        out = bn(torch.randn(8, 3, dtype=torch.float64) + 5)
    assert torch.allclose(out.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)   # still batch statistics
    assert all(torch.equal(a, b) for a, b in zip(saved, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))


# --- issue 14, item 9: the wrapper's state after an exception, load_state_dict, add_param_group, copies, GradScaler ----
class Stop(Exception):
    pass


def reference_gradient(model, x, y):
    return torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
@pytest.mark.parametrize('exc', [Stop, KeyboardInterrupt])
def test_an_exception_in_the_second_closure_call_restores_theta_and_g_theta(kind, exc):
    model = make_model(); x, y = global_batch()
    theta = [p.detach().clone() for p in model.parameters()]
    expected = reference_gradient(model, x, y)
    opt = make_opt(kind, model.parameters()); calls = []
    def closure():
        calls.append(1)
        if len(calls) == 2: raise exc('interrupted')
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); return loss
    with pytest.raises(exc): opt.step(closure)
    for p, t, g in zip(model.parameters(), theta, expected):
        assert torch.equal(p.detach(), t)                       # not theta + e
        assert torch.allclose(p.grad, g, rtol=1e-12, atol=1e-15)  # the gradient of the first call
    opt.step(closure_for(model, opt, x, y))                     # and the optimizer still works


def steps_of(opt, model, x, y, n=1):
    for _ in range(n): opt.step(closure_for(model, opt, x, y))


def test_step_lr_after_load_state_dict_acts_on_the_base_optimizer():
    model = make_model(); x, y = global_batch()
    first = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    steps_of(first, model, x, y)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    opt.load_state_dict(first.state_dict())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    steps_of(opt, model, x, y); sched.step()
    assert opt.param_groups is opt.base_optimizer.param_groups
    assert opt.base_optimizer.param_groups[0]['lr'] == pytest.approx(0.01)
    # the step taken is lr = 0.01 times the SAM gradient: compare with SAM over SGD(lr=0.01) from the same point
    twin = make_model()
    with torch.no_grad():
        for q, p in zip(twin.parameters(), model.parameters()): q.copy_(p)
    before = [p.detach().clone() for p in model.parameters()]
    steps_of(opt, model, x, y)
    ref = SAM(twin.parameters(), torch.optim.SGD, rho=0.05, lr=0.01); steps_of(ref, twin, x, y)
    for p, q, b in zip(model.parameters(), twin.parameters(), before):
        assert not torch.equal(p, b) and torch.allclose(p, q, rtol=0, atol=1e-15)


@pytest.mark.parametrize('reload', [False, True])
def test_add_param_group_reaches_the_base_optimizer(reload):
    model = make_model(); x, y = global_batch()
    opt = GradientNormPenalty(list(model.parameters())[:2], torch.optim.SGD, r=0.05, alpha=0.5, lr=0.1)
    if reload: opt.load_state_dict(opt.state_dict())
    last = list(model.parameters())[2:]
    opt.add_param_group({'params': last, 'lr': 0.2, 'alpha': 1.0})
    assert opt.param_groups is opt.base_optimizer.param_groups and len(opt.base_optimizer.param_groups) == 2
    group = opt.base_optimizer.param_groups[1]
    assert group['r'] == 0.05 and group['alpha'] == 1.0 and group['adaptive'] is False and group['momentum'] == 0
    before = [p.detach().clone() for p in last]
    steps_of(opt, model, x, y)
    assert all(not torch.equal(p, b) for p, b in zip(last, before))     # the added group is stepped
    with pytest.raises(ValueError, match=r"^GradientNormPenalty: alpha must lie in \[0, 1\]"):
        opt.add_param_group({'params': [torch.zeros(2, requires_grad=True)], 'alpha': 2.0})


def test_hooks_and_zero_grad_act_on_the_base_groups_after_load_state_dict():
    model = make_model(); x, y = global_batch()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    opt.load_state_dict(opt.state_dict())
    seen = []
    def halve(optimizer, args, kwargs):
        for g in optimizer.param_groups: g['lr'] = 0.05
    opt.register_step_pre_hook(halve)
    opt.register_step_post_hook(lambda o, a, k: seen.append('post'))
    opt.register_state_dict_pre_hook(lambda o: seen.append('sd'))
    steps_of(opt, model, x, y)
    assert opt.base_optimizer.param_groups[0]['lr'] == 0.05 and seen == ['post']
    opt.state_dict()
    assert seen == ['post', 'sd']
    opt.zero_grad()
    assert all(p.grad is None for g in opt.base_optimizer.param_groups for p in g['params'])


def _trained(opt_kind='SAM'):
    model = make_model(); x, y = global_batch()
    opt = (SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, model=model) if opt_kind == 'SAM'
           else GradientNormPenalty(model.parameters(), torch.optim.Adam, r=0.05, alpha=0.5, lr=0.01, model=model))
    steps_of(opt, model, x, y, 2)
    return opt


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
@pytest.mark.parametrize('how', ['deepcopy', 'pickle'])
def test_copies_keep_the_base_optimizer_and_the_model(kind, how):
    import copy, pickle
    opt = _trained(kind); x, y = global_batch()
    new = copy.deepcopy(opt) if how == 'deepcopy' else pickle.loads(pickle.dumps(opt))
    assert type(new.base_optimizer) is type(opt.base_optimizer) and isinstance(new.model, nn.Module)
    params = list(new.model.parameters())
    assert all(a is b for a, b in zip(params, new.param_groups[0]['params']))   # the copy optimizes its own model
    assert not any(a is b for a, b in zip(params, opt.model.parameters()))
    steps_of(opt, opt.model, x, y); steps_of(new, new.model, x, y)              # both continue identically
    for a, b in zip(opt.model.parameters(), new.model.parameters()): assert torch.equal(a, b)
    assert str(new.state_dict()) == str(opt.state_dict())


def test_grad_scaler_is_refused_clearly():
    model = make_model(); x, y = global_batch()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    def closure():
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); scaler.scale(loss).backward(); return loss
    closure()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"^SAM\.step: torch\.amp\.GradScaler cannot drive SAM"):
        scaler.step(opt, closure)           # before: stepped with gradients 1024 times too large
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    steps_of(opt, model, x, y)              # without the scaler the optimizer works as before
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(AssertionError, match='_scale is None'):      # a scaler that never scaled: torch's own error,
        torch.amp.GradScaler('cpu').step(opt, closure)              # raised before the optimizer is consulted


@pytest.mark.parametrize('base', [torch.optim.RMSprop, torch.optim.ASGD])
def test_base_optimizers_with_an_alpha_of_their_own_are_refused(base):
    with pytest.raises(TypeError, match=rf"^SAM: base_optimizer {base.__name__} has its own hyperparameter\(s\) \['alpha'\]"):
        SAM(make_model().parameters(), base, lr=0.01)       # before: RMSprop's smoothing constant silently became 1.0


def test_a_non_finite_gradient_is_refused_before_theta_moves():
    model = make_model(); x, y = global_batch()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    def closure():
        opt.zero_grad(); loss = F.cross_entropy(model(x), y) * float('nan'); loss.backward(); return loss
    with pytest.raises(ValueError, match=r"^SAM\.step: the gradient at theta is NaN or Inf"): opt.step(closure)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


# --- issue 14, item 7: hessian_top_eigenvalue against the dense Hessian --------------------------------------------
def quadratic(eigs, seed=0, extra=None):
    "loss(w) = w^T A w / 2 with spectrum `eigs` (Hessian A), and its parameter."
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    A = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T
    w = torch.randn(len(eigs), generator=g, dtype=torch.float64).requires_grad_()
    return (lambda: w @ A @ w / 2), w, A, q


def test_hessian_zero_and_null_space_starts_restart():
    loss_fn, w, A, q = quadratic([3.0, -1.0, 0.0, 0.5])
    assert torch.isclose(hessian_top_eigenvalue(loss_fn, [w], n_iter=200, v=[torch.zeros(4, dtype=torch.float64)]),
                         torch.tensor(3.0, dtype=torch.float64), rtol=1e-8)          # before: 0
    null = q[:, 2].clone()                                                            # A null = 0
    assert torch.isclose(hessian_top_eigenvalue(loss_fn, [w], n_iter=200, v=[null]),
                         torch.tensor(3.0, dtype=torch.float64), rtol=1e-8)          # before: 0


@pytest.mark.parametrize('n_iter', [1, 2, 50])
def test_hessian_restart_reads_the_sign_against_the_new_start(n_iter):
    # H = diag(-3, 0, 0) and a start exactly in its null space: the restart's random vector r must also become v, or the
    # sign comes from r^T H v_old = 0 (before the fix: positive for n_iter=1, e.g. +2.95, with -3 the only nonzero eigenvalue)
    loss_of = lambda z: -1.5 * z[0] ** 2 + 0 * z[1:].sum()
    w = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    e = torch.linalg.eigvalsh(torch.func.hessian(loss_of)(w.detach())); top = e[e.abs().argmax()]
    assert top.item() == -3.0
    for seed in range(10):
        torch.manual_seed(seed)
        est = hessian_top_eigenvalue(lambda: loss_of(w), [w], n_iter=n_iter, v=[torch.tensor([0.0, 1.0, 0.0])])
        assert torch.sign(est) == torch.sign(top) and 0 < est.abs() <= top.abs() * (1 + 1e-12), (seed, est)
        if n_iter > 1: assert torch.isclose(est, top, rtol=1e-12), (seed, est)           # rank one: exact after a step

def test_hessian_nan_start_and_nan_loss_are_refused():
    loss_fn, w, A, q = quadratic([3.0, -1.0])
    with pytest.raises(ValueError, match=r"^hessian_top_eigenvalue: v must be finite"):
        hessian_top_eigenvalue(loss_fn, [w], v=[torch.tensor([float('nan'), 1.0], dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"^hessian_top_eigenvalue: loss_fn\(\) returned nan"):
        hessian_top_eigenvalue(lambda: loss_fn() * float('nan'), [w])


def test_hessian_zero_hessian_and_ignored_parameters():
    w = torch.randn(5, dtype=torch.float64, requires_grad=True); c = torch.randn(5, dtype=torch.float64)
    assert hessian_top_eigenvalue(lambda: (c * w).sum(), [w]).item() == 0                # linear loss: H = 0
    assert hessian_top_eigenvalue(lambda: (c * w.detach()).sum(), [w]).item() == 0       # constant loss
    loss_fn, u, A, q = quadratic([-2.0, 1.5, 0.25])
    unused = torch.randn(3, dtype=torch.float64, requires_grad=True)
    mixed = lambda: loss_fn() + (c[:3] * unused).sum()                                   # unused enters linearly
    # dense reference over (u, unused): block diag(A, 0)
    def flat_loss(z): return z[:3] @ A @ z[:3] / 2 + (c[:3] * z[3:]).sum()
    H = torch.func.hessian(flat_loss)(torch.cat([u.detach(), unused.detach()]))
    e = torch.linalg.eigvalsh(H); top = e[e.abs().argmax()]
    for params in ([u, unused], [unused, u], [u, torch.zeros(2, dtype=torch.float64, requires_grad=True)]):
        torch.manual_seed(0)
        assert torch.isclose(hessian_top_eigenvalue(mixed, params, n_iter=300), top, rtol=1e-8), params


@pytest.mark.parametrize('eigs, expected', [([2.0, -2.0, 1.0, -0.5], (2.0, -2.0)), ([1.0, -3.0, 2.5], (-3.0,)),
                                            ([3.0, -2.9, 0.1], (3.0,)), ([-1.0, 1.0], (1.0, -1.0))])
def test_hessian_plus_minus_pairs_and_signs(eigs, expected):
    loss_fn, w, A, q = quadratic(eigs, seed=1)
    e = torch.linalg.eigvalsh(A); rho = e.abs().max()
    for seed in range(5):
        torch.manual_seed(seed)
        est = hessian_top_eigenvalue(loss_fn, [w], n_iter=2000)
        assert torch.isclose(est.abs(), rho, rtol=1e-8), (eigs, seed, est)   # before: v^T A v, anywhere in [-2, 2] on a tie
        assert any(abs(est.item() - x) < 1e-7 for x in expected), (eigs, est)


def test_hessian_magnitude_approaches_from_below():
    loss_fn, w, A, q = quadratic([2.0, -1.9, 1.0, 0.3], seed=2)
    v = [torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))]
    ests = [hessian_top_eigenvalue(loss_fn, [w], n_iter=n, v=v).abs().item() for n in range(1, 40)]
    assert all(a <= b * (1 + 1e-12) for a, b in zip(ests, ests[1:])) and max(ests) <= 2.0 * (1 + 1e-12)
    assert abs(hessian_top_eigenvalue(loss_fn, [w], n_iter=600, v=v).abs().item() - 2.0) < 1e-10   # |2/1.9|^(2n) slow


# --- gradient_norm_penalty and flooding ------------------------------------------------------------------------------
def test_gradient_norm_penalty_degenerate_losses():
    w = torch.randn(4, dtype=torch.float64, requires_grad=True); unused = torch.randn(3, dtype=torch.float64, requires_grad=True)
    loss_of = lambda w_, u_: torch.tanh(w_).pow(3).sum()
    for params in ([w, unused], [unused, w], [w, w, unused]):
        pen = gradient_norm_penalty(loss_of(w, unused), params)
        ref = torch.func.grad(loss_of, argnums=(0, 1))(w.detach(), unused.detach())
        assert torch.isclose(pen, torch.cat([t.flatten() for t in ref]).norm(), rtol=1e-12)   # ignored: zero rows
        d = torch.autograd.grad(pen, [w])[0]
        ref_d = torch.func.grad(lambda w_: torch.func.grad(loss_of)(w_, unused.detach()).norm())(w.detach())
        assert torch.allclose(d, ref_d, rtol=1e-10, atol=1e-14)
    # a loss constant in the parameters, and a linear loss: ||g|| constant, gradient 0, still differentiable
    for loss, value in ((torch.tensor(2.0, dtype=torch.float64), 0.0), ((3 * w.detach()).sum() + 0 * 1.0, 0.0),
                        ((torch.arange(4.0, dtype=torch.float64) * w).sum(), 14 ** 0.5)):
        pen = gradient_norm_penalty(loss, [w, unused])
        assert abs(pen.item() - value) < 1e-12
        assert all((t == 0).all() for t in torch.autograd.grad(pen, [w, unused]))
    meta = torch.empty(3, device='meta', requires_grad=True)
    out = gradient_norm_penalty((meta ** 2).sum(), [meta])
    assert out.is_meta and out.shape == () and out.requires_grad


def test_flooding_refuses_nan_and_reads_tensor_b():
    with pytest.raises(ValueError, match=r"^flooding: loss is nan, not finite"): flooding(torch.tensor(float('nan')), 0.1)
    loss = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = flooding(loss, torch.tensor(0.5))
    assert out.dtype == torch.float64 and abs(out.item() - 0.7) < 1e-15
    assert torch.autograd.grad(out, loss)[0] == -1


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
def test_a_non_finite_loss_at_theta_plus_e_is_refused_with_theta_restored(kind):
    model = make_model(); x, y = global_batch()
    theta = [p.detach().clone() for p in model.parameters()]
    expected = reference_gradient(model, x, y)
    opt = make_opt(kind, model.parameters()); calls = []
    def closure():
        calls.append(1); opt.zero_grad()
        loss = F.cross_entropy(model(x), y) * (float('inf') if len(calls) == 2 else 1.0); loss.backward(); return loss
    name = 'SAM' if kind == 'SAM' else 'GradientNormPenalty'
    with pytest.raises(ValueError, match=rf"^{name}\.step: the closure's loss at theta \+ e is inf"):
        opt.step(closure)
    for p, t, g in zip(model.parameters(), theta, expected):
        assert torch.equal(p.detach(), t) and torch.allclose(p.grad, g, rtol=1e-12, atol=1e-15)
