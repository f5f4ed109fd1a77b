"""Benchmark of SAM's two-step form (first_step, second_step) against step(closure) and a plain SGD step, as ratios.

Run with `make bench` (or `python benchmarks/bench_sam_two_step.py`). Times are the minimum over alternating repeats.
A step is the forward and backward passes and the optimizer update of an MLP 64-128-128-10 on a batch of 128 (float32),
the same model and batch for every contender: SGD (one pass), SAM.step(closure) (two passes inside step), and the
two-step form on the whole batch and with 4 accumulated micro-batches of 32 per pass.
"""
import argparse

import torch
import torch.nn.functional as F

from bench_sharpness import setup          # the same model and batch as the step(closure) benchmark
from timing import best_of, machine
from lipnotes.sharpness import SAM


def per_step(repeats, n=20):
    model, x, y = setup()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)

    def plain():
        for _ in range(n):
            sgd.zero_grad(); F.cross_entropy(model(x), y).backward(); sgd.step()

    def closure_form():
        for _ in range(n):
            def closure():
                sam.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); return loss
            sam.step(closure)

    def two_step(k):
        def run():
            for _ in range(n):
                for xb, yb in zip(x.chunk(k), y.chunk(k)): (F.cross_entropy(model(xb), yb) / k).backward()
                sam.first_step(zero_grad=True)
                for xb, yb in zip(x.chunk(k), y.chunk(k)): (F.cross_entropy(model(xb), yb) / k).backward()
                sam.second_step(zero_grad=True)
        return run

    times = best_of([plain, closure_form, two_step(1), two_step(4)], repeats)
    return [t / n for t in times]


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    print(machine())
    t_sgd, t_closure, t_two, t_acc = per_step(args.repeats)
    print(f"step, MLP 64-128-128-10, batch 128: SGD {t_sgd * 1e3:.2f} ms;  SAM.step(closure) {t_closure / t_sgd:.2f}x SGD")
    print(f"SAM two-step (first_step, second_step): {t_two / t_closure:.3f}x step(closure) (target <= 1.05x), "
          f"{t_two / t_sgd:.2f}x SGD;  with 4 accumulated micro-batches of 32: {t_acc / t_closure:.2f}x step(closure)")
