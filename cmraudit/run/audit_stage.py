"""The audit stage: every selected attack and metric against one sampled model.

Each membership attack runs up to three times: on the real patients (the audit), on the canaries (an audit with
power, ``cmraudit.run.canaries``), and, for attacks that see only the samples, with the test patients' own real
slices in place of the synthetic set (the null baseline: what the split's draw alone gives; once per run, as it
does not depend on the model).

Attacks are chosen by ``selection``, summarised by the one shared implementation in ``cmraudit.stats`` (whose score
files anyone can re-check with scikit-learn), and each result is written to results.json as soon as it exists. An
attack or metric that raises is recorded as failed with its error, one that does not apply as skipped with its
reason; neither stops the others.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import results as R
from ..api import AttackResult, AuditContext, NotApplicable, content_key
from ..data.types import SliceTable
from ..measure.features import ENCODER_SOURCE
from ..registry import get
from ..stats import aggregate_by_patient, one_run_eps_lower_bound, summarize
from .builders import generator_label, load_generator
from .canaries import canary_split
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


def run_attack(ctx: "StageContext", audits: "Audits", name: str) -> dict[str, Any]:
    """One attack on the real patients, then, where they apply, on the canaries and on the split's null set."""
    audit = audits.real

    def work(attack) -> dict[str, Any]:
        result = attack.run(audit)
        summary = summarize(result)  # every number from the one shared implementation
        path = ctx.folder.scores_path(audit.model, name)
        save_scores(result, path)
        out = {**R.jsonable(summary), "level": result.level, "scores": ctx.folder.rel(path),
               "details": R.jsonable(result.details)}
        if audits.canaries is not None and attack.kind == "mia" and not attack.trains_shadows:
            out["canaries"] = _side_audit(ctx, attack, audits.canaries, f"{name}.canaries",
                                          lambda result: canary_summary(result, audits.dp_delta))
        if audits.null is not None and attack.reads_samples_only:
            out["null"] = _side_audit(ctx, attack, audits.null, f"{name}.null", null_summary,
                                      memo_key=null_audit_key(audits.null, attack))
        return out

    return _guarded("attack", name, {"kind": getattr(get("attacks", name), "kind", "mia")}, audit.generator, work)


def _side_audit(ctx: "StageContext", attack: Any, audit: AuditContext, file_name: str,
                summary: Callable[[AttackResult], dict[str, Any]], memo_key: tuple | None = None) -> dict[str, Any]:
    """The attack again on another context (canaries, null set), its scores saved beside the main ones; with a
    ``memo_key``, once per run for that key. A crash here is recorded in the block, not against the attack's main
    result."""
    try:
        result = attack.run(audit) if memo_key is None else audit.shared_memo(memo_key, lambda: attack.run(audit))
        path = ctx.folder.scores_path(audit.model, file_name)
        save_scores(result, path)
        return {**R.jsonable(summary(result)), "status": "ok", "scores": ctx.folder.rel(path)}
    except Exception as exc:
        return {"status": "failed", "error": describe_error(exc, plugin_label("attack", attack.name, type(attack)))}


def null_audit_key(audit: AuditContext, attack: Any) -> tuple:
    """What a samples-only attack's null result depends on: the attack and its settings, the null set, the split
    and the seed. Not the model, which such an attack sees only through the synthetic set the null set replaces
    (``Attack.reads_samples_only``): every model of a run shares one null result per attack."""
    null = audit.synthetic
    return ("null-audit", attack.name, repr(sorted(audit.settings(attack).items())),
            tuple(content_key(column) for column in (null.images, null.masks, null.patients)),
            repr(sorted(null.meta.items())), repr(sorted(audit.split.role_of().items())), int(audit.seed),
            str(audit.device))


def canary_summary(result: AttackResult, delta: float = 0.0) -> dict[str, Any]:
    """The canary audit: one score per canary (its slices' mean), AUC with CI and TPR at low FPR over canaries,
    and the one-run ε lower bound of Steinke et al. 2023 (for a DP model with the δ its accountant used, so the
    bound is comparable with its (ε, δ) guarantee)."""
    patient = summarize(result)["patient"]
    per_canary = [aggregate_by_patient(result.member_scores, result.member_patients),
                  aggregate_by_patient(result.nonmember_scores, result.nonmember_patients)]
    scores = np.concatenate([s for s, _ in per_canary])
    included = np.r_[np.ones(len(per_canary[0][0]), bool), np.zeros(len(per_canary[1][0]), bool)]
    return {"auc": patient["auc"], "auc_ci": patient["auc_ci"], "tpr_at_fpr": patient["tpr_at_fpr"],
            "n_in": patient["n_members"], "n_out": patient["n_nonmembers"],
            "one_run_eps": one_run_eps_lower_bound(scores, included, delta=delta)}


def null_summary(result: AttackResult) -> dict[str, Any]:
    """The split's null baseline: the attack's AUC when a set that cannot leak stands in for the synthetic one."""
    summary = summarize(result)
    return {"auc": summary["auc"], "auc_ci": summary["auc_ci"], "patient": {
        k: summary["patient"][k] for k in ("auc", "auc_ci")}, "synthetic": NULL_SET}


def run_metric(audit: AuditContext, name: str) -> dict[str, Any]:
    def work(metric) -> dict[str, Any]:
        values = metric.compute(audit)
        return {"values": R.jsonable({key: {"value": v.value, "direction": v.direction,
                                            "ci": list(v.ci) if v.ci else None, "details": v.details}
                                      for key, v in values.items()})}

    return _guarded("metric", name, {"category": getattr(get("metrics", name), "category", "fidelity")},
                    audit.generator, work)


#: what stands in for the synthetic set in the null baseline
NULL_SET = "the test patients' own real slices"


@dataclass
class Audits:
    """The contexts one model is audited in: the real patients, the canaries (None without), and the null set
    (None without test patients)."""

    real: AuditContext
    canaries: AuditContext | None
    null: AuditContext | None
    #: the DP model's δ (0 without DP), for the one-run ε lower bound of the canary audit
    dp_delta: float = 0.0


def audit_contexts(ctx: "StageContext", real: AuditContext, dp_delta: float = 0.0) -> Audits:
    canaries = ctx.canary_table
    canary_audit = None
    # each context gets a cache of its own: attacks memoise per-role tables and features in ``cache``, which would
    # otherwise hand the canary audit the real members (dataclasses.replace shares the dict)
    if canaries is not None and ctx.split.canaries_in and ctx.split.canaries_out:
        # the in-domain encoder is the real audit's, trained on the real members: it saw neither the canaries drawn
        # in nor those left out, which is all the canary audit asks of a feature space (and saves training another)
        canary_audit = dataclasses.replace(real, data=SliceTable.concat([ctx.table, canaries], ctx.table.source),
                                           split=canary_split(ctx.split), cache={ENCODER_SOURCE: real})
    null_audit = None
    if ctx.split.test:
        # the test patients' own slices stand in for the synthetic set, masks included: with generated masks the
        # mask attacks then score real, never-trained-on masks as the null
        null_set = dataclasses.replace(real.test, meta={**real.test.meta, **_conditioning_meta(real.synthetic)})
        null_audit = dataclasses.replace(real, synthetic=null_set, cache={})
    return Audits(real, canary_audit, null_audit, dp_delta)


def _conditioning_meta(synthetic: SliceTable) -> dict[str, Any]:
    return {k: synthetic.meta[k] for k in ("mask_source", "mask_model") if k in synthetic.meta}


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
                         train_shadow=shadow_trainer(ctx, spec), shared=ctx.audit_memo)
    dp = (ctx.records.entry(spec.name).get("training") or {}).get("dp") or {}
    audits = audit_contexts(ctx, audit, dp_delta=float(dp.get("delta") or 0.0))
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
            result = run_attack(ctx, audits, name) if kind == "attacks" else run_metric(audit, name)
            ctx.records.record(spec.name, kind, name, result)
            state = result["status"]
            ctx.progress(ProgressEvent("audit", spec.name, "done" if state == "ok" else state, f"{kind[:-1]} {name}"))
    ctx.records.finish(spec.name, "audit")
