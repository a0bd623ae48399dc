"""HD95 of the segmentation evaluation: MONAI's HausdorffDistanceMetric against cmraudit.measure.surface_distance.

Reference masks are slices of the default run's data (phantom:60 at 64 px, 400 slices: the size of its test set);
predictions are those masks shifted by up to a pixel, with 1% of pixels relabelled at random (the stray pixels a
segmenter leaves) and a structure dropped from 5% of slices. Prints the seconds of each and the ratio, and checks
that both give the same values (NaN where both are NaN).

    OMP_NUM_THREADS=1 python benchmarks/bench_hd95.py [--data phantom:60] [--size 64] [--slices 400] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

from cmraudit.data.sources import open_source
from cmraudit.measure.surface_distance import hd95

N_CLASSES = 4


def perturbed(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    pred = masks.clone()
    for i in range(len(pred)):
        dy, dx = torch.randint(-1, 2, (2,), generator=gen).tolist()
        pred[i] = torch.roll(pred[i], (dy, dx), dims=(0, 1))
    stray = torch.rand(pred.shape, generator=gen) < 0.01
    pred[stray] = torch.randint(0, N_CLASSES, (int(stray.sum()),), generator=gen)
    drop = torch.rand(len(pred), generator=gen) < 0.05
    dropped = torch.randint(1, N_CLASSES, (len(pred),), generator=gen)
    for i in torch.nonzero(drop).flatten().tolist():
        pred[i][pred[i] == dropped[i]] = 0
    return pred


def monai_hd95(pred: torch.Tensor, target: torch.Tensor, pixel_mm: float) -> torch.Tensor:
    from monai.metrics import HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    p = one_hot(pred.unsqueeze(1), N_CLASSES)
    t = one_hot(target.unsqueeze(1), N_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty structures
        return HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            p, t, spacing=pixel_mm)


def best_of(repeat: int, fn, *args) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="phantom:60")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    table = open_source(args.data).load(args.size)
    gen = torch.Generator().manual_seed(args.seed)
    rows = torch.randperm(len(table), generator=gen)[:args.slices]
    target = table.masks[rows].long()
    pred = perturbed(target, gen)
    pixel_mm = float(table.meta.get("fov_mm", 160.0)) / args.size
    print(f"{len(target)} slices x {N_CLASSES - 1} classes at {args.size} px, {pixel_mm:.2f} mm/px")

    t_monai, ref = best_of(args.repeat, monai_hd95, pred, target, pixel_mm)
    t_new, new = best_of(args.repeat, hd95, pred, target, range(1, N_CLASSES), pixel_mm)
    same = bool(((ref == new) | (ref.isnan() & new.isnan())).all())
    print(f"MONAI HausdorffDistanceMetric: {t_monai:.3f} s")
    print(f"surface_distance.hd95:         {t_new:.3f} s")
    print(f"speed-up: {t_monai / t_new:.1f}x; identical values: {same} "
          f"(max |diff| {float((ref - new).nan_to_num(0).abs().max()):.2e}, {int(ref.isnan().sum())} NaN)")
    if not same:
        raise SystemExit("the two implementations disagree")


if __name__ == "__main__":
    main()
