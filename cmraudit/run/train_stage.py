"""The train stage: each model trained on the member patients (after public pretraining for DP models),
resumable, a plugin's crash recorded against its model; and the shadow models reference attacks train."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import results as R
from ..data.types import SliceTable
from ..dataclass_config import as_dict
from ..errors import ConfigError
from ..training.loop import train
from ..user_cache import fetch_folder, fingerprint, store_folder
from .builders import build_generator, dp_config, generator_class, generator_label, load_generator, train_config
from .context import fail_model
from .events import ProgressEvent, describe_error

if TYPE_CHECKING:
    from ..api import Generator
    from .config import ModelSpec
    from .context import StageContext


def train_model(ctx: "StageContext", spec: "ModelSpec") -> None:
    if ctx.records.stage_done(spec.name, "train") and not ctx.force:
        ctx.progress(ProgressEvent("train", spec.name, "skipped", "already trained"))
        return
    model_dir = ctx.folder.model_dir(spec.name)
    if ctx.force:  # the loop would otherwise resume (or return) what the folder already holds
        shutil.rmtree(model_dir, ignore_errors=True)
    ctx.records.restart(spec.name, spec.generator, spec.dp_epsilon)
    try:
        training = fit(ctx, spec, model_dir)
    except Exception as exc:  # any plugin crash: record it, keep the other models going
        fail_model(ctx, spec.name, "train", describe_error(exc, generator_label(spec)))
        return
    ctx.records.finish(spec.name, "train", family=getattr(generator_class(spec), "family", "other"),
                       training=training)
    ctx.progress(ProgressEvent("train", spec.name, "done", logs={"seconds": training["seconds"]}))


def fit(ctx: "StageContext", spec: "ModelSpec", model_dir: Path) -> dict[str, Any]:
    """Train ``spec`` (an image or a mask model) on the training table into ``model_dir``, after its public
    pretraining when it is a DP model; returns its results.json ``training`` block."""
    generator = build_generator(ctx.config, spec)
    tconfig = train_config(ctx.config, generator_class(spec))
    pretraining = public_pretraining(ctx, spec, generator, tconfig, model_dir)
    if pretraining:
        tconfig = tconfig.for_finetuning()
    ctx.progress(ProgressEvent("train", spec.name, "start", total=tconfig.steps))
    result = train(generator, training_table(ctx), tconfig, model_dir, dp=dp_config(ctx.config, spec),
                   callback=train_callback(ctx, spec.name))
    return {**training_record(result, generator, tconfig), "public_pretraining": pretraining,
            "canaries": len(ctx.split.canaries_in)}


def training_table(ctx: "StageContext") -> "SliceTable":
    """What a model trains on: the member patients' slices, plus the canaries drawn in (training data like any
    other, so DP-SGD samples and accounts for them as patients)."""
    members = ctx.table.select_patients(ctx.split.members)
    canaries = ctx.canary_table
    if canaries is None or not ctx.split.canaries_in:
        return members
    return SliceTable.concat([members, canaries.select_patients(ctx.split.canaries_in)], source=members.source)


def train_callback(ctx: "StageContext", model: str):
    """The training loop's ``callback(step=, total=, logs=)`` as ProgressEvents."""
    def callback(step: int, total: int, logs: dict[str, float]) -> None:
        ctx.progress(ProgressEvent("train", model, "update", step=step, total=total, logs=dict(logs)))

    return callback


def training_record(result: Any, generator: "Generator", tconfig: Any) -> dict[str, Any]:
    """The results.json ``training`` block: the loop's TrainResult plus the configs that produced it."""
    return {"steps": result.steps, "seconds": result.seconds, "dp": result.dp, "device": result.device,
            "logs": result.logs, "checkpoint": "checkpoints", "generator_config": R.jsonable(as_dict(generator.config)),
            "train_config": R.jsonable(as_dict(tconfig))}


def public_pretraining(ctx: "StageContext", spec: "ModelSpec", generator: "Generator", tconfig: Any,
                       model_dir: Path) -> dict[str, Any] | None:
    """Train a DP model without DP on the run's public data (``dp_pretrain``) before DP-SGD on the members.

    Public pretraining, then private fine-tuning, is how DP generators become useful on small data sets
    (Ghalebikesabi et al. 2023, "Differentially Private Diffusion Models Generate Useful Synthetic Images"): the
    public data costs no privacy, and the DP guarantee covers the members, who are seen only under DP-SGD. The
    public set must not contain audited patients; shared patient ids are refused (a data set that holds the same
    patient under another id cannot be detected here). Resumable: a finished pretraining is reloaded, not redone.
    """
    data = ctx.config.dp_pretrain
    if spec.dp_epsilon is None or data == "none":
        return None
    public = ctx.public_table
    shared = sorted(set(public.patient_ids) & set(ctx.table.patient_ids))
    if shared:
        raise ConfigError(f"dp_pretrain {data!r} holds {len(shared)} of the audited patients ({', '.join(shared[:3])}"
                          f"{', ...' if len(shared) > 3 else ''}): public pretraining data must not contain them")
    label = f"{spec.name} (public pretraining)"
    target = model_dir / "public-pretraining"
    key = pretraining_key(generator, tconfig, data, int(ctx.config.image_size))
    from_cache = fetch_folder("pretraining", key, target)  # only into an empty folder: a resumed one is kept
    ctx.progress(ProgressEvent("train", label, "start", total=tconfig.steps))
    result = train(generator, public, tconfig, target, callback=train_callback(ctx, label))
    ctx.progress(ProgressEvent("train", label, "done", logs={"seconds": result.seconds}))
    if not from_cache:
        store_folder("pretraining", key, target)
    return {"data": data, "patients": len(public.patient_ids), "slices": len(public), "steps": result.steps,
            "seconds": result.seconds, "from_user_cache": from_cache}


def pretraining_key(generator: "Generator", tconfig: Any, data: str, image_size: int) -> str:
    """Everything public pretraining depends on: generator, its config, the loop's settings, the public data, the
    image size, torch, and the code of the generator's package and of the training loop."""
    import inspect

    import torch

    from ..training import loop
    from ..training.device import cpu_has_bf16_matrix_units

    plugin_dir = Path(inspect.getfile(type(generator))).parent
    code = [*sorted(plugin_dir.glob("*.py")), *sorted(Path(loop.__file__).parent.glob("*.py"))]
    loop_settings = {k: v for k, v in as_dict(tconfig).items() if k != "finetune_steps"}  # what comes after it
    return fingerprint("public-pretraining", generator.name, as_dict(generator.config), loop_settings, data,
                       image_size, torch.__version__, {"cpu_bf16": cpu_has_bf16_matrix_units()}, sources=code)


def shadow_trainer(ctx: "StageContext", spec: "ModelSpec"):
    """``train_shadow(patients, seed)`` for reference-model attacks: same generator, config and DP, other patients.

    A DP model's shadows start, as the model did, from its public pretraining (reloaded, not redone). Shadows live
    in models/<model>/shadows/<key>/ so they resume like any model."""
    def train_shadow(patients: list[str], seed: int) -> "Generator":
        key = hashlib.sha256(("\n".join(sorted(patients)) + f"|{seed}").encode()).hexdigest()[:12]
        model_dir = ctx.folder.model_dir(spec.name)
        out = model_dir / "shadows" / key
        generator = build_generator(ctx.config, spec, seed)  # each shadow's initial weights from its own seed
        tconfig = train_config(ctx.config, generator_class(spec))
        if public_pretraining(ctx, spec, generator, tconfig, model_dir):
            tconfig = tconfig.for_finetuning()
        tconfig = dataclasses.replace(tconfig, seed=seed)
        train(generator, ctx.table.select_patients(patients), tconfig, out, dp=dp_config(ctx.config, spec))
        return load_generator(out, ctx.device)

    return train_shadow
