"""The sample stage: each trained model's synthetic set, conditioned on the masks and labels of the run's
``mask_source`` patients (reference patients by default, never members) or, with ``mask_source = "generated"``, on
its mask model's generated masks (cmraudit.run.mask_stage); seeded, resumable."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.types import SliceTable
from ..errors import RunError
from .builders import generator_label, load_generator
from .context import fail_model
from .events import ProgressEvent, describe_error
from .folder import load_masks, save_samples

if TYPE_CHECKING:
    from ..api import Generator
    from .config import ModelSpec
    from .context import StageContext

SAMPLE_BATCH = 64


def conditioning_rows(table: SliceTable, n: int, seed: int) -> np.ndarray:
    """Rows of the mask-source table to condition on: every slice once (n = 0), a seeded subset, or cycles."""
    if n <= 0:
        return np.arange(len(table))
    return np.resize(np.random.default_rng(seed).permutation(len(table)), n)


def generate(generator: "Generator", cond: SliceTable, seed: int, device: str) -> np.ndarray:
    """Synthetic images for every row of ``cond`` (its masks and vendor/pathology labels), in batches."""
    import torch

    rng = torch.Generator(device=device).manual_seed(seed)
    vendor, pathology = cond.vendor_indices(), cond.pathology_indices()
    out = []
    with torch.no_grad():
        for start in range(0, len(cond), SAMPLE_BATCH):
            sl = slice(start, start + SAMPLE_BATCH)
            images = generator.sample(cond.masks[sl].to(device), vendor[sl].to(device), pathology[sl].to(device),
                                      generator=rng)
            out.append(images.detach().float().cpu().clamp(-1, 1))
    images = torch.cat(out).numpy().astype(np.float32)
    if images.shape != (len(cond), 1, cond.image_size, cond.image_size) or not np.isfinite(images).all():
        raise RunError(f"sample() returned {images.shape} (finite: {bool(np.isfinite(images).all())}); expected "
                       f"({len(cond)}, 1, {cond.image_size}, {cond.image_size}) finite values")
    return images


def sample_model(ctx: "StageContext", spec: "ModelSpec") -> None:
    path = ctx.folder.samples_path(spec.name)
    if not ctx.records.stage_done(spec.name, "train"):
        return  # training failed or has not run: nothing to sample from
    config = ctx.config
    mask_spec = config.mask_model_for(spec)
    conditioned_as = {"mask_source": config.mask_source,
                      **({"mask_model": mask_spec.name, "mask_generator": mask_spec.generator} if mask_spec else {})}
    done = ctx.records.entry(spec.name).get("samples") or {}
    if (ctx.records.stage_done(spec.name, "sample") and path.exists() and not ctx.force
            and all(done.get(k) == v for k, v in conditioned_as.items())):
        ctx.progress(ProgressEvent("sample", spec.name, "skipped", "already sampled"))
        return
    if mask_spec is not None and not ctx.records.mask_done(mask_spec.name):
        error = (ctx.records.mask_entry(mask_spec.name) or {}).get("error") or "it has not been trained"
        fail_model(ctx, spec.name, "sample", f"no generated masks from mask model {mask_spec.name!r}: {error}")
        return
    start = time.perf_counter()
    ctx.records.begin(spec.name)
    ctx.progress(ProgressEvent("sample", spec.name, "start"))
    try:
        generator = load_generator(ctx.folder.model_dir(spec.name), ctx.device)
        if mask_spec is not None:
            cond = generated_conditioning(ctx, mask_spec)
        else:
            source = ctx.table.select_patients(getattr(ctx.split, config.mask_source))
            cond = source.take(conditioning_rows(source, config.n_samples, config.seed))
        images = generate(generator, cond, config.seed, ctx.device)
    except Exception as exc:
        fail_model(ctx, spec.name, "sample", describe_error(exc, generator_label(spec)))
        return
    save_samples(path, images, cond, config.mask_source, mask_spec.name if mask_spec else "")
    privacy = composed_privacy(ctx, spec.name, mask_spec) if mask_spec is not None else None
    ctx.records.finish(spec.name, "sample", samples={
        "path": ctx.folder.rel(path), "n": int(len(images)), **conditioned_as,
        **({"privacy": privacy} if privacy else {}), "seconds": round(time.perf_counter() - start, 3)})
    ctx.progress(ProgressEvent("sample", spec.name, "done", logs={"n": len(images)}))


def generated_conditioning(ctx: "StageContext", mask_spec: "ModelSpec") -> SliceTable:
    """What an image model paints on: its mask model's generated masks (RunError if they are unreadable)."""
    return load_masks(ctx.folder.masks_path(mask_spec.name), mask_spec.name)


def composed_privacy(ctx: "StageContext", model: str, mask_spec: "ModelSpec") -> dict[str, Any] | None:
    """The cohort's (ε, δ) when both its mask model and its image model are DP: their accountant over both models'
    steps (``training.privacy.compose``), or basic sequential composition (ε and δ added) where the records do not
    allow that; the sum is recorded either way, for comparison."""
    from ..training.privacy import compose

    image_dp = ((ctx.records.entry(model).get("training") or {}).get("dp")) or None
    mask_dp = ((ctx.records.mask_entry(mask_spec.name) or {}).get("training") or {}).get("dp") or None
    if not image_dp or not mask_dp:
        return None
    eps = [image_dp.get("epsilon"), mask_dp.get("epsilon")]
    deltas = [image_dp.get("delta"), mask_dp.get("delta")]
    if any(e is None for e in eps) or any(d is None for d in deltas):
        return None
    out = {"epsilon": float(sum(eps)), "delta": float(sum(deltas)), "composition": "basic (sequential)",
           "basic_epsilon": float(sum(eps)), "basic_delta": float(sum(deltas)),
           "image_epsilon": float(eps[0]), "mask_epsilon": float(eps[1]), "mask_model": mask_spec.name}
    joint = compose([image_dp, mask_dp])
    if joint is not None and joint["epsilon"] <= out["epsilon"]:
        out.update(epsilon=joint["epsilon"], delta=joint["delta"],
                   composition=f"{joint['accountant']} accountant over both models' steps")
    return out
