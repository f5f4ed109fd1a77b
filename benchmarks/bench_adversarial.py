"""Benchmarks for lipnotes.adversarial, as ratios against a baseline timed in the same process.

Run with `make bench` (or `python benchmarks/bench_adversarial.py`). Times are the minimum over alternating repeats.
Each training step is forward, backward and an Adam step on a digits-sized MLP (64-64-64-10, batch 64, float32).
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from timing import best_of, machine
from lipnotes.adversarial import fgm, input_gradient_penalty, pgd


def training_steps(repeats, n=20):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    loss_fn = lambda z: F.cross_entropy(net(z), y, reduction='none')

    def steps(make_loss):
        def run():
            for _ in range(n):
                opt.zero_grad(); make_loss().mean().backward(); opt.step()
        return run

    plain = steps(lambda: loss_fn(x))
    adv = steps(lambda: loss_fn(fgm(loss_fn, x, 1.0)))
    gp = steps(lambda: loss_fn(x) + input_gradient_penalty(loss_fn, x))
    pgd10 = steps(lambda: loss_fn(pgd(loss_fn, x, 1.0, steps=10)))
    return [t / n for t in best_of([plain, adv, gp, pgd10], repeats)]


def fgm_vs_hand_written(repeats, batch, n=50):
    "fgm against the minimal torch version of the same computation (no checks)."
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    loss_fn = lambda z: F.cross_entropy(net(z), y, reduction='none')

    def hand():
        for _ in range(n):
            xr = x.detach().requires_grad_()
            g, = torch.autograd.grad(loss_fn(xr).sum(), xr)
            out = x + 1.0 * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return out

    def ours():
        for _ in range(n): out = fgm(loss_fn, x, 1.0)
        return out

    assert torch.allclose(hand(), ours(), rtol=1e-5)
    return [t / n for t in best_of([ours, hand], repeats)]


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    print(machine())
    t_plain, t_adv, t_gp, t_pgd = training_steps(args.repeats)
    print(f"training step, MLP 64-64-64-10, batch 64: plain {t_plain * 1e3:.2f} ms;  FGM-adversarial {t_adv / t_plain:.2f}x "
          f"(target <= 2.2x);  input gradient penalty {t_gp / t_plain:.2f}x (target <= 3.0x);  PGD-10 {t_pgd / t_plain:.2f}x")
    for batch in (64, 1024):      # fgm's checks (x and the gradient finite) cost two reductions: a fixed ~15 us
        t_ours, t_hand = fgm_vs_hand_written(args.repeats, batch)
        print(f"fgm, batch {batch}: {t_ours * 1e6:.0f} us vs hand-written torch {t_hand * 1e6:.0f} us -> "
              f"{t_ours / t_hand:.3f}x (target <= 1.05x)")
