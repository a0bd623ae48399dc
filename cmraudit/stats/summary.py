"""An AttackResult summarised for results.json: every number from this package, at slice and patient level."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .bounds import DEFAULT_DELTA, eps_lower_bound
from .patients import DEFAULT_BOOT, aggregate_by_patient, bootstrap_cis
from .roc import FPR_TARGETS, advantage, auc, tpr_at_fpr


def _block(member: np.ndarray, nonmember: np.ndarray, member_patients: np.ndarray, nonmember_patients: np.ndarray,
           n_boot: int, seed: int, eps_bound: float) -> dict[str, Any]:
    auc_interval, tpr_intervals = bootstrap_cis(member, nonmember, member_patients, nonmember_patients, FPR_TARGETS,
                                                n_boot, seed)
    return {
        "auc": auc(member, nonmember),
        "auc_ci": list(auc_interval),
        "tpr_at_fpr": {str(f): {**tpr_at_fpr(member, nonmember, f), "ci": list(tpr_intervals[f])}
                       for f in FPR_TARGETS},
        "eps_lower_bound": eps_bound,
        "advantage": advantage(member, nonmember),
        "n_members": int(np.asarray(member).size),
        "n_nonmembers": int(np.asarray(nonmember).size),
    }


def summarize(result: Any, n_boot: int = DEFAULT_BOOT, seed: int = 0, delta: float = DEFAULT_DELTA) -> dict[str, Any]:
    """The JSON-ready ``attacks`` entry of results.json for one AttackResult.

    Top level: the numbers at the result's own ``level`` (slice or patient). ``patient``: the same numbers after
    averaging each patient's slice scores (the privacy unit), plus ``by_max`` with max-aggregation. For a result
    that is already per patient, the patient block repeats the top-level numbers.

    The ε lower bound is always the patient-level one (mean aggregation; ``by_max`` has its own): slices of one
    patient are not independent trials, so no bound is computed over slices.
    """
    m, n = np.asarray(result.member_scores, float), np.asarray(result.nonmember_scores, float)
    mp, npat = np.asarray(result.member_patients, str), np.asarray(result.nonmember_patients, str)
    per_patient = {how: (aggregate_by_patient(m, mp, how), aggregate_by_patient(n, npat, how))
                   for how in ("mean", "max")}
    bounds = {how: eps_lower_bound(pm, pn, delta, seed=seed) for how, ((pm, _), (pn, _)) in per_patient.items()}
    out = _block(m, n, mp, npat, n_boot, seed, bounds["mean"])
    out["level"] = result.level
    patient: dict[str, Any] = {}
    for how, ((pm, pm_ids), (pn, pn_ids)) in per_patient.items():
        block = _block(pm, pn, pm_ids, pn_ids, n_boot, seed, bounds[how])
        if how == "mean":
            patient = {**block, "aggregation": "mean"}
        else:
            patient["by_max"] = block
    out["patient"] = patient
    return _json_ready(out)


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
