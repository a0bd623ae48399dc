"""Fidelity and utility on the default run's data (phantom:60, 64 px, quick profile), on the CPU.

Prints TRTR Dice/HD95 on the test patients (the ceiling a generator's TSTR is compared with), the fidelity and
utility values of two stand-in "generators" — a perfect one (the non-members' real slices, conditioned on their own
masks) and a useless one (uniform noise on the same masks) — and the seconds each step takes, so the cost of the
metrics inside the default run's budget can be read off.

    OMP_NUM_THREADS=1 python benchmarks/bench_utility.py [--data phantom:60] [--size 64] [--profile quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from cmraudit.attacks.fidelity import Fidelity
from cmraudit.attacks.utility import Utility

from cmraudit.api import AuditContext
from cmraudit.data.sources import open_source
from cmraudit.data.splits import make_split
from cmraudit.measure.features import get_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="phantom:60")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    table = open_source(args.data).load(args.size)
    split = make_split(table, seed=args.seed)
    print(f"data {args.data} @ {args.size}px: {len(table)} slices, members {len(split.members)} patients, "
          f"test {len(split.test)} ({time.perf_counter() - start:.1f} s)")
    real = table.select_patients(split.nonmembers)
    noise = torch.rand(real.images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stand_ins = {"perfect": real, "useless": dataclasses.replace(real, images=noise)}
    cache: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        def context(name: str) -> AuditContext:
            return AuditContext(model=name, generator=None, data=table, split=split, synthetic=stand_ins[name],
                                profile=args.profile, seed=args.seed, cache=cache,
                                workdir=Path(tmp) / "models" / name)

        t = time.perf_counter()
        get_encoder(context("perfect"))
        print(f"members segmenter / encoder trained in {time.perf_counter() - t:.1f} s")
        for name in stand_ins:
            for metric in (Fidelity(), Utility()):
                t = time.perf_counter()
                values = metric.compute(context(name))
                print(f"\n{name} — {metric.name} ({time.perf_counter() - t:.1f} s)")
                for key, v in values.items():
                    base = v.details.get("real_vs_real", v.details.get("trtr"))
                    extra = f"   real-vs-real / TRTR {base:.4f}" if isinstance(base, float) else ""
                    print(f"  {key:34s} {v.value:9.4f} ({v.direction}){extra}")
        trtr = values["trtr_dice"].details
        print("\nTRTR Dice by structure:", trtr["by_structure"])
        print("TRTR Dice by vendor:", {v: d["mean"] for v, d in trtr["by_vendor"].items()})
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
