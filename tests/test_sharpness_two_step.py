"""lipnotes.sharpness: the two-step form of SAM and GradientNormPenalty (first_step, second_step) outside step(closure).

Accumulated over micro-batches, it equals a hand-written two-pass step on the whole batch (plain torch, float64) and
step(closure); misuse is refused; the GradScaler recipe of the chapter (one scaler per pass, an injected Inf skips the
step); and under DistributedDataParallel (two gloo processes) with and without `no_sync` around the first pass.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lipnotes.sharpness import SAM, GradientNormPenalty
from test_spectral_ddp import free_port

BATCH, MICRO, STEPS, LR, MOMENTUM = 32, 4, 4, 0.1, 0.9
KINDS = {'SAM': dict(r=0.05, alpha=1.0), 'ASAM': dict(r=0.5, alpha=1.0, adaptive=True), 'GNP': dict(r=0.05, alpha=0.7)}


def make_model(bn=False):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def batch(n=BATCH):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def make_opt(kind, params, model=None):
    kw = KINDS[kind]
    if kind != 'GNP': return SAM(params, torch.optim.SGD, rho=kw['r'], adaptive=kw.get('adaptive', False),
                                 lr=LR, momentum=MOMENTUM, model=model)
    return GradientNormPenalty(params, torch.optim.SGD, lr=LR, momentum=MOMENTUM, model=model, **kw)


def flat(model): return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- the independent reference: plain torch, the whole batch, the formulas written out ------------------------------------
def reference_steps(model, x, y, r, alpha, adaptive=False, steps=STEPS, shards=1):
    """SGD with momentum on (1 - alpha) g(theta) + alpha g(theta + e). With shards > 1, each shard of the batch takes its
    own probe e_i from its own gradient, and the shards' gradients are averaged (what no_sync around the first pass does)."""
    ps, bufs = list(model.parameters()), None
    for _ in range(steps):
        total = [torch.zeros_like(p) for p in ps]
        for xs, ys in zip(x.chunk(shards), y.chunk(shards)):
            loss = lambda: F.cross_entropy(model(xs), ys)
            g = torch.autograd.grad(loss(), ps)
            scaled = [gi * p.abs() for gi, p in zip(g, ps)] if adaptive else g
            norm = torch.sqrt(sum((t * t).sum() for t in scaled))
            theta = [p.detach().clone() for p in ps]
            with torch.no_grad():
                for p, gi in zip(ps, g): p.add_(r * (p * p if adaptive else 1) * gi / norm)
            g1 = torch.autograd.grad(loss(), ps)
            with torch.no_grad():
                for p, t in zip(ps, theta): p.copy_(t)
            for t, a, b in zip(total, g, g1): t.add_(((1 - alpha) * a + alpha * b) / shards)
        with torch.no_grad():
            bufs = total if bufs is None else [MOMENTUM * b + d for b, d in zip(bufs, total)]
            for p, b in zip(ps, bufs): p.sub_(LR * b)
    return flat(model)


def two_step(model, opt, x, y, micro=MICRO, steps=STEPS, zero_grad=True):
    "The two-step form with `micro` accumulated micro-batches per pass (mean loss / micro)."
    for _ in range(steps):
        for xb, yb in zip(x.chunk(micro), y.chunk(micro)): (F.cross_entropy(model(xb), yb) / micro).backward()
        opt.first_step(zero_grad=zero_grad)
        if not zero_grad: opt.zero_grad()                  # davda54's default leaves g(theta) in .grad
        for xb, yb in zip(x.chunk(micro), y.chunk(micro)): (F.cross_entropy(model(xb), yb) / micro).backward()
        opt.second_step(zero_grad=zero_grad)
        if not zero_grad: opt.zero_grad()
    return flat(model)


def closure_steps(model, opt, x, y, steps=STEPS):
    for _ in range(steps):
        def closure():
            opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); return loss
        opt.step(closure)
    return flat(model)


@pytest.mark.parametrize('kind', list(KINDS))
@pytest.mark.parametrize('zero_grad', [True, False])
def test_accumulated_two_step_equals_the_hand_written_whole_batch_step_and_step_closure(kind, zero_grad):
    x, y = batch()
    ref = reference_steps(make_model(), x, y, **KINDS[kind])
    m = make_model(); two = two_step(m, make_opt(kind, m.parameters()), x, y, zero_grad=zero_grad)
    m = make_model(); closed = closure_steps(m, make_opt(kind, m.parameters()), x, y)
    assert not torch.allclose(ref, flat(make_model()), atol=1e-3)                 # the parameters moved
    assert torch.allclose(two, ref, rtol=0, atol=1e-13), (two - ref).abs().max()
    assert torch.allclose(closed, ref, rtol=0, atol=1e-13), (closed - ref).abs().max()
    assert torch.allclose(two, closed, rtol=0, atol=1e-13)


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
def test_batchnorm_statistics_through_the_two_step_form_equal_step_closure(kind):
    "With model=, the passes at theta + e leave the running statistics; one micro-batch, so the statistics compare exactly."
    x, y = batch()
    m1, m2 = make_model(bn=True), make_model(bn=True)
    two_step(m1, make_opt(kind, m1.parameters(), model=m1), x, y, micro=1, steps=2)
    closure_steps(m2, make_opt(kind, m2.parameters(), model=m2), x, y, steps=2)
    assert m1[1].num_batches_tracked == 2 and torch.equal(m1[1].num_batches_tracked, m2[1].num_batches_tracked)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=1e-14)


def grads(model, x, y, scale=1.0):
    for p in model.parameters(): p.grad = None
    (F.cross_entropy(model(x), y) * scale).backward()


def test_misuse_is_refused_clearly(rejects):
    m = make_model(); x, y = batch(); opt = make_opt('SAM', m.parameters())
    rejects(lambda: opt.second_step(), RuntimeError, 'SAM.second_step', 'needs first_step')
    rejects(lambda: opt.first_step(), ValueError, 'SAM.first_step', 'no parameter has a gradient')
    rejects(lambda: opt.first_step(zero_grad=1), TypeError, 'SAM.first_step', 'zero_grad')
    grads(m, x, y); opt.first_step()
    rejects(lambda: opt.first_step(), RuntimeError, 'SAM.first_step', 'called twice')
    closure = lambda: F.cross_entropy(m(x), y)
    rejects(lambda: opt.step(closure), RuntimeError, 'SAM.step', 'between first_step and second_step')
    rejects(lambda: opt.second_step(skip='no'), TypeError, 'SAM.second_step', 'skip')
    opt.second_step(zero_grad=True)                                   # the refusals left the probe open and usable
    rejects(lambda: opt.second_step(), RuntimeError, 'SAM.second_step', 'needs first_step')


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
def test_non_finite_gradients_are_refused_with_theta_and_g_theta_kept(kind, rejects):
    m = make_model(); x, y = batch(); opt = make_opt(kind, m.parameters()); name = type(opt).__name__
    theta = flat(m)
    grads(m, x, y, scale=float('inf'))
    rejects(lambda: opt.first_step(), ValueError, f'{name}.first_step', 'gradient at theta is NaN or Inf')
    assert torch.equal(flat(m), theta)
    grads(m, x, y); g_theta = [p.grad.clone() for p in m.parameters()]
    opt.first_step(zero_grad=True)                                    # no probe was left open by the refusal
    grads(m, x, y, scale=float('nan'))
    rejects(lambda: opt.second_step(), ValueError, f'{name}.second_step', 'gradient at theta + e is NaN or Inf')
    assert torch.equal(flat(m), theta) and not opt.state                               # theta exactly; no step
    assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), g_theta))         # g(theta) back in .grad
    opt.first_step(zero_grad=True); grads(m, x, y); opt.second_step()                    # and it trains on
    assert not torch.equal(flat(m), theta)


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
def test_a_missing_backward_at_the_probe_is_refused_with_theta_and_g_theta_kept(kind, rejects):
    "first_step(zero_grad=True), no backward, second_step: refused (no step on a zero or partial gradient), theta back."
    m = make_model(); x, y = batch(); opt = make_opt(kind, m.parameters()); name = type(opt).__name__
    theta = flat(m); grads(m, x, y); g_theta = [p.grad.clone() for p in m.parameters()]
    opt.first_step(zero_grad=True)
    rejects(lambda: opt.second_step(), RuntimeError, f'{name}.second_step', 'no gradient at theta + e')
    assert torch.equal(flat(m), theta) and not opt.state
    assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), g_theta))


def test_half_precision_gradients_whose_norm_exceeds_float16_are_accepted():
    "||g|| of a float16 model is accumulated in float32: 1001 entries of 3000 have norm 94,900 > 65,504 (float16's max)."
    m = nn.Linear(1000, 1).half(); opt = SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=1e-6)
    theta = [p.detach().clone() for p in m.parameters()]
    for p in m.parameters(): p.grad = torch.full_like(p, 3000.0)
    opt.first_step(zero_grad=True)
    e = torch.cat([(p.detach() - t).float().flatten() for p, t in zip(m.parameters(), theta)])
    assert abs(torch.linalg.vector_norm(e).item() - 0.05) < 1e-3                  # the probe has radius rho
    for p in m.parameters(): p.grad = torch.full_like(p, 3000.0)
    opt.second_step()
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_second_step_skip_returns_to_theta_without_a_step():
    m = make_model(); x, y = batch(); opt = make_opt('SAM', m.parameters()); theta = flat(m)
    grads(m, x, y); opt.first_step(zero_grad=True); grads(m, x, y, scale=float('inf'))
    opt.second_step(zero_grad=True, skip=True)
    assert torch.equal(flat(m), theta) and not opt.state and all(p.grad is None for p in m.parameters())


# --- the GradScaler recipe of the chapter ------------------------------------------------------------------------------
def amp_step(model, opt, scalers, x, y, k=2, dtype=torch.bfloat16, poison=None):
    "One step with a GradScaler per pass, as in the chapter: unscale_, check, skip; `poison` puts an Inf into that pass."
    found = False
    for i, scaler in enumerate(scalers):
        for xb, yb in zip(x.chunk(k), y.chunk(k)):
            with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb), yb) / k
            if poison == i: loss = loss * float('inf')
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        found = not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        if i == 0 and found:
            opt.zero_grad(); scaler.update(); return 'skipped at theta'
        if i == 0: opt.first_step(zero_grad=True)
    opt.second_step(zero_grad=True, skip=found)
    for s in scalers: s.update()
    return 'skipped at theta + e' if found else 'step'


def scalers():
    return [torch.amp.GradScaler('cpu', init_scale=2.0 ** 12), torch.amp.GradScaler('cpu', init_scale=2.0 ** 10)]


@pytest.mark.parametrize('kind', list(KINDS))
def test_grad_scaler_recipe_equals_the_reference_and_skips_injected_infs(kind):
    x, y = batch()
    ref = reference_steps(make_model(), x, y, **KINDS[kind], steps=3)
    m = make_model(); opt = make_opt(kind, m.parameters()); sc = scalers()
    assert [amp_step(m, opt, sc, x, y, dtype=None) for _ in range(3)] == ['step'] * 3
    assert torch.allclose(flat(m), ref, rtol=0, atol=1e-13)                       # scaling by 2^k is exact
    for poison, words in ((0, 'skipped at theta'), (1, 'skipped at theta + e')):
        theta, mom = flat(m), [opt.state[p]['momentum_buffer'].clone() for p in m.parameters()]
        before = [s.get_scale() for s in sc]
        assert amp_step(m, opt, sc, x, y, dtype=None, poison=poison) == words
        assert torch.equal(flat(m), theta)
        assert all(torch.equal(opt.state[p]['momentum_buffer'], b) for p, b in zip(m.parameters(), mom))
        assert [s.get_scale() for s in sc] == [s * (0.5 if i == poison else 1) for i, s in enumerate(before)]
    m16 = make_model().float(); opt16 = make_opt(kind, m16.parameters())
    for dtype in [torch.bfloat16, torch.float16]:           # CPU autocast supports both in this torch
        m16 = make_model().float(); opt16 = make_opt(kind, m16.parameters()); sc16 = scalers()
        assert [amp_step(m16, opt16, sc16, x.float(), y, dtype=dtype) for _ in range(3)] == ['step'] * 3
        err = (flat(m16).double() - ref).abs().max().item()
        assert 1e-7 < err < 3e-2, (dtype, err)


def test_the_scaler_cannot_take_a_closure():
    "torch refuses a closure passed by keyword; the optimizer refuses one passed positionally (its second gradient)."
    m = make_model(); x, y = batch(); opt = make_opt('SAM', m.parameters()); sc = torch.amp.GradScaler('cpu')
    def closure():
        opt.zero_grad(); loss = F.cross_entropy(m(x), y); sc.scale(loss).backward(); return loss
    closure()
    with pytest.raises(RuntimeError, match='Closure use is not currently supported'): sc.step(opt, closure=closure)
    with pytest.raises(ValueError, match='GradScaler cannot drive SAM'): sc.step(opt, closure)


# --- DistributedDataParallel -------------------------------------------------------------------------------------------
DDP_CASES = [('SAM', True), ('SAM', False), ('GNP', False), ('GNP', True)]


def _worker(rank, world, port, out):
    os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'] = '127.0.0.1', str(port)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        x, y = batch(); shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        xs, ys = x[shard], y[shard]
        results = {}
        for kind, no_sync in DDP_CASES:
            model = make_model(); ddp = DistributedDataParallel(model); opt = make_opt(kind, ddp.parameters())
            for _ in range(STEPS):
                for xb, yb in zip(xs.chunk(2), ys.chunk(2)):        # 2 micro-batches per rank and pass
                    if no_sync:
                        with ddp.no_sync(): (F.cross_entropy(ddp(xb), yb) / 2).backward()
                    else: (F.cross_entropy(ddp(xb), yb) / 2).backward()
                opt.first_step(zero_grad=True)
                for xb, yb in zip(xs.chunk(2), ys.chunk(2)): (F.cross_entropy(ddp(xb), yb) / 2).backward()
                opt.second_step(zero_grad=True)
            results[kind, no_sync] = flat(model)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    """Each rank: its half of the batch, in 2 micro-batches per pass. Without no_sync the first pass's gradient is the
    global one (DDP averages it)."""
    out = str(tmp_path_factory.mktemp('ddp') / 'params')
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.mark.parametrize('kind', ['SAM', 'GNP'])
def test_ddp_two_step_without_no_sync_equals_one_process_on_the_global_batch(ranks, kind):
    ref = reference_steps(make_model(), *batch(), **KINDS[kind])
    assert torch.equal(ranks[0][kind, False], ranks[1][kind, False])
    assert torch.allclose(ranks[0][kind, False], ref, rtol=0, atol=1e-12), (ranks[0][kind, False] - ref).abs().max()


def test_ddp_two_step_with_no_sync_is_sam_with_one_probe_per_process(ranks):
    "no_sync around the first pass: the ranks agree, and equal one process taking a probe per shard (m-sharpness)."
    r0, r1 = ranks[0]['SAM', True], ranks[1]['SAM', True]
    assert torch.equal(r0, r1)
    per_shard = reference_steps(make_model(), *batch(), **KINDS['SAM'], shards=2)
    assert torch.allclose(r0, per_shard, rtol=0, atol=1e-12), (r0 - per_shard).abs().max()
    global_batch = reference_steps(make_model(), *batch(), **KINDS['SAM'])
    assert (r0 - global_batch).abs().max() > 1e-6                      # not the global-batch SAM step


def test_ddp_no_sync_with_alpha_below_one_lets_the_ranks_drift_apart(ranks):
    "GradientNormPenalty keeps g(theta) for (1 - alpha) g(theta): under no_sync it is each rank's own."
    assert (ranks[0]['GNP', True] - ranks[1]['GNP', True]).abs().max() > 1e-6
