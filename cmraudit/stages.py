"""The train and sample stages of a run, each resumable and each isolating plugin failures (the audit stage is
in ``cmraudit.audit``), and the up-front check of a run's settings.

``cmraudit.run.AuditRun`` calls these; they talk to the training loop (cmraudit.train) and the DP settings
(cmraudit.privacy).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import results as R
from .data.types import SliceTable
from .errors import ConfigError, RunError

if TYPE_CHECKING:
    from .api import Generator
    from .run import AuditRun
    from .runconfig import ModelSpec

SAMPLE_BATCH = 64


def resolve_device(requested: str) -> str:
    from .device import select_device

    return str(select_device(requested))


def check_config(run: "AuditRun") -> None:
    """User mistakes fail before any work starts, as usage errors: unknown generator, attack or metric names, and
    generator, [train] or [dp] settings their classes reject. (Plugin crashes later are recorded per model.)"""
    from .audit import metric_names
    from .errors import UsageError
    from .registry import get
    from .selection import resolve_attacks

    for spec in run.config.models:
        cls = get("generators", spec.generator)
        cls.make_config(run.config.profile, run.config.generator_overrides(spec))
        train_config(run, cls)
        if spec.dp_epsilon is not None:
            try:
                dp_config(run, spec).validate()
            except TypeError as exc:
                raise ConfigError(f"[dp]: {exc}") from None
    if run.config.dp_pretrain != "none" and any(spec.dp_epsilon is not None for spec in run.config.models):
        from .data.sources import open_source

        try:
            open_source(run.config.dp_pretrain)  # the scheme and its argument; the data loads when it is needed
        except UsageError as exc:
            raise UsageError(f"dp_pretrain: {exc}") from None
    metric_names(run)
    try:
        resolve_attacks(run.config.attacks, None)
    except UsageError:
        raise
    except Exception:  # a plugin's applies_to(None) misbehaving is recorded per model when the audit runs
        pass


# ------------------------------------------------------------------------------------------------------- train
def train_config(run: "AuditRun", generator_cls: type) -> Any:
    """TrainConfig for the profile and generator, with the run's [train] table, seed and --device on top."""
    from .train import TrainConfig

    overrides = {"seed": run.config.seed, **run.config.train}
    if run.config.device not in ("", "auto"):
        overrides.setdefault("device", run.config.device)
    return TrainConfig.for_profile(run.config.profile, generator_cls, overrides)


def dp_config(run: "AuditRun", spec: "ModelSpec") -> Any:
    if spec.dp_epsilon is None:
        return None
    from .privacy import DPConfig

    return DPConfig(epsilon=spec.dp_epsilon, **run.config.dp)


def _train_callback(run: "AuditRun", model: str):
    """The training loop's ``callback(step=, total=, logs=)`` as ProgressEvents."""
    from .run import ProgressEvent

    def callback(step: int, total: int, logs: dict[str, float]) -> None:
        run.progress(ProgressEvent("train", model, "update", step=step, total=total, logs=dict(logs)))

    return callback


def training_record(result: Any, generator: "Generator", tconfig: Any) -> dict[str, Any]:
    """The results.json ``training`` block: the loop's TrainResult plus the configs that produced it."""
    from .config import as_dict

    return {"steps": result.steps, "seconds": result.seconds, "dp": result.dp, "device": result.device,
            "logs": result.logs, "checkpoint": "checkpoints", "generator_config": R.jsonable(as_dict(generator.config)),
            "train_config": R.jsonable(as_dict(tconfig))}


def train_model(run: "AuditRun", spec: "ModelSpec") -> None:
    from .run import ProgressEvent, describe_error

    entry = run.entry(spec.name)
    if entry["stages"]["train"] and not run.force:
        run.progress(ProgressEvent("train", spec.name, "skipped", "already trained"))
        return
    model_dir = run.model_dir(spec.name)
    if run.force:  # the loop would otherwise resume (or return) what the folder already holds
        shutil.rmtree(model_dir, ignore_errors=True)
    entry.update(R.new_model(spec.name, spec.generator, entry.get("family") or "other", spec.dp_epsilon))
    label = generator_label(run, spec)
    try:
        from .train import train

        cls = run.generator_class(spec)
        generator = run.build_generator(spec)
        tconfig = train_config(run, cls)
        members = run.table.select_patients(run.split.members)
        pretraining = public_pretraining(run, spec, generator, tconfig, model_dir)
        run.progress(ProgressEvent("train", spec.name, "start", total=tconfig.steps))
        result = train(generator, members, tconfig, model_dir, dp=dp_config(run, spec),
                       callback=_train_callback(run, spec.name))
        entry["training"] = {**training_record(result, generator, tconfig), "public_pretraining": pretraining}
    except Exception as exc:  # any plugin crash: record it, keep the other models going
        run.fail_model(spec.name, "train", describe_error(exc, label))
        return
    entry["family"] = getattr(cls, "family", "other")
    entry["stages"]["train"] = True
    run.progress(ProgressEvent("train", spec.name, "done", logs={"seconds": entry["training"]["seconds"]}))
    run.save()


def public_pretraining(run: "AuditRun", spec: "ModelSpec", generator: "Generator", tconfig: Any,
                       model_dir: Path) -> dict[str, Any] | None:
    """Train a DP model without DP on the run's public data (``dp_pretrain``) before DP-SGD on the members.

    Public pretraining, then private fine-tuning, is how DP generators become useful on small data sets
    (Ghalebikesabi et al. 2023, "Differentially Private Diffusion Models Generate Useful Synthetic Images"): the
    public data costs no privacy, and the DP guarantee covers the members, who are seen only under DP-SGD. The
    public set must not contain audited patients; shared patient ids are refused (a data set that holds the same
    patient under another id cannot be detected here). Resumable: a finished pretraining is reloaded, not redone.
    """
    from .run import ProgressEvent
    from .train import train

    data = run.config.dp_pretrain
    if spec.dp_epsilon is None or data == "none":
        return None
    public = run.public_table
    shared = sorted(set(public.patient_ids) & set(run.table.patient_ids))
    if shared:
        raise ConfigError(f"dp_pretrain {data!r} holds {len(shared)} of the audited patients ({', '.join(shared[:3])}"
                          f"{', ...' if len(shared) > 3 else ''}): public pretraining data must not contain them")
    label = f"{spec.name} (public pretraining)"
    run.progress(ProgressEvent("train", label, "start", total=tconfig.steps))
    result = train(generator, public, tconfig, model_dir / "public-pretraining", callback=_train_callback(run, label))
    run.progress(ProgressEvent("train", label, "done", logs={"seconds": result.seconds}))
    return {"data": data, "patients": len(public.patient_ids), "slices": len(public), "steps": result.steps,
            "seconds": result.seconds}


def generator_label(run: "AuditRun", spec: "ModelSpec") -> str:
    """``generator 'gan' (cmraudit.plugins.gan)``: who to blame in a failed model's error."""
    from .errors import CmrauditError
    from .run import plugin_label

    try:
        return plugin_label("generator", spec.generator, run.generator_class(spec))
    except CmrauditError:
        return f"generator {spec.generator!r}"


def retry(entry: dict[str, Any]) -> None:
    """A stage that failed before is attempted again on re-run: the model is pending until it finishes."""
    entry["status"], entry["error"] = "pending", None


# ------------------------------------------------------------------------------------------------------- sample
def load_generator(run: "AuditRun", spec: "ModelSpec") -> "Generator":
    from .train import load_trained

    return load_trained(run.model_dir(spec.name), device=run.device)


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


def save_samples(path: Path, images: np.ndarray, cond: SliceTable, mask_source: str) -> None:
    from .io import atomic_open

    with atomic_open(path, "wb") as fh:
        np.savez(fh, images=images, masks=cond.masks.numpy().astype(np.uint8), patients=cond.patients,
                 vendors=cond.vendors, pathologies=cond.pathologies, phases=cond.phases,
                 slice_index=cond.slice_index, mask_source=np.array(mask_source))


def load_samples(path: Path, model: str = "") -> SliceTable:
    """The synthetic set as a SliceTable: ``patients`` names the patient whose mask conditioned each image."""
    import torch

    try:
        with np.load(path, allow_pickle=False) as z:
            return SliceTable(torch.from_numpy(z["images"]), torch.from_numpy(z["masks"].astype(np.int64)),
                              z["patients"], z["vendors"], z["pathologies"], z["phases"], z["slice_index"],
                              source=f"synthetic:{model}", meta={"mask_source": str(z["mask_source"]), "model": model})
    except (OSError, KeyError, ValueError) as exc:
        raise RunError(f"{path}: not a readable samples file ({exc})") from None


def sample_model(run: "AuditRun", spec: "ModelSpec") -> None:
    from .run import ProgressEvent, describe_error

    entry = run.entry(spec.name)
    path = run.samples_path(spec.name)
    if not entry["stages"]["train"]:
        return  # training failed or has not run: nothing to sample from
    if entry["stages"]["sample"] and path.exists() and not run.force:
        run.progress(ProgressEvent("sample", spec.name, "skipped", "already sampled"))
        return
    start = time.perf_counter()
    retry(entry)
    run.progress(ProgressEvent("sample", spec.name, "start"))
    try:
        generator = load_generator(run, spec)
        source = run.table.select_patients(getattr(run.split, run.config.mask_source))
        cond = source.take(conditioning_rows(source, run.config.n_samples, run.config.seed))
        images = generate(generator, cond, run.config.seed, run.device)
    except Exception as exc:
        run.fail_model(spec.name, "sample", describe_error(exc, generator_label(run, spec)))
        return
    save_samples(path, images, cond, run.config.mask_source)
    entry["samples"] = {"path": run.rel(path), "n": int(len(images)), "mask_source": run.config.mask_source,
                        "seconds": round(time.perf_counter() - start, 3)}
    entry["stages"]["sample"] = True
    entry["stages"]["audit"] = False  # new samples invalidate earlier audit numbers
    run.progress(ProgressEvent("sample", spec.name, "done", logs={"n": len(images)}))
    run.save()
