"""Benchmarks for lipnotes.lipschitz and spectral_normalize, as ratios against a baseline timed in the same process.

Run with `make bench` (or `python benchmarks/bench_lipschitz.py`). Times are the minimum over alternating repeats.
"""
import argparse, copy, platform

import torch
from torch import nn
from torch.func import jvp, vjp
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from timing import best_of
from lipnotes.certificates import jacobian_spectral_norm
from lipnotes.spectral import spectral_normalize


def jacobian_vs_loop(batch, n_iter, repeats):
    "jacobian_spectral_norm on a batch against a Python loop over the examples doing the same jvp/vjp power iteration."
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10))
    x, v0 = torch.randn(batch, 64), torch.randn(batch, 64)

    def loop():
        out = []
        for xi, vi in zip(x, v0):
            f1 = lambda z: net(z.unsqueeze(0)).squeeze(0)
            _, pullback = vjp(f1, xi)
            for _ in range(n_iter):
                vi = vi / vi.norm()
                (vi,) = pullback(jvp(f1, (xi,), (vi,))[1])
            vi = vi / vi.norm()
            out.append(jvp(f1, (xi,), (vi,))[1].norm())
        return torch.stack(out)

    ours = lambda: jacobian_spectral_norm(net, x, n_iter=n_iter, v=v0)
    with torch.no_grad():
        assert torch.allclose(ours(), loop(), rtol=1e-4)
        t_ours, t_loop = best_of([ours, loop], repeats)
    return t_ours, t_loop


def sn_training_step(repeats, steps=20):
    "A training step (forward, backward, Adam) of an MLP with spectral_normalize (matrix mode) against torch's spectral_norm."
    torch.manual_seed(1)
    base = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    for m in a[::2]: torch_spectral_norm(m)
    for m in b[::2]: spectral_normalize(m)
    x, y = torch.randn(128, 256), torch.randint(0, 10, (128,))

    def trainer(net):
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        def run():
            for _ in range(steps):
                opt.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); opt.step()
        return run
    t_ours, t_torch = best_of([trainer(b), trainer(a)], repeats)
    return t_ours / steps, t_torch / steps


def main():
    p = argparse.ArgumentParser(); p.add_argument('--repeats', type=int, default=5); a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    t, t_loop = jacobian_vs_loop(256, 20, a.repeats)
    print(f"jacobian_spectral_norm, batch 256, 20 steps: {t * 1e3:.1f} ms; Python loop over examples: {t_loop * 1e3:.1f} ms; "
          f"speed-up {t_loop / t:.1f}x (target >= 10x)")
    t, t_torch = sn_training_step(a.repeats)
    print(f"training step with spectral_normalize: {t * 1e3:.2f} ms; with torch's spectral_norm: {t_torch * 1e3:.2f} ms; "
          f"ratio {t / t_torch:.3f}x (target <= 1.05x)")


if __name__ == '__main__':
    main()
