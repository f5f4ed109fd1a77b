"""Benchmarks for lipnotes.spectral, reported as ratios against a baseline timed in the same process.

Run with `make bench` (or `python benchmarks/bench_spectral.py`). Times are the minimum over alternating repeats:
the machines are noisy, and the minimum is the least disturbed run of each contender.
"""
import argparse, platform

import torch

from timing import best_of
from lipnotes.spectral import conv_operator_norm, power_iteration


def warm_step(n, repeats):
    "One warm-started power_iteration step against its floor, one W @ v plus one W.T @ u."
    g = torch.Generator().manual_seed(0)
    W = torch.randn(n, n, generator=g)
    _, u, v = power_iteration(W, n_iter=3, u=torch.randn(n, generator=g))

    def floor(): W @ v; W.T @ u
    def ours(): power_iteration(W, n_iter=1, u=u)
    t_floor, t_ours = best_of([floor, ours], repeats)
    return t_ours, t_floor


def to_tolerance(n, rel_tol, repeats):
    "power_iteration run to relative error `rel_tol` against torch.linalg.matrix_norm(W, 2)."
    g = torch.Generator().manual_seed(1)
    W = torch.randn(n, n, generator=g)
    u0 = torch.randn(n, generator=g)
    exact = torch.linalg.matrix_norm(W.double(), 2).item()
    sigma, u, k, step = None, u0, 0, 25
    while True:                                   # how many steps does this start need? (checked every `step`)
        sigma, u, _ = power_iteration(W, n_iter=step, u=u); k += step
        if abs(sigma.item() - exact) <= rel_tol * exact: break
    t_pi, t_ref = best_of([lambda: power_iteration(W, n_iter=k, u=u0), lambda: torch.linalg.matrix_norm(W, 2)], repeats)
    err = abs(power_iteration(W, n_iter=k, u=u0)[0].item() - exact) / exact
    return t_pi, t_ref, k, err


def conv_norm(repeats):
    "conv_operator_norm of a 64->64 3x3 convolution on 32x32 inputs, to tol 1e-4."
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 64, 3, 3, generator=g) / 24
    v0 = torch.randn(64, 32, 32, generator=g)
    res = conv_operator_norm(w, (64, 32, 32), padding=1, tol=1e-4, v=v0)
    x = torch.randn(1, 64, 32, 32, generator=g)
    one_pair = lambda: (torch.nn.functional.conv2d(x, w, padding=1), torch.nn.functional.conv_transpose2d(x, w, padding=1))
    t, t_pair = best_of([lambda: conv_operator_norm(w, (64, 32, 32), padding=1, tol=1e-4, v=v0), one_pair], repeats)
    return t, t_pair, res.n_iter, res.sigma.item()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--quick', action='store_true', help='fewer repeats (a smoke run, not for reporting)')
    a = p.parse_args()
    r = 3 if a.quick else 30
    torch.manual_seed(0)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"{platform.processor() or 'cpu'}; float32; minimum over {r} alternating repeats\n")
    print("| benchmark | lipnotes | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    for n, target in [(1024, 1.5), (4096, 1.3)]:
        t, f = warm_step(n, r * 10 if n == 1024 else r)
        print(f"| one warm power_iteration step, {n}x{n} | {t * 1e3:.3f} ms | W@v + W.T@u: {f * 1e3:.3f} ms "
              f"| {t / f:.2f}x | <= {target}x |")
    t_pi, t_ref, k, err = to_tolerance(2048, 1e-6, max(1, r // 10))
    print(f"| power_iteration to rel. error 1e-6, 2048x2048 ({k} steps, error {err:.1e}) | {t_pi:.3f} s "
          f"| torch.linalg.matrix_norm(W, 2): {t_ref:.3f} s | {t_pi / t_ref:.2f}x | report |")
    t, t_pair, iters, sigma = conv_norm(max(1, r // 10))
    print(f"| conv_operator_norm, 64->64 3x3 on 32x32, tol 1e-4 ({iters} steps, sigma {sigma:.4f}) | {t:.3f} s "
          f"| one conv2d + conv_transpose2d: {t_pair * 1e3:.3f} ms | {t / t_pair:.0f}x = {t / t_pair / iters:.2f}x per step | report |")


if __name__ == '__main__':
    main()
