"""The gate's rules, one small function each: what number a rule checks on a model, and how sure the audit is.

A rule function takes a model's results.json record and its policy settings and returns a ``Measurement``: the
value (None when the audit did not produce it: the gate then fails closed, with the reason), where it came from and,
for numbers with a confidence interval, that interval, so the verdict can be inconclusive rather than a guess.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .. import results as R

#: where a memorisation attack's details hold the share of member patients with a memorised synthetic image
MEMORISED_SHARE_PATH = ("memorised", "patients_share")


@dataclass(frozen=True)
class Measurement:
    value: float | None  # None: the rule cannot be checked (fail closed)
    reason: str
    #: (lower, upper) of the 95% CI of the number, when it has one; a threshold inside it is inconclusive
    interval: tuple[float, float] | None = None


def _attacks(model: dict[str, Any], kind: str) -> tuple[list[tuple[str, dict]], str | None]:
    """The ok attacks of one kind, or None and the reason the rule cannot be checked (fail closed)."""
    entries = [(n, a) for n, a in (model.get("attacks") or {}).items() if a.get("kind", "mia") == kind]
    failed = [f"{n}: {a.get('error')}" for n, a in entries if a.get("status") == "failed"]
    if failed:
        return [], "attack failed — " + "; ".join(failed)
    ok = [(n, a) for n, a in entries if a.get("status") == "ok"]
    if not ok:
        return [], f"no {kind} attack result (none ran, or all were skipped)"
    return ok, None


def _attack_interval(attack: dict[str, Any]) -> tuple[float, float] | None:
    """The 95% CI an attack's verdict rests on: the canary audit's when it ran (it has the power), else the real
    patients'. A leak shown on the real patients still counts: the lower end is the higher of the two."""
    real = attack.get("auc_ci") or [None, None]
    canaries = attack.get("canaries") or {}
    canary_ci = (canaries.get("auc_ci") or [None, None]) if canaries.get("status") == "ok" else [None, None]
    if canary_ci[0] is not None and canary_ci[1] is not None:
        lower = max(float(canary_ci[0]), float(real[0])) if real[0] is not None else float(canary_ci[0])
        # when the patients show more than the canaries do, the patients' evidence stands: the interval cannot
        # end below its own lower end
        return lower, max(float(canary_ci[1]), lower)
    if real[0] is None or real[1] is None:
        return None
    return float(real[0]), float(real[1])


def mia_auc(model: dict[str, Any], settings: dict[str, Any]) -> Measurement:
    """Worst membership-inference AUC over the MIA attacks: on its 95% CI (``auc_on = "ci_upper"``, the default;
    the canaries' CI where the run has canaries, see ``_attack_interval``) or the point AUC (``"point"``)."""
    attacks, why = _attacks(model, "mia")
    if why:
        return Measurement(None, why)
    if settings.get("auc_on", "ci_upper") != "ci_upper":
        values = [(a.get("auc"), n) for n, a in attacks]
        missing = [n for v, n in values if v is None]
        if missing:
            return Measurement(None, f"{missing[0]}: no AUC recorded")
        value, name = max((float(v), n) for v, n in values)
        return Measurement(value, f"worst: {name} (AUC)")
    intervals = []
    for name, attack in attacks:
        interval = _attack_interval(attack)
        if interval is None:
            return Measurement(None, f"{name}: no AUC CI recorded")
        intervals.append((interval, name))
    (_, upper), name = max(intervals, key=lambda i: i[0][1])
    on = "canaries'" if (dict(attacks)[name].get("canaries") or {}).get("status") == "ok" else "patients'"
    # a pass needs every attack's CI below the threshold (the highest upper bound decides); a fail needs one
    # attack's whole CI above it (the highest lower bound decides)
    return Measurement(upper, f"worst: {name} (upper bound of the {on} 95% CI)",
                       (max(i[0][0] for i in intervals), upper))


def tpr_at_fpr(model: dict[str, Any], settings: dict[str, Any]) -> Measurement:
    """Worst TPR at ``tpr_fpr`` over the MIA attacks, judged on its patient bootstrap 95% CI where the results
    record one (``stats.tpr_ci``; a results file written before CIs were recorded is judged on the point
    estimate). Unresolvable (too few non-members) fails closed.

    At a low FPR a dozen non-member patients make the point estimate jump by whole patients' slices, so without
    the CI a model's verdict flipped between reruns that differed by rounding; with it, the audit says what it
    could tell, as the AUC rule does."""
    fpr = float(settings.get("tpr_fpr", 0.01))
    attacks, why = _attacks(model, "mia")
    if why:
        return Measurement(None, why)
    values, intervals = [], []
    for name, attack in attacks:
        entry = R.tpr_at(attack, fpr)
        if entry is None or entry.get("tpr") is None:
            return Measurement(None, f"{name}: no TPR at FPR {fpr:g} recorded")
        if not entry.get("resolvable", False):
            return Measurement(None, f"{name}: TPR at FPR {fpr:g} is unresolvable (too few non-members)")
        values.append((entry["tpr"], name))
        ci = entry.get("ci") or [None, None]
        if ci[0] is not None and ci[1] is not None:
            intervals.append((float(ci[0]), float(ci[1])))
    value, name = max(values)
    if len(intervals) < len(values):
        return Measurement(value, f"worst: {name} at FPR {fpr:g}")
    # as for the AUC: a pass needs every attack's CI below the threshold, a fail one attack's whole CI above it
    return Measurement(value, f"worst: {name} at FPR {fpr:g} (patients' 95% CI)",
                       (max(lo for lo, _ in intervals), max(hi for _, hi in intervals)))


def memorised_share(model: dict[str, Any], settings: dict[str, Any]) -> Measurement:
    """Share of member patients with a memorised synthetic image, worst over the memorisation attacks."""
    attacks, why = _attacks(model, "memorization")
    if why:
        return Measurement(None, why)
    values = []
    for name, attack in attacks:
        share: Any = attack.get("details") or {}
        for key in MEMORISED_SHARE_PATH:
            share = share.get(key) if isinstance(share, dict) else None
        if isinstance(share, (int, float)):
            values.append((float(share), name))
    if not values:
        return Measurement(None, "no memorisation attack recorded a memorised-patient share")
    value, name = max(values)
    return Measurement(value, f"worst: {name}")


def dp_audit_consistent(model: dict[str, Any]) -> Measurement | None:
    """A DP model's canary audit against its accountant: the one-run ε lower bound (Steinke et al. 2023) must not
    exceed the ε the accountant claims; if it does, the DP implementation (clipping, noise, accounting or sampling)
    is wrong. None for models without DP or without canaries (nothing to check)."""
    claimed = ((model.get("training") or {}).get("dp") or {}).get("epsilon")
    bounds = [((a.get("canaries") or {}).get("one_run_eps") or {}).get("epsilon") for a in
              (model.get("attacks") or {}).values() if a.get("status") == "ok"]
    bounds = [float(b) for b in bounds if b is not None]
    if claimed is None or not bounds:
        return None
    worst = max(bounds)
    if worst > claimed:
        return Measurement(worst, f"DP IMPLEMENTATION ERROR: the canary audit shows ε ≥ {worst:.2f} with 95% "
                                  f"confidence, above the accountant's ε = {claimed:.2f}")
    return Measurement(worst, f"canary one-run ε lower bound {worst:.2f} ≤ the accountant's ε = {claimed:.2f}")


def epsilon(model: dict[str, Any], settings: dict[str, Any]) -> Measurement:
    """DP ε the accountant recorded; a model trained without DP has ε = ∞. A synthetic set drawn on a DP mask
    model's generated masks is judged by the cohort's composed ε (mask model + image model, same members)."""
    training = model.get("training")
    if not training:
        return Measurement(None, "no training record")
    composed = ((model.get("samples") or {}).get("privacy") or {}).get("epsilon")
    if composed is not None:
        return Measurement(composed, "DP accountants of the mask and image models, composed")
    eps = (training.get("dp") or {}).get("epsilon")
    return Measurement(math.inf, "trained without differential privacy") if eps is None else Measurement(eps, "DP accountant")


def metric(name: str, category: str | None) -> Callable[[dict[str, Any], dict[str, Any]], Measurement]:
    """A rule on one metric value (of ``category``, or any when None)."""
    def measure(model: dict[str, Any], settings: dict[str, Any]) -> Measurement:
        values = R.metric_values(model, category)
        if name not in values or values[name].get("value") is None:
            failed = [f"{p}: {e.get('error') or e.get('reason')}" for p, e in (model.get("metrics") or {}).items()
                      if e.get("status") != "ok" and (category is None or e.get("category") == category)]
            return Measurement(None, f"metric {name!r} missing" + (" — " + "; ".join(failed) if failed else ""))
        return Measurement(values[name]["value"], f"from {values[name]['metric']}")

    return measure


Rule = Callable[[dict[str, Any], dict[str, Any]], Measurement]

#: policy key -> the rule's function. ``max_*`` rules hold when the value is at most the threshold, ``min_*`` at least.
RULES: dict[str, Rule] = {
    "max_mia_auc": mia_auc,
    "max_tpr_at_fpr": tpr_at_fpr,
    "max_memorised_share": memorised_share,
    "max_epsilon": epsilon,
    "min_tstr_dice": metric("tstr_dice", "utility"),
}
#: policy tables of metric bounds: key -> (direction, metric category or None for any)
TABLE_RULES: dict[str, tuple[str, str | None]] = {
    "min_fidelity": ("min", "fidelity"), "max_fidelity": ("max", "fidelity"),
    "min_utility": ("min", "utility"), "max_utility": ("max", "utility"),
    "min_metric": ("min", None), "max_metric": ("max", None)}


def rule_for(key: str) -> Rule:
    """The function of a scalar rule (``max_mia_auc``) or of one entry of a table rule (``min_fidelity.coverage``)."""
    if key in RULES:
        return RULES[key]
    table, name = key.split(".", 1)
    return metric(name, TABLE_RULES[table][1])
