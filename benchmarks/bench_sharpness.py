"""Benchmarks for lipnotes.sharpness, as ratios against a baseline timed in the same process.

Run with `make bench` (or `python benchmarks/bench_sharpness.py`). Times are the minimum over alternating repeats.
A step is forward, backward and the optimizer update of an MLP 64-128-128-10 on a batch of 128 (float32).
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from timing import best_of, machine
from lipnotes.sharpness import SAM, GradientNormPenalty, gradient_norm_penalty


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return model, torch.randn(128, 64), torch.randint(0, 10, (128,))


def per_step(repeats, n=20):
    model, x, y = setup()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)
    gnp = GradientNormPenalty(model.parameters(), torch.optim.SGD, r=0.05, alpha=0.8, lr=0.01, momentum=0.9)

    def loop(opt, exact=False):
        def run():
            for _ in range(n):
                def closure():
                    opt.zero_grad(); loss = F.cross_entropy(model(x), y)
                    if exact: loss = loss + 0.04 * gradient_norm_penalty(loss, model.parameters())
                    loss.backward(); return loss
                opt.step(closure)
        return run

    def hand_sam():
        "The minimal two-pass SAM: perturb, second gradient, restore, step."
        ps = list(model.parameters())
        for _ in range(n):
            sgd.zero_grad(); F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ps]))
                old = [p.clone() for p in ps]
                for p in ps: p.add_(p.grad, alpha=(0.05 / norm).item())
            sgd.zero_grad(); F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                for p, o in zip(ps, old): p.copy_(o)
            sgd.step()

    times = best_of([loop(sgd), loop(sam), loop(gnp), loop(sgd, exact=True), hand_sam], repeats)
    return [t / n for t in times]


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    print(machine())
    t_sgd, t_sam, t_gnp, t_exact, t_hand = per_step(args.repeats)
    print(f"step, MLP 64-128-128-10, batch 128: SGD {t_sgd * 1e3:.2f} ms;  SAM {t_sam / t_sgd:.2f}x, "
          f"GNP (finite difference) {t_gnp / t_sgd:.2f}x (targets <= 2.2x);  exact penalty (double backprop) "
          f"{t_exact / t_sgd:.2f}x (expect ~3x)")
    print(f"SAM vs a hand-written two-pass SAM: {t_sam / t_hand:.3f}x (target <= 1.05x)")
