"""Benchmark of the average-pooling bound of lipschitz_upper_bound (issue 14, item 5): time and peak memory of the per-axis
(Kronecker) computation at 1x96x96, 3x160x160 and 3x224x224, and the ratio against the old dense method (the pooling of
one channel as an (HW x H'W') matrix from an identity basis) where that one is feasible, both run in the same process.

Target: <= 1 s and <= 100 MB at 3x224x224. Peak memory is the growth of the process's peak resident set (ru_maxrss),
measured in a fresh child process per case, because tracemalloc does not see torch's tensor allocations. Run with
`python benchmarks/bench_pooling.py` (add --quick for the small sizes only).
"""
import argparse, json, math, subprocess, sys

from timing import machine

CASE = r'''
import json, math, resource, sys, time
import torch
from torch import nn
from lipnotes.certificates import lipschitz_upper_bound
torch.set_num_threads(1)
kind, shape, method = sys.argv[1], tuple(json.loads(sys.argv[2])), sys.argv[3]
pool = nn.AvgPool2d(3, 2, 1) if kind == 'AvgPool2d' else nn.AdaptiveAvgPool2d(7)

def dense(m, shape):   # the old _pool_matrix_norm, verbatim
    n = math.prod(shape[1:])
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape[1:])
    with torch.no_grad(): P = m(basis).reshape(n, -1)
    return torch.linalg.matrix_norm(P, 2).item()

run = (lambda: lipschitz_upper_bound(nn.Sequential(pool), shape).item()) if method == 'new' else (lambda: dense(pool, shape))
lipschitz_upper_bound(nn.Sequential(nn.AvgPool2d(2)), (1, 4, 4))          # warm up imports and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); value = run(); t = time.perf_counter() - t0
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024   # kB -> MB (Linux)
print(json.dumps(dict(value=value, seconds=t, peak_mb=peak)))
'''


def measure(kind, shape, method):
    out = subprocess.run([sys.executable, '-c', CASE, kind, json.dumps(shape), method], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--quick', action='store_true'); args = ap.parse_args()
    print(machine(threads=1))
    sizes = [(1, 32, 32), (1, 64, 64)] + ([] if args.quick else [(1, 96, 96), (3, 160, 160), (3, 224, 224)])
    print(f"{'layer':18}{'input':>14}{'new s':>9}{'new MB':>9}{'old s':>9}{'old MB':>9}{'time ratio':>12}")
    for kind in ('AvgPool2d', 'AdaptiveAvgPool2d'):
        for shape in sizes:
            new = measure(kind, shape, 'new')
            old = measure(kind, shape, 'old') if math.prod(shape[1:]) <= 64 * 64 else None   # 96x96 already needs 1.1 GB
            if old is not None: assert abs(old['value'] - new['value']) <= 1e-12 * old['value'], (kind, shape, old, new)
            cols = (f"{old['seconds']:>9.3f}{old['peak_mb']:>9.1f}{old['seconds'] / new['seconds']:>11.0f}x" if old else
                    f"{'-':>9}{'-':>9}{'-':>12}")
            print(f"{kind:18}{'x'.join(map(str, shape)):>14}{new['seconds']:>9.3f}{new['peak_mb']:>9.1f}{cols}")
            if shape == (3, 224, 224): assert new['seconds'] <= 1.0 and new['peak_mb'] <= 100, new


if __name__ == '__main__':
    main()
