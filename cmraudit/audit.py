"""The audit stage of a run: every selected attack and metric against one sampled model.

Attacks are chosen by ``cmraudit.selection``, summarised by the one shared implementation in ``cmraudit.stats``
(whose score files anyone can re-check with scikit-learn), and each result is written to results.json as soon as
it exists. An attack or metric that raises is recorded as failed with its error, one that does not apply as
skipped with its reason; neither stops the others.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import TYPE_CHECKING, Any

from . import results as R
from .api import AuditContext, NotApplicable
from .errors import ConfigError
from .stages import dp_config, generator_label, load_generator, load_samples, retry, train_config

if TYPE_CHECKING:
    from .api import Generator
    from .run import AuditRun
    from .runconfig import ModelSpec


def shadow_trainer(run: "AuditRun", spec: "ModelSpec"):
    """``train_shadow(patients, seed)`` for reference-model attacks: same generator, config and DP, other patients.

    A DP model's shadows start, as the model did, from its public pretraining (reloaded, not redone). Shadows live
    in models/<model>/shadows/<key>/ so they resume like any model."""
    def train_shadow(patients: list[str], seed: int) -> "Generator":
        from .stages import public_pretraining
        from .train import load_trained, train

        key = hashlib.sha256(("\n".join(sorted(patients)) + f"|{seed}").encode()).hexdigest()[:12]
        out = run.model_dir(spec.name) / "shadows" / key
        generator = run.build_generator(spec)
        tconfig = train_config(run, run.generator_class(spec))
        public_pretraining(run, spec, generator, tconfig, run.model_dir(spec.name))
        tconfig = dataclasses.replace(tconfig, seed=seed)
        train(generator, run.table.select_patients(patients), tconfig, out, dp=dp_config(run, spec))
        return load_trained(out, device=run.device)

    return train_shadow


def attack_names(run: "AuditRun", generator: "Generator") -> tuple[list[str], dict[str, str]]:
    """(attacks to run, {attack: reason} for those the spec's group left out because they do not apply)."""
    from .selection import resolve_attacks

    return resolve_attacks(run.config.attacks, generator, run.config.profile)


def metric_names(run: "AuditRun") -> list[str]:
    from .registry import registered

    known = registered("metrics")
    spec = run.config.metrics
    if spec in ("all", "", None):
        return sorted(known)
    names = [spec] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})")
    return names


def _finished(entry: dict[str, Any] | None, run: "AuditRun") -> bool:
    if not entry or run.force:
        return False
    if entry.get("status") == "skipped":
        return True
    if entry.get("status") != "ok":
        return False
    return entry.get("scores") is None or (run.out / entry["scores"]).exists()


def _guarded(kind: str, name: str, base: dict[str, Any], generator: Any, work) -> dict[str, Any]:
    """Run one attack's or metric's ``work(plugin)`` and turn the outcome into its results.json entry: ``ok`` with
    what ``work`` returns, ``skipped`` with the reason (``applies_to`` or NotApplicable), or ``failed`` with an
    error naming the plugin. A plugin's crash never stops the run."""
    from .registry import get
    from .run import describe_error, plugin_label

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


def run_attack(run: "AuditRun", ctx: AuditContext, name: str) -> dict[str, Any]:
    from .registry import get
    from .stats import save_scores, summarize

    def work(attack) -> dict[str, Any]:
        result = attack.run(ctx)
        summary = summarize(result)  # every number from the one shared implementation
        path = run.scores_path(ctx.model, name)
        save_scores(result, path)
        return {**R.jsonable(summary), "level": result.level, "scores": run.rel(path),
                "details": R.jsonable(result.details)}

    return _guarded("attack", name, {"kind": getattr(get("attacks", name), "kind", "mia")}, ctx.generator, work)


def run_metric(ctx: AuditContext, name: str) -> dict[str, Any]:
    from .registry import get

    def work(metric) -> dict[str, Any]:
        values = metric.compute(ctx)
        return {"values": R.jsonable({key: {"value": v.value, "direction": v.direction,
                                            "ci": list(v.ci) if v.ci else None, "details": v.details}
                                      for key, v in values.items()})}

    return _guarded("metric", name, {"category": getattr(get("metrics", name), "category", "fidelity")},
                    ctx.generator, work)


def record_baselines(doc: dict[str, Any], values: dict[str, Any]) -> None:
    """Lift what "as good as real" is out of the metric values into results.json's ``baselines``: each fidelity
    value's real-vs-real counterpart and the segmenter trained on real members (TRTR). They do not depend on the
    model (same real data, same masks), so the latest model's numbers stand for all."""
    baselines = doc.setdefault("baselines", {})
    for key, value in values.items():
        details = value.get("details") or {}
        if "real_vs_real" in details:
            baselines.setdefault("real_vs_real", {})[key] = details["real_vs_real"]
        if key.startswith("trtr_"):
            baselines.setdefault("trtr", {})[key] = value.get("value")


def audit_model(run: "AuditRun", spec: "ModelSpec") -> None:
    from .run import ProgressEvent, describe_error

    entry = run.entry(spec.name)
    if not entry["stages"]["sample"]:
        return
    retry(entry)
    try:
        generator = load_generator(run, spec)
        synthetic = load_samples(run.samples_path(spec.name), spec.name)
        attacks, not_applicable = attack_names(run, generator)
        metrics = metric_names(run)
    except Exception as exc:
        run.fail_model(spec.name, "audit", describe_error(exc, generator_label(run, spec)))
        return
    ctx = AuditContext(model=spec.name, generator=generator, data=run.table, split=run.split, synthetic=synthetic,
                       profile=run.config.profile, seed=run.config.seed, device=run.device,
                       workdir=run.model_dir(spec.name), options=run.config.options,
                       train_shadow=shadow_trainer(run, spec))
    from .registry import get

    for name, reason in not_applicable.items():
        cls = get("attacks", name)
        entry["attacks"][name] = {"status": "skipped", "reason": reason, "kind": cls.kind, "plugin": cls.__module__}
    for kind, names in (("attacks", attacks), ("metrics", metrics)):
        for name in names:
            if _finished(entry[kind].get(name), run):
                continue
            run.progress(ProgressEvent("audit", spec.name, "start", f"{kind[:-1]} {name}"))
            entry[kind][name] = run_attack(run, ctx, name) if kind == "attacks" else run_metric(ctx, name)
            state = entry[kind][name]["status"]
            run.progress(ProgressEvent("audit", spec.name, "done" if state == "ok" else state, f"{kind[:-1]} {name}"))
            if kind == "metrics" and entry[kind][name]["status"] == "ok":
                record_baselines(run.doc, entry[kind][name]["values"])
            run.save()
    entry["stages"]["audit"] = True
    entry["status"] = "ok"
    run.save()
