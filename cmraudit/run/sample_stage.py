"""The sample stage: each trained model's synthetic set, conditioned on the masks and labels of the run's
``mask_source`` patients (reference patients by default, never members), seeded, resumable."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ..data.types import SliceTable
from ..errors import RunError
from .builders import generator_label, load_generator
from .context import fail_model
from .events import ProgressEvent, describe_error
from .folder import save_samples

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
    if ctx.records.stage_done(spec.name, "sample") and path.exists() and not ctx.force:
        ctx.progress(ProgressEvent("sample", spec.name, "skipped", "already sampled"))
        return
    start = time.perf_counter()
    ctx.records.begin(spec.name)
    ctx.progress(ProgressEvent("sample", spec.name, "start"))
    config = ctx.config
    try:
        generator = load_generator(ctx.folder.model_dir(spec.name), ctx.device)
        source = ctx.table.select_patients(getattr(ctx.split, config.mask_source))
        cond = source.take(conditioning_rows(source, config.n_samples, config.seed))
        images = generate(generator, cond, config.seed, ctx.device)
    except Exception as exc:
        fail_model(ctx, spec.name, "sample", describe_error(exc, generator_label(spec)))
        return
    save_samples(path, images, cond, config.mask_source)
    ctx.records.finish(spec.name, "sample", samples={
        "path": ctx.folder.rel(path), "n": int(len(images)), "mask_source": config.mask_source,
        "seconds": round(time.perf_counter() - start, 3)})
    ctx.progress(ProgressEvent("sample", spec.name, "done", logs={"n": len(images)}))
