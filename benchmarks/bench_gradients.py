"""Benchmarks for lipnotes.gradients, as ratios against a baseline timed in the same process.

Run with `make bench` (or `python benchmarks/bench_gradients.py`). Times are the minimum over alternating repeats.
The baseline is what one writes without torch.func: a Python loop over the examples, each calling torch.autograd.grad.
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from timing import best_of, machine
from lipnotes.gradients import input_grad_norm, param_grad_norm


def per_example_norms(batch, repeats):
    "param_grad_norm and input_grad_norm on a batch against a loop of torch.autograd.grad over its examples."
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))
    x, y = torch.randn(batch, 64), torch.randint(0, 10, (batch,))
    ce = lambda o, t: F.cross_entropy(o, t, reduction='none')
    params = list(net.parameters())

    def loop_params():
        out = []
        for i in range(batch):
            g = torch.autograd.grad(ce(net(x[i:i + 1]), y[i:i + 1]).sum(), params)
            out.append(torch.sqrt(sum(t.pow(2).sum() for t in g)))
        return torch.stack(out)

    def loop_input():
        out = []
        for i in range(batch):
            xi = x[i:i + 1].clone().requires_grad_()
            out.append(torch.autograd.grad(ce(net(xi), y[i:i + 1]).sum(), xi)[0].norm())
        return torch.stack(out)

    ours_p = lambda: param_grad_norm(ce, net, x, (y,))
    ours_i = lambda: input_grad_norm(lambda z, t: ce(net(z), t), x, (y,))
    assert torch.allclose(ours_p(), loop_params(), rtol=1e-4) and torch.allclose(ours_i(), loop_input(), rtol=1e-4)
    t_p, t_lp = best_of([ours_p, loop_params], repeats)
    t_i, t_li = best_of([ours_i, loop_input], repeats)
    return t_p, t_lp, t_i, t_li


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    print(machine())
    t_p, t_lp, t_i, t_li = per_example_norms(256, args.repeats)
    print(f"param_grad_norm, batch 256, MLP 64-128-128-10: {t_p * 1e3:.1f} ms vs loop of autograd.grad {t_lp * 1e3:.1f} ms "
          f"-> {t_lp / t_p:.1f}x faster (target >= 5x)")
    print(f"input_grad_norm, same batch and model:        {t_i * 1e3:.1f} ms vs loop of autograd.grad {t_li * 1e3:.1f} ms "
          f"-> {t_li / t_i:.1f}x faster")
