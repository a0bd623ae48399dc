"""Do the generators' samples follow their conditioning masks? Quick profile, phantom data, CPU.

Each generator is trained on the member patients with the quick profile through ``cmraudit.training.loop``, then samples
one image per slice of held-out (reference) patients, conditioned on those patients' masks (never a member's).
Two measures, each for the conditioning mask and for a shuffled mask (another held-out slice's), so "beats
shuffled" means the image carries the stencil it was asked for:

* intensity-in-structure R^2: the share of an image's pixel variance explained by the mask's labels (the
  between-label variance of the label-wise means); real images with their own masks score high;
* segmenter Dice: a segmenter (``cmraudit.measure.segmenter``, quick recipe) trained on the real member slices segments
  the synthetic images; mean Dice over RV, MYO, LV against the conditioning vs the shuffled mask.

    OMP_NUM_THREADS=1 python benchmarks/bench_mask_consistency.py [--generators gan,vae,diffusion,flow] [--dp]
        [--dp-pretrain phantom:200,seed=1] [--data phantom:60]

Prints a table plus training seconds and sampling images/s per generator.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cmraudit.api import Batch, Conditioning
from cmraudit.data.sources import open_source
from cmraudit.data.splits import make_split
from cmraudit.measure.segmenter import predict, train_segmenter
from cmraudit.registry import registered
from cmraudit.training.loop import TrainConfig, train
from cmraudit.training.privacy import DPConfig


def label_r2(images: torch.Tensor, masks: torch.Tensor, n_labels: int = 4) -> np.ndarray:
    """Per image, the fraction of pixel variance explained by the label-wise means (between / total variance)."""
    x = images[:, 0].flatten(1).double()
    onehot = torch.nn.functional.one_hot(masks.flatten(1), n_labels).double()  # (N, P, L)
    counts = onehot.sum(1).clamp(min=1)
    means = torch.einsum("np,npl->nl", x, onehot) / counts
    fitted = torch.einsum("nl,npl->np", means, onehot)
    total = ((x - x.mean(1, keepdim=True)) ** 2).sum(1).clamp(min=1e-12)
    return (1 - ((x - fitted) ** 2).sum(1) / total).numpy()


def mean_dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over RV, MYO, LV of the per-slice Dice, skipping slices where a structure is absent from the target."""
    scores = []
    for label in (1, 2, 3):
        p, t = (pred == label).flatten(1).float(), (target == label).flatten(1).float()
        present = t.sum(1) > 0
        dice = 2 * (p * t).sum(1) / (p.sum(1) + t.sum(1)).clamp(min=1)
        scores.append(float(dice[present].mean()) if present.any() else float("nan"))
    return float(np.nanmean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generators", default="gan,vae,diffusion,flow")
    parser.add_argument("--data", default="phantom:40")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dp", action="store_true", help="also train a DP diffusion model (epsilon 8)")
    parser.add_argument("--dp-pretrain", default="none",
                        help="public data the DP model first trains on without DP, as `cmraudit run --dp-pretrain` "
                             "(e.g. phantom:200,seed=1; default: none, DP-SGD from scratch)")
    parser.add_argument("--steps", type=int, default=None, help="override the quick profile's step count")
    parser.add_argument("--eval", type=int, default=96, help="held-out slices to sample and score")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than the free cores slows down)")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    table = open_source(args.data).load(args.size)
    split = make_split(table, seed=0)
    members, held_out = table.select_patients(split.members), table.select_patients(split.reference + split.test)
    rng = np.random.default_rng(0)
    held_out = held_out.take(np.sort(rng.permutation(len(held_out))[:args.eval]))
    shuffled = torch.from_numpy(rng.permutation(len(held_out)))
    cond = Batch.from_table(held_out)

    started = time.perf_counter()
    segmenter = train_segmenter(members.images, members.masks, steps=200, seed=0)
    real_dice = mean_dice(predict(segmenter, held_out.images), held_out.masks)
    real_r2 = label_r2(held_out.images, held_out.masks)
    print(f"data {args.data} @ {args.size}px: {len(members)} member slices, {len(held_out)} held-out slices; "
          f"segmenter {time.perf_counter() - started:.1f}s")
    rows = [("real images", float(real_r2.mean()), float(label_r2(held_out.images, held_out.masks[shuffled]).mean()),
             real_dice, mean_dice(predict(segmenter, held_out.images), held_out.masks[shuffled]), 0.0, 0, 0.0)]

    jobs = [(name, None) for name in args.generators.split(",") if name]
    if args.dp:
        jobs.append(("diffusion", DPConfig(epsilon=8.0)))
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cmraudit-bench-"))
    for name, dp in jobs:
        cls = registered("generators")[name]
        label = name + ("-dp8" if dp else "")
        torch.manual_seed(0)
        gen = cls(cls.make_config("quick"), Conditioning(args.size))
        overrides = {"steps": args.steps} if args.steps else {}
        config = TrainConfig.for_profile("quick", cls, overrides)
        if dp and args.dp_pretrain != "none":
            label += "+public"
            train(gen, open_source(args.dp_pretrain).load(args.size), config, root / label / "public-pretraining")
        result = train(gen, members, config, root / label, dp=dp)
        t0 = time.perf_counter()
        images = gen.sample(cond.masks, cond.vendor, cond.pathology, generator=torch.Generator().manual_seed(0))
        rate = len(images) / (time.perf_counter() - t0)
        pred = predict(segmenter, images)
        rows.append((label, float(label_r2(images, cond.masks).mean()),
                     float(label_r2(images, cond.masks[shuffled]).mean()), mean_dice(pred, cond.masks),
                     mean_dice(pred, cond.masks[shuffled]), result.seconds, result.steps, rate))
        eps = f", epsilon {result.dp['epsilon']:.2f}" if result.dp else ""
        print(f"  {label}: trained {result.steps} steps in {result.seconds:.1f}s{eps}; sampling {rate:.1f} img/s")

    print(f"\n{'model':<20} {'R2 mask':>8} {'R2 shuf':>8} {'Dice mask':>10} {'Dice shuf':>10} {'train s':>8} "
          f"{'steps':>6} {'img/s':>7}")
    for label, r2, r2s, dice, dices, secs, steps, rate in rows:
        print(f"{label:<20} {r2:8.3f} {r2s:8.3f} {dice:10.3f} {dices:10.3f} {secs:8.1f} {steps:6d} {rate:7.1f}")


if __name__ == "__main__":
    main()
