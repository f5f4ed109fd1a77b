"""spectral_normalize under DistributedDataParallel: two gloo processes on localhost (CPU).

The power-iteration buffers `_u`, `_v` are updated in place inside the forward. Their update depends only on the weight,
which DDP keeps identical on every rank, so the ranks agree whether or not DDP broadcasts buffers, and training equals a
single process on the global batch. The pitfall is a forward (or a read of `layer.weight`) in training mode on one rank
only: each is one more power step there. With broadcast_buffers=True (DDP's default) rank 0's buffers overwrite the others
at the next forward; with broadcast_buffers=False the ranks keep different vectors, normalise by different sigma-hats and
no longer compute the same function (the parameters stay equal: they get the same averaged gradient).
"""
import copy, functools, inspect, os, socket, tempfile, warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lipnotes.spectral import spectral_normalize

WORLD, STEPS, SHAPE = 2, 4, (1, 6, 6)
# (name, DDP keyword arguments, the same seed on every rank, an extra training-mode read of a weight on rank 0 after step 1)
SCENARIOS = [('default', {}, False, False), ('default, extra read', {}, False, True),
             ('broadcast_buffers=False', dict(broadcast_buffers=False), False, False),
             ('broadcast_buffers=False, same seed', dict(broadcast_buffers=False), True, False),
             ('broadcast_buffers=False, same seed, extra read', dict(broadcast_buffers=False), True, True)]
if 'forward_sync_buffers' in inspect.signature(nn.parallel.DistributedDataParallel).parameters:      # torch >= 2.13
    SCENARIOS += [('forward_sync_buffers=False', dict(forward_sync_buffers=False), False, False),
                  ('forward_sync_buffers=False, extra read', dict(forward_sync_buffers=False), False, True)]
AGREE = [name for name, _, same_seed, extra in SCENARIOS if not extra and ('broadcast_buffers' not in name or same_seed)]


def make_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(spectral_normalize(nn.Conv2d(1, 3, 3, padding=1), mode='operator', input_shape=SHAPE), nn.ReLU(),
                         nn.Flatten(), spectral_normalize(nn.Linear(3 * 36, 2))).double()


def global_batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, *SHAPE, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)


def train(net, x, y, extra_read=None):
    "SGD on the mean squared error; `extra_read(step, net)` may touch the net between steps."
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(STEPS):
        loss = (net(x) - y).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        if extra_read is not None: extra_read(step)
    net(x)                                                   # one more forward: DDP broadcasts buffers before it
    return net


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        x, y = global_batch()
        local = slice(rank * 4, rank * 4 + 4)
        results, built = {}, {seed: make_net(seed) for seed in (100, 100 + rank)}
        for name, kwargs, same_seed, extra in SCENARIOS:
            net = copy.deepcopy(built[100 if same_seed else 100 + rank])   # DDP broadcasts rank 0's parameters at wrap
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)          # broadcast_buffers is deprecated in torch 2.13
                ddp = nn.parallel.DistributedDataParallel(net, **kwargs)
            read = (lambda step: step == 1 and net[0].weight) if (extra and rank == 0) else None
            train(ddp, x[local], y[local], read)
            results[name] = snapshot(net)
        torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def ranks():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(free_port(), d), nprocs=WORLD, join=True)
        yield [torch.load(os.path.join(d, f'rank{r}.pt')) for r in range(WORLD)]


@functools.lru_cache(maxsize=None)
def single_process():
    x, y = global_batch()
    return snapshot(train(make_net(seed=100), x, y))


def buffers(state): return {k: v for k, v in state.items() if k.endswith(('._u', '._v'))}
def params(state): return {k: v for k, v in state.items() if not k.endswith(('._u', '._v'))}


def buffers_differ(r0, r1): return max((r0[k] - r1[k]).abs().max().item() for k in buffers(r0))


@pytest.mark.parametrize("name", AGREE)
def test_ranks_agree_and_equal_one_process_on_the_global_batch(ranks, name):
    r0, r1 = ranks[0][name], ranks[1][name]
    assert buffers(r0).keys() and buffers_differ(r0, r1) <= 1e-14
    assert all(torch.equal(r0[k], r1[k]) for k in params(r0))
    ref = single_process()
    for k in r0: assert torch.allclose(r0[k], ref[k], rtol=1e-10, atol=1e-12), k


def test_buffer_broadcast_repairs_an_extra_step_on_rank_0(ranks):
    r0, r1 = ranks[0]['default, extra read'], ranks[1]['default, extra read']
    assert buffers_differ(r0, r1) <= 1e-14 and all(torch.equal(r0[k], r1[k]) for k in params(r0))


@pytest.mark.parametrize("name", [n for n, _, same_seed, extra in SCENARIOS if extra and n != 'default, extra read']
                                 + ['broadcast_buffers=False'])
def test_without_buffer_sync_the_ranks_diverge(ranks, name):
    "An extra step on one rank, or (broadcast_buffers=False, which also skips the sync at wrap) ranks seeded differently."
    r0, r1 = ranks[0][name], ranks[1][name]
    assert all(torch.equal(r0[k], r1[k]) for k in params(r0))            # the averaged gradient keeps parameters equal ...
    assert buffers_differ(r0, r1) > 1e-8                                  # ... but the power vectors differ
