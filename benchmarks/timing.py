"""The timing helper every benchmark in this folder shares.

The scripts report speed as ratios against a baseline timed in the same process, because the machines are noisy and
only a ratio taken under the same load means anything. `best_of` times the contenders in alternation and keeps the
minimum of each: the least disturbed run. `machine` is the line each script prints first, so a reader knows what ran.
Scripts are run as `python benchmarks/bench_x.py`, which puts this folder on sys.path: `from timing import best_of`.
"""
import math, platform, time

import torch

__all__ = ['best_of', 'machine']


def best_of(fns, repeats):
    "Minimum wall time of each function in `fns`, calling them in alternation `repeats` times."
    best = [math.inf] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter(); fn(); best[i] = min(best[i], time.perf_counter() - t0)
    return best


def machine(threads=None):
    "One line naming torch's version, the processor and the number of threads (torch's own unless `threads` is given)."
    threads = torch.get_num_threads() if threads is None else threads
    return f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {threads} threads"
