"""lipnotes.sharpness: SAM and GradientNormPenalty under DistributedDataParallel (two gloo processes on localhost) match a
single-process run on the global batch; bad input; zero gradients; schedulers and state; BatchNorm buffers."""
import math
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
    (lambda p: GradientNormPenalty(p, torch.optim.SGD, alpha=1.5, lr=0.1), ValueError, "alpha must be a number in [0, 1]"),
    (lambda p: GradientNormPenalty(p, torch.optim.SGD, alpha=-0.1, lr=0.1), ValueError, "alpha must be a number in [0, 1]"),
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
    with pytest.raises(ValueError, match="flooding: b must be a finite number >= 0"): flooding(torch.tensor(1.0), -0.1)
    with pytest.raises(TypeError, match="flooding: loss must be a float tensor"): flooding(1.0, 0.1)
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
