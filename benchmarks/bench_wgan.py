"""Cost of one WGAN critic step under each Lipschitz constraint of chapter 07, as ratios against the spectrally
normalised (one power step) critic timed in the same process.

Run with `make bench` (or `python benchmarks/bench_wgan.py`). Times are the minimum over alternating repeats. A step is
one forward on fake and real together, the backward, Adam, and the constraint: clamping (clip), the WGAN-GP penalty by
double backprop (GP, GP one-sided), or the spectral normalisation parametrization (SN: one power step; SN exact: an SVD).
"""
import argparse

import torch
from torch import nn

from timing import best_of, machine
from lipnotes.adversarial import wgan_gradient_penalty
from lipnotes.spectral import spectral_normalize

KINDS = ['plain', 'clip', 'GP', 'GP one-sided', 'SN', 'SN exact']


def critic(kind, width, depth):
    torch.manual_seed(0)
    layers, d = [], 2
    for _ in range(depth): layers += [nn.Linear(d, width), nn.ReLU()]; d = width
    net = nn.Sequential(*layers, nn.Linear(d, 1))
    if kind.startswith('SN'):
        for m in net:
            if isinstance(m, nn.Linear): spectral_normalize(m, exact=(kind == 'SN exact'))
    return net


def steps(kind, width, depth, batch, n):
    net = critic(kind, width, depth)
    opt = torch.optim.Adam(net.parameters(), 1e-4, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(1)
    real, fake, alpha = torch.randn(batch, 2, generator=g), torch.randn(batch, 2, generator=g), torch.rand(batch, generator=g)

    def run():
        for _ in range(n):
            s = net(torch.cat([fake, real]))
            loss = s[:batch].mean() - s[batch:].mean()
            if kind.startswith('GP'):
                loss = loss + 10 * wgan_gradient_penalty(net, real, fake, one_sided=(kind == 'GP one-sided'), alpha=alpha)
            opt.zero_grad(); loss.backward(); opt.step()
            if kind == 'clip':
                with torch.no_grad():
                    for p in net.parameters(): p.clamp_(-0.01, 0.01)
    run()                                                   # warm-up
    return run


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    print(machine())
    targets = {(256, 'GP'): ('>=', 1.3), (64, 'SN exact'): ('<=', 1.5)}
    for width, depth, n in [(64, 2, 20), (256, 3, 10)]:
        times = dict(zip(KINDS, best_of([steps(k, width, depth, 256, n) for k in KINDS], args.repeats)))
        name = '-'.join(['2'] + [str(width)] * depth + ['1'])
        print(f"critic {name}, batch 256: SN step {times['SN'] / n * 1e3:.2f} ms; ratio to SN:")
        for k in KINDS:
            op, t = targets.get((width, k), (None, None))
            goal = f"  (target {op} {t})" if op else ''
            print(f"  {k:<13}{times[k] / times['SN']:6.2f}x{goal}")
        print(f"  SN over an unconstrained step: {times['SN'] / times['plain']:.2f}x" + ("  (target <= 1.6)" if width == 256 else ''))
