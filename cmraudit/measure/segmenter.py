"""Cardiac structure segmentation: one recipe shared by mask consistency (fidelity) and TSTR / TRTR (utility).

A 2-D MONAI ``UNet`` (Ronneberger et al. 2015, in MONAI's residual-free variant) trained with Dice + cross-entropy
(as nnU-Net, Isensee et al. 2021) on (image, mask) pairs. Scores follow the ACDC challenge (Bernard et al. 2018):
Dice and the 95th-percentile Hausdorff distance per structure (RV, MYO, LV): Dice with ``monai.metrics``, HD95
with the batched ``cmraudit.measure.surface_distance`` (equal to MONAI's ``HausdorffDistanceMetric``, 28x faster).

Every segmenter a run trains goes through ``train_segmenter``, so TSTR, TRTR and real + synthetic differ only in
their training pairs. Segmenters trained on real data (``real_segmenter``) are trained once per run and data set:
memoised in ``ctx.cache`` and saved under the run's cache folder, keyed by a fingerprint of what they saw.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..data.preprocess import FOV_MM
from ..data.types import STRUCTURES, SliceTable
from ..errors import RunError
from ..training.device import training_autocast
from .surface_distance import hd95

if TYPE_CHECKING:
    from ..api import AuditContext

N_CLASSES = 4  # BG, RV, MYO, LV
#: training steps per profile: ~1 s on one CPU thread for smoke, ~5 s for quick (TRTR Dice ~0.88 on phantom:60 at
#: 64 px), GPU-sized for standard
PROFILE_STEPS = {"smoke": 30, "quick": 200, "standard": 4000}


@dataclass(frozen=True)
class SegmenterConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    # batch norm (not instance norm) so that pooled activations keep absolute contrast: the same network's encoder
    # is the in-domain feature extractor of cmraudit.measure.features
    norm: str = "batch"
    steps: int = 200
    batch_size: int = 16
    lr: float = 3e-3
    # mild random gamma / contrast: vendors differ mostly in intensity mapping (CARDIAC-FACTS.md), kept mild so the
    # encoder still sees intensity errors of a generator
    augment: bool = True


def segmenter_config(profile: str = "quick", **overrides: Any) -> SegmenterConfig:
    return dataclasses.replace(SegmenterConfig(steps=PROFILE_STEPS.get(profile, PROFILE_STEPS["quick"])), **overrides)


def context_config(ctx: "AuditContext") -> SegmenterConfig:
    """The run's recipe: the profile's, with ``ctx.options["segmenter"]`` overrides (shared by every segmenter)."""
    return segmenter_config(ctx.profile, **ctx.options.get("segmenter", {}))


def build_segmenter(config: SegmenterConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=N_CLASSES, channels=config.channels,
                strides=config.strides, num_res_units=0, norm=config.norm)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random gamma in [0.8, 1.25] and contrast/brightness jitter, per image, on [-1, 1] images."""
    b = x.shape[0]
    gamma = torch.exp(torch.empty(b, 1, 1, 1).uniform_(math.log(0.8), math.log(1.25), generator=gen))
    scale = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=gen)
    shift = torch.empty(b, 1, 1, 1).uniform_(-0.05, 0.05, generator=gen)
    x01 = ((x + 1) / 2).clamp(0, 1) ** gamma.to(x.device)
    return (x01 * 2 - 1) * scale.to(x.device) + shift.to(x.device)


def train_segmenter(images: torch.Tensor, masks: torch.Tensor, steps: int | None = None, seed: int = 0,
                    device: str | torch.device = "cpu", config: SegmenterConfig | None = None,
                    progress: Callable[[int, float], None] | None = None) -> torch.nn.Module:
    """Train a segmenter on images (N, 1, H, W) in [-1, 1] and masks (N, H, W) in {0..3}; deterministic from seed.

    Adam with cosine decay to zero, minibatches drawn with replacement. Returns the network in eval mode.
    ``progress(step, loss)`` is called every step (the library itself prints nothing).
    """
    from monai.losses import DiceCELoss

    config = config or SegmenterConfig()
    steps = int(config.steps if steps is None else steps)
    if len(images) == 0:
        raise RunError("cannot train a segmenter on an empty set of slices")
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's global RNG
        torch.manual_seed(seed)
        net = build_segmenter(config).to(device)
    # channels-last: oneDNN's convolutions train this UNet 1.1-1.2x faster in NHWC, in fp32 and in bf16
    # (benchmarks/bench_cpu_bf16.py). The network stays in that layout (load_segmenter restores it), so a cached
    # segmenter's outputs equal the fresh one's to the last bit
    net = net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    net.train()
    for step in range(steps):
        rows = torch.randint(0, len(images), (min(config.batch_size, len(images)),), generator=gen)
        x = images[rows].to(device)
        y = masks[rows].to(device).unsqueeze(1)
        if config.augment:
            x = _augment(x, gen)
        with training_autocast(device):
            logits = net(x.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, float(loss))
    return net.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Label maps (N, H, W) int64 for images (N, 1, H, W).

    ``max(1).indices`` rather than ``argmax(1)``: the same labels (both take the first of tied maxima), about 6x
    faster over the class dimension on CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device)).max(1).indices.cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, *images.shape[2:]), dtype=torch.long)


def dice_scores(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-slice, per-structure Dice (N, 3), NaN where the reference lacks the structure (MONAI DiceMetric)."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    p = one_hot(pred.unsqueeze(1).long(), N_CLASSES)
    t = one_hot(target.unsqueeze(1).long(), N_CLASSES)
    return DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, t).cpu().numpy().astype(
        np.float64)


def dice_hd95(pred: torch.Tensor, target: torch.Tensor, pixel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice, per-structure Dice and HD95 (mm), each (N, 3) in STRUCTURES order (RV, MYO, LV).

    HD95 comes from ``surface_distance.hd95``: the values of MONAI's ``HausdorffDistanceMetric(percentile=95)``,
    computed for the whole batch at once. Slices whose reference lacks a structure score NaN for it (excluded from
    means, as MONAI's ``ignore_empty``). A structure present in the reference but missing from the prediction has no
    surface to measure: its HD95 is the image diagonal, the largest distance possible, instead of MONAI's NaN / inf.
    """
    dice = dice_scores(pred, target)
    hd = hd95(pred, target, range(1, N_CLASSES), spacing=pixel_mm).cpu().numpy().astype(np.float64)
    classes = torch.arange(1, N_CLASSES, device=target.device).view(1, -1, 1, 1)
    present = (target.unsqueeze(1) == classes).flatten(2).any(-1).cpu().numpy()
    predicted = (pred.to(target.device).unsqueeze(1) == classes).flatten(2).any(-1).cpu().numpy()
    diagonal = pixel_mm * math.hypot(*pred.shape[-2:])
    hd = np.where(present & ~predicted, diagonal, hd)
    hd = np.where(present, hd, np.nan)
    return dice, hd


def _summary(dice: np.ndarray, hd: np.ndarray) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a structure never present, HD skipped)
        d, h = np.nanmean(dice, axis=0), np.nanmean(hd, axis=0)
        d_mean, h_mean = np.nanmean(d), np.nanmean(h)
    return {"dice": {**{s: _num(v) for s, v in zip(STRUCTURES, d)}, "mean": _num(d_mean)},
            "hd95_mm": {**{s: _num(v) for s, v in zip(STRUCTURES, h)}, "mean": _num(h_mean)},
            "n_slices": len(dice)}


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def evaluate(model: torch.nn.Module, table: SliceTable, pixel_mm: float | None = None,
             n_boot: int = 200, seed: int = 0, hd95: bool = True) -> dict[str, Any]:
    """Dice and HD95 per structure on a real table, overall and per vendor, with a patient-bootstrap CI.

    Pixel size defaults to the preprocessing field of view over the image size (cmraudit.data.preprocess).
    ``dice_ci`` is the 95% percentile interval of the mean Dice over patients resampled with replacement.
    ``hd95=False`` skips the surface distances (reported as None).
    """
    if len(table) == 0:
        raise RunError("cannot evaluate a segmenter on an empty set of slices")
    pixel_mm = pixel_mm or float(table.meta.get("pixel_mm", FOV_MM / table.image_size))
    if hd95:
        dice, hd = dice_hd95(predict(model, table.images), table.masks, pixel_mm)
    else:  # Dice alone is ~10x faster than MONAI's per-slice surface distances
        dice = dice_scores(predict(model, table.images), table.masks)
        hd = np.full_like(dice, np.nan)
    out = _summary(dice, hd)
    out["n_patients"] = len(table.patient_ids)
    out["by_vendor"] = {v: _summary(dice[table.vendors == v], hd[table.vendors == v])
                        for v in sorted(set(table.vendors.tolist()))}
    out["dice_ci"] = _patient_bootstrap(dice, table.patients, n_boot, seed)
    return out


def _patient_bootstrap(dice: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    rows = [np.flatnonzero(patients == p) for p in dict.fromkeys(patients.tolist())]
    if len(rows) < 2 or n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n_boot):
            pick = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
            stats.append(np.nanmean(np.nanmean(dice[pick], axis=0)))
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


# ------------------------------------------------------------------------------------ cached real-data segmenters
def fingerprint(table: SliceTable, seed: int, config: Any, **extra: Any) -> str:
    """Hash of what a network trained on ``table`` learns from: patient ids, image size, pixel content, seed and
    recipe (``config``, any dataclass). The cache key of the segmenter and of the identity network."""
    h = hashlib.sha256()
    h.update(json.dumps({"patients": sorted(table.patient_ids), "image_size": table.image_size, "seed": seed,
                         "config": dataclasses.asdict(config), "n": len(table), **extra}, sort_keys=True).encode())
    h.update(table.images.numpy().tobytes())
    h.update(table.masks.numpy().tobytes())
    return h.hexdigest()[:20]


def cache_dir(ctx: "AuditContext") -> Path:
    """``ctx.options["cache_dir"]`` if given, else ``cache/`` in the run folder (``ctx.workdir`` is
    ``<run>/models/<model>``) or beside the work folder for any other layout."""
    given = ctx.options.get("cache_dir")
    if given:
        return Path(given)
    parent = Path(ctx.workdir).resolve().parent
    return (parent.parent if parent.name == "models" else parent) / "cache"


def save_segmenter(model: torch.nn.Module, config: Any, path: Path, key: str) -> None:
    """A trained network with its dataclass config and fingerprint, written atomically (any cached network)."""
    from ..io import atomic_open

    with atomic_open(path, "wb") as fh:
        torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(config), "fingerprint": key}, fh)


def load_segmenter(path: Path, key: str | None = None) -> torch.nn.Module | None:
    """The saved segmenter, or None when the file is missing, unreadable or for another fingerprint."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if key is not None and blob.get("fingerprint") != key:
            return None
        raw = blob["config"]
        config = SegmenterConfig(**{**raw, "channels": tuple(raw["channels"]), "strides": tuple(raw["strides"])})
        model = build_segmenter(config)
        model.load_state_dict(blob["state_dict"])
        # the layout train_segmenter leaves: a loaded segmenter computes exactly what the freshly trained one did
        return model.to(memory_format=torch.channels_last).eval()
    except Exception:  # noqa: BLE001 - a cache entry is only a speed-up: stale or broken means retrain
        return None


def real_segmenter(ctx: "AuditContext", role: str = "members", exclude_vendor: str | None = None,
                   config: SegmenterConfig | None = None) -> torch.nn.Module:
    """A segmenter trained on one real split (members by default), optionally without one vendor's patients.

    Trained once per run: memoised in the run's ``ctx.shared`` (every model's audits) and saved (atomically) in
    ``cache_dir(ctx)`` under its fingerprint, so every model's metrics, and a resumed run, reuse it.
    """
    config = config or context_config(ctx)
    table = ctx.part(role)
    if exclude_vendor is not None:
        table = table.take(np.flatnonzero(table.vendors != exclude_vendor))
    key = fingerprint(table, ctx.seed, config, role=role, exclude_vendor=exclude_vendor)
    path = cache_dir(ctx) / f"segmenter-{key}.pt"

    def load_or_train() -> torch.nn.Module:
        model = load_segmenter(path, key)
        if model is None:
            model = train_segmenter(table.images, table.masks, seed=ctx.seed, device=ctx.device, config=config)
            save_segmenter(model, config, path, key)
        model.fingerprint = key  # what it learned from: the run-wide memo key of its evaluations
        return model.to(ctx.device).eval()

    return ctx.shared_memo(("segmenter", key, str(path), str(ctx.device)), load_or_train)
