"""Cost of one WGAN critic step under each Lipschitz constraint of chapter 10 (lipnotes.wgan), as ratios against the
spectrally normalised (one power step) critic timed in the same process.

Run with `make bench` (or `python benchmarks/bench_wgan.py`). Times are the minimum over alternating repeats. A step is
one forward on fake and real together, the backward, Adam, and the constraint: clamping (clip), the WGAN-GP penalty by
double backprop (GP, GP one-sided), or the spectral normalisation parametrization (SN: one power step; SN exact: an SVD).
The critics and steps are the chapter's own, imported from lipnotes.wgan (`make_critic`, `critic_step`).
"""
import argparse

import torch

from timing import best_of, machine
from lipnotes.wgan import KINDS, critic_step, make_critic


def steps(kind, width, depth, batch, n):
    "n steps of the chapter's `critic_step` on its `make_critic(kind)` (after one warm-up round), as a function to time."
    net = make_critic(kind, width=width, depth=depth)
    opt = torch.optim.Adam(net.parameters(), 1e-4, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(1)
    real, fake, alpha = torch.randn(batch, 2, generator=g), torch.randn(batch, 2, generator=g), torch.rand(batch, generator=g)

    def run():
        for _ in range(n): critic_step(kind, net, opt, real, fake, alpha)
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
