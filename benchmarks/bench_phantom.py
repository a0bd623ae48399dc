"""Phantom generation speed: slices per second through ``PhantomSource(...).load(size)`` on one thread.

    python benchmarks/bench_phantom.py [--size 64] [--slices 1000] [--repeat 3]

Prints the time for the requested number of slices (target: 1 000 slices at 64×64 in ≤ 5 s), and, for
reference, the cost of rendering volumes at the scanners' native matrices (what ``export-phantom`` writes).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from cmraudit.data.phantom import PhantomSource, phantom_patient


def patients_for(slices: int, seed: int = 0) -> int:
    """Fewest patients whose ED + ES slices reach ``slices``."""
    total, n = 0, 0
    while total < slices:
        n += 1
        total += 2 * len(phantom_patient(n, seed).positions)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--native-patients", type=int, default=3, help="patients rendered at native resolution")
    args = parser.parse_args()
    torch.set_num_threads(1)

    n = patients_for(args.slices)
    source = PhantomSource(str(n))
    source.load(args.size)  # warm-up (imports, allocator)
    walls, cpus = [], []
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        table = source.load(args.size)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    best = min(walls)
    per_1000 = best * 1000 / len(table)
    print(f"phantom:{n} at {args.size}x{args.size}: {len(table)} slices, best of {args.repeat}: {best:.2f} s wall "
          f"({min(cpus):.2f} s CPU), median {sorted(walls)[len(walls) // 2]:.2f} s")
    print(f"  {len(table) / best:.0f} slices/s; {per_1000:.2f} s per 1000 slices (target <= 5 s)")

    if args.native_patients:
        wall = time.perf_counter()
        voxels = sum(v.images["ED"].size * 2 for v in PhantomSource(str(args.native_patients)).volumes())
        dt = time.perf_counter() - wall
        print(f"native volumes (export): {dt / args.native_patients:.2f} s per patient, "
              f"{voxels / dt / 1e6:.1f} Mvoxel/s")


if __name__ == "__main__":
    main()
