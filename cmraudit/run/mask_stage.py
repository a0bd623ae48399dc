"""Two-stage generation: the mask models behind ``mask_source = "generated"``.

With real stencils every synthetic image is drawn on a real patient's label map, so a released cohort carries real
anatomy. Two-stage generation (a label-map generator first, then the mask-conditioned image generator, as in
SynCMRI-style pipelines) removes that: a mask model (a ``MaskGenerator`` plugin, ``mask_generator`` in the config,
e.g. mask-vae) is trained on the members' label maps with their vendor, pathology, phase and slice position, then
draws one label map for each conditioning row of the ``GENERATED_LABEL_ROLE`` split's *labels* (labels, not
anatomy). Every image model then paints on those same generated masks, so the models are compared on identical
stencils.

One mask model per DP budget of the run's image models ("masks", "masks-dp8", ...): a DP image model's cohort must
not carry anatomy learnt without DP. The mask model and the image model are trained on the same members, so the
cohort's guarantee is their composition: the accountant run over both models' steps (``training.privacy.compose``;
PRV gives 11.6 for two of the default run's trainings at ε = 8), recorded with the image model's samples beside
the looser basic composition, ε_mask + ε_image and δ_mask + δ_image (Dwork & Roth 2014, "The Algorithmic
Foundations of Differential Privacy", Thm 3.16), which stands where the two use different accountants or units.

The mask model's privacy is audited through each image model's synthetic set, which holds its masks
(cmraudit.attacks.masks); its training and masks are recorded under results.json ``mask_models``.
"""
from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING

from ..data.types import SliceTable
from .builders import generator_label, load_generator
from .config import GENERATED_LABEL_ROLE
from .events import ProgressEvent, describe_error
from .folder import save_masks
from .sample_stage import conditioning_rows
from .train_stage import fit

if TYPE_CHECKING:
    import torch

    from ..api import MaskGenerator
    from .config import ModelSpec
    from .context import StageContext

MASK_BATCH = 64


def train_mask_model(ctx: "StageContext", spec: "ModelSpec") -> bool:
    """Train ``spec`` (a mask model) on the members' masks and draw its masks; True when its masks are ready."""
    masks_path = ctx.folder.masks_path(spec.name)
    entry = ctx.records.mask_entry(spec.name) or {}
    same = entry.get("generator") == spec.generator
    if ctx.records.mask_done(spec.name) and same and masks_path.exists() and not ctx.force:
        ctx.progress(ProgressEvent("train", spec.name, "skipped", "already trained"))
        return True
    model_dir = ctx.folder.model_dir(spec.name)
    if ctx.force or (entry and not same):  # another mask generator's checkpoints cannot be resumed
        shutil.rmtree(model_dir, ignore_errors=True)
    ctx.records.start_mask(spec.name, spec.generator, spec.dp_epsilon)
    try:
        training = fit(ctx, spec, model_dir)
        start = time.perf_counter()
        cond, positions = mask_conditioning(ctx)
        generated = draw_masks(load_generator(model_dir, ctx.device, spec), cond, positions, ctx.config.seed,
                               ctx.device)
        save_masks(masks_path, generated)
    except Exception as exc:  # a plugin crash fails the image models that need these masks, not the run
        message = ctx.records.fail_mask(spec.name, f"train: {describe_error(exc, generator_label(spec))}")
        ctx.progress(ProgressEvent("train", spec.name, "failed", message))
        return False
    ctx.records.finish_mask(spec.name, training=training, masks={
        "path": ctx.folder.rel(masks_path), "n": len(generated), "labels_from": GENERATED_LABEL_ROLE,
        "seconds": round(time.perf_counter() - start, 3)})
    ctx.progress(ProgressEvent("train", spec.name, "done", logs={"seconds": training["seconds"]}))
    return True


def mask_conditioning(ctx: "StageContext") -> tuple[SliceTable, "torch.Tensor"]:
    """The rows whose labels the masks are drawn for: the label split's slices, as the sample stage picks them
    (every slice once, or ``n_samples`` of them), and their relative positions within their whole volumes."""
    import torch

    source = ctx.table.select_patients(getattr(ctx.split, GENERATED_LABEL_ROLE))
    rows = conditioning_rows(source, ctx.config.n_samples, ctx.config.seed)
    return source.take(rows), source.relative_positions()[torch.as_tensor(rows)]


def draw_masks(generator: "MaskGenerator", cond: SliceTable, positions: "torch.Tensor", seed: int,
               device: str) -> SliceTable:
    """One generated label map per row of ``cond`` and relative position (seeded), as a SliceTable with
    ``cond``'s labels."""
    import torch

    rng = torch.Generator(device=device).manual_seed(seed)
    vendor, pathology, phase = cond.vendor_indices(), cond.pathology_indices(), cond.phase_indices()
    out = []
    with torch.no_grad():
        for start in range(0, len(cond), MASK_BATCH):
            sl = slice(start, start + MASK_BATCH)
            masks = generator.sample_masks(vendor[sl].to(device), pathology[sl].to(device), phase[sl].to(device),
                                           positions[sl].to(device), generator=rng)
            out.append(masks.detach().cpu().long())
    masks = torch.cat(out)
    expected = (len(cond), cond.image_size, cond.image_size)
    if tuple(masks.shape) != expected or masks.min() < 0 or masks.max() > 3:
        raise ValueError(f"sample_masks() returned {tuple(masks.shape)} with labels {int(masks.min())}.."
                         f"{int(masks.max())}; expected {expected} with labels 0..3")
    return SliceTable(torch.zeros(len(masks), 1, *expected[1:]), masks, cond.patients, cond.vendors,
                      cond.pathologies, cond.phases, cond.slice_index, source="generated")
