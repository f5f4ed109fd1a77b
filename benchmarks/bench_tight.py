"""Benchmark for lipnotes.tight on LipSDP's MNIST network (784-50-10 ReLU, data/lipsdp): the certified LipSDP-Neuron
bound (target: <= 60 s on 2 cores), as ratios against baselines timed in the same process, in alternation:

- against the raw interior-point solve alone: the proof's overhead. The library has no public handle on the solve alone,
  so one call of lipsdp_bound is profiled (cProfile) and split by function name into the barrier solve, the proof
  (`_certified_rho`: the candidate, the bumps and the Cholesky proofs, and the layers' norms) and the rest (the walk);
  the raw solve's time is the best total times the solve's share;
- against the product bound (`lipschitz_upper_bound`), and the compositional bound against the product too;
- optionally (`--clarabel` or LIPNOTES_BENCH_CLARABEL=1; about 40 s) the same SDP by Clarabel via cvxpy, proof included.

Run with `make bench` (or `python benchmarks/bench_tight.py`). Times are the minimum over alternating repeats.
"""
import argparse, cProfile, os, pstats, time
from pathlib import Path

import scipy.io
import torch
from torch import nn

from timing import best_of, machine
from lipnotes.certificates import lipschitz_upper_bound
from lipnotes.tight import certify_multipliers, compositional_bound, lipsdp_bound

DATA = Path(__file__).resolve().parent.parent / 'data' / 'lipsdp'


def mnist_net():
    "LipSDP's MNIST network: bias-free Linear layers with ReLU between them, float64."
    Ws = scipy.io.loadmat(DATA / 'mnist_weights.mat')['weights'][0]
    layers = []
    for k, W in enumerate(Ws):
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False).double()
        with torch.no_grad(): lin.weight.copy_(torch.as_tensor(W, dtype=torch.float64))
        layers += [lin] + ([nn.ReLU()] if k < len(Ws) - 1 else [])
    return nn.Sequential(*layers)


def shares(net):
    "Cumulative seconds of lipsdp_bound, of the barrier solve and of the proof in one profiled call, by function name."
    pr = cProfile.Profile()
    pr.enable(); lipsdp_bound(net); pr.disable()
    ct = {}
    for (_, _, name), (_, _, _, cum, _) in pstats.Stats(pr).stats.items():
        ct[name] = max(ct.get(name, 0.0), cum)
    return ct['lipsdp_bound'], ct['_barrier_solve'], ct['_certified_rho']


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=2, help="torch threads (the target is stated for 2 cores)")
    p.add_argument('--clarabel', action='store_true', help="also time Clarabel via cvxpy (about 40 s)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"machine: {machine()}")
    net = mnist_net()
    r = lipsdp_bound(net)
    proof = certify_multipliers(net, r.multipliers)                    # the same proof, on the solver's multipliers
    assert r.value.item() <= 24.39 and abs(proof.item() - r.value.item()) <= 1e-9 * r.value.item(), (r.value, proof)
    t_bound, t_product, t_comp = best_of([lambda: lipsdp_bound(net), lambda: lipschitz_upper_bound(net),
                                          lambda: compositional_bound(net)], a.repeats)
    p_total, p_solve, p_proof = shares(net)
    t_raw = t_bound * p_solve / p_total
    print(f"LipSDP-Neuron on MNIST 784-50-10: certified {r.value.item():.4f} (solver claimed {r.raw.item():.6f}) in "
          f"{t_bound:.2f} s (target <= 60 s on 2 cores: {'met' if t_bound <= 60 else 'MISSED'})")
    print(f"  profiled shares: solve {p_solve / p_total:.0%}, proof {p_proof / p_total:.0%}, rest "
          f"{1 - (p_solve + p_proof) / p_total:.0%}: raw solve {t_raw:.2f} s, certified / raw = {t_bound / t_raw:.2f}x")
    print(f"  product bound {lipschitz_upper_bound(net).item():.4f} in {t_product * 1e3:.2f} ms: "
          f"certified LipSDP / product = {t_bound / t_product:.0f}x")
    print(f"  compositional bound {compositional_bound(net).value.item():.4f} in {t_comp * 1e3:.1f} ms: "
          f"compositional / product = {t_comp / t_product:.0f}x")
    if a.clarabel or os.environ.get('LIPNOTES_BENCH_CLARABEL') == '1':
        t0 = time.perf_counter()
        c = lipsdp_bound(net, solver='clarabel')
        t_c = time.perf_counter() - t0
        print(f"  Clarabel via cvxpy: certified {c.value.item():.4f} (claimed {c.raw.item():.6f}) in {t_c:.1f} s: "
              f"Clarabel / interior-point = {t_c / t_bound:.0f}x")


if __name__ == '__main__':
    main()
