"""Benchmark of spectral_normalize(mode='operator', exact=True) (issue 18, item 2), as ratios against a baseline timed in the
same process.

Run with `make bench` (or `python benchmarks/bench_spectral_exact.py`). Times are the minimum over alternating repeats. A step is
forward, backward and an Adam update of a small conv net on a batch of 32 images 3x32x32 (float32): three 3x3 convolutions
(3->16, 16->16, 16->16 with stride 2), ReLUs and a linear head. Contenders, all normalising every layer:
  matrix   torch's way (the baseline): the reshaped kernel, one power step per training forward;
  power    mode='operator': the conv operator's norm, one warm-started power step per forward;
  exact    mode='operator', exact=True: the FFT norm (circular) or torus bound (zeros) at every forward, float64.
"""
import argparse

import torch
from torch import nn

from timing import best_of, machine
from lipnotes.spectral import spectral_normalize

SHAPES = [(3, 32, 32), (16, 32, 32), (16, 32, 32)]


def net(kind, padding_mode):
    "The conv net, every conv normalised as `kind` ('matrix', 'power', 'exact'); the head in matrix mode."
    torch.manual_seed(0)
    convs = [nn.Conv2d(3, 16, 3, padding=1, padding_mode=padding_mode), nn.Conv2d(16, 16, 3, padding=1, padding_mode=padding_mode),
             nn.Conv2d(16, 16, 3, stride=2, padding=1, padding_mode=padding_mode)]
    layers = []
    for conv, shape in zip(convs, SHAPES):
        kw = {} if kind == 'matrix' else dict(mode='operator', input_shape=shape, exact=kind == 'exact')
        layers += [spectral_normalize(conv, **kw), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), spectral_normalize(nn.Linear(16 * 16 * 16, 10)))


def steps(model, n):
    "n training steps of `model` (forward, cross-entropy, backward, Adam), as a function to time."
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run():
        for _ in range(n):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--quick', action='store_true', help='fewer repeats (a smoke run, not for reporting)')
    a = p.parse_args()
    r, n = (2, 2) if a.quick else (7, 5)
    print(f"machine: {machine()}; float32; {n} steps per run, minimum over {r} alternating repeats\n")
    print("| padding | matrix mode (baseline) | operator, 1 power step | operator, exact=True | power / matrix | exact / matrix |")
    print("|---|---|---|---|---|---|")
    for mode in ('circular', 'zeros'):
        t = best_of([steps(net(kind, mode), n) for kind in ('matrix', 'power', 'exact')], r)
        m, pw, ex = (x / n for x in t)
        print(f"| {mode} | {m * 1e3:.1f} ms | {pw * 1e3:.1f} ms | {ex * 1e3:.1f} ms | {pw / m:.2f}x | {ex / m:.2f}x |")


if __name__ == '__main__':
    main()
