"""The audit stage: every selected attack and metric against one sampled model.

Attacks are chosen by ``selection``, summarised by the one shared implementation in ``cmraudit.stats`` (whose score
files anyone can re-check with scikit-learn), and each result is written to results.json as soon as it exists. An
attack or metric that raises is recorded as failed with its error, one that does not apply as skipped with its
reason; neither stops the others.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from .. import results as R
from ..api import AuditContext, NotApplicable
from ..registry import get
from ..stats import summarize
from .builders import generator_label, load_generator
from .context import fail_model
from .events import ProgressEvent, describe_error, plugin_label
from .folder import load_samples, save_scores
from .selection import resolve_attacks, resolve_metrics
from .train_stage import shadow_trainer

if TYPE_CHECKING:
    from .config import ModelSpec
    from .context import StageContext


def _finished(entry: dict[str, Any] | None, ctx: "StageContext") -> bool:
    if not entry or ctx.force:
        return False
    if entry.get("status") == "skipped":
        return True
    if entry.get("status") != "ok":
        return False
    return entry.get("scores") is None or (ctx.folder.out / entry["scores"]).exists()


def _guarded(kind: str, name: str, base: dict[str, Any], generator: Any,
             work: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Run one attack's or metric's ``work(plugin)`` and turn the outcome into its results.json entry: ``ok`` with
    what ``work`` returns, ``skipped`` with the reason (``applies_to`` or NotApplicable), or ``failed`` with an
    error naming the plugin. A plugin's crash never stops the run."""
    cls = get(f"{kind}s", name)
    base = {**base, "plugin": cls.__module__, "reference": cls.reference or None}
    start = time.perf_counter()
    try:
        plugin = cls()
        reason = plugin.applies_to(generator)
        if reason:
            return {**base, "status": "skipped", "reason": str(reason)}
        out = work(plugin)
    except NotApplicable as exc:
        return {**base, "status": "skipped", "reason": str(exc) or "not applicable"}
    except Exception as exc:
        return {**base, "status": "failed", "error": describe_error(exc, plugin_label(kind, name, cls))}
    return {**base, **out, "status": "ok", "seconds": round(time.perf_counter() - start, 3)}


def run_attack(ctx: "StageContext", audit: AuditContext, name: str) -> dict[str, Any]:
    def work(attack) -> dict[str, Any]:
        result = attack.run(audit)
        summary = summarize(result)  # every number from the one shared implementation
        path = ctx.folder.scores_path(audit.model, name)
        save_scores(result, path)
        return {**R.jsonable(summary), "level": result.level, "scores": ctx.folder.rel(path),
                "details": R.jsonable(result.details)}

    return _guarded("attack", name, {"kind": getattr(get("attacks", name), "kind", "mia")}, audit.generator, work)


def run_metric(audit: AuditContext, name: str) -> dict[str, Any]:
    def work(metric) -> dict[str, Any]:
        values = metric.compute(audit)
        return {"values": R.jsonable({key: {"value": v.value, "direction": v.direction,
                                            "ci": list(v.ci) if v.ci else None, "details": v.details}
                                      for key, v in values.items()})}

    return _guarded("metric", name, {"category": getattr(get("metrics", name), "category", "fidelity")},
                    audit.generator, work)


def audit_model(ctx: "StageContext", spec: "ModelSpec") -> None:
    if not ctx.records.stage_done(spec.name, "sample"):
        return
    ctx.records.begin(spec.name)
    config = ctx.config
    try:
        generator = load_generator(ctx.folder.model_dir(spec.name), ctx.device)
        synthetic = load_samples(ctx.folder.samples_path(spec.name), spec.name)
        attacks, not_applicable = resolve_attacks(config.attacks, generator, config.profile)
        metrics = resolve_metrics(config.metrics)
    except Exception as exc:
        fail_model(ctx, spec.name, "audit", describe_error(exc, generator_label(spec)))
        return
    audit = AuditContext(model=spec.name, generator=generator, data=ctx.table, split=ctx.split, synthetic=synthetic,
                         profile=config.profile, seed=config.seed, device=ctx.device,
                         workdir=ctx.folder.model_dir(spec.name), options=config.options,
                         train_shadow=shadow_trainer(ctx, spec))
    for name, reason in not_applicable.items():
        cls = get("attacks", name)
        ctx.records.record(spec.name, "attacks", name,
                           {"status": "skipped", "reason": reason, "kind": cls.kind, "plugin": cls.__module__}, save=False)
    entry = ctx.records.entry(spec.name)
    for kind, names in (("attacks", attacks), ("metrics", metrics)):
        for name in names:
            if _finished(entry[kind].get(name), ctx):
                continue
            ctx.progress(ProgressEvent("audit", spec.name, "start", f"{kind[:-1]} {name}"))
            result = run_attack(ctx, audit, name) if kind == "attacks" else run_metric(audit, name)
            ctx.records.record(spec.name, kind, name, result)
            state = result["status"]
            ctx.progress(ProgressEvent("audit", spec.name, "done" if state == "ok" else state, f"{kind[:-1]} {name}"))
    ctx.records.finish(spec.name, "audit")
