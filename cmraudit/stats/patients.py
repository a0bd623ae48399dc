"""The patient as the unit: per-patient aggregation of slice scores and bootstraps that resample patients."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .roc import _labelled, _weighted_auc, _weighted_tpr_at_fpr

DEFAULT_BOOT = 1000


def aggregate_by_patient(scores: np.ndarray, patients: np.ndarray, how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Slice scores → one score per patient (``mean`` or ``max``); returns (scores, patient ids sorted)."""
    scores = np.asarray(scores, dtype=np.float64)
    ids, inverse = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    if how == "mean":
        out = np.bincount(inverse, weights=scores, minlength=ids.size) / np.bincount(inverse, minlength=ids.size)
    elif how == "max":
        out = np.full(ids.size, -np.inf)
        np.maximum.at(out, inverse, scores)
    else:
        raise ValueError(f"unknown patient aggregation {how!r} (use 'mean' or 'max')")
    return out, ids


def _patient_weights(patients: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, N) slice weights: patients drawn with replacement, each drawn patient bringing all its slices."""
    _, inverse = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    n_patients = int(inverse.max()) + 1
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    flat = (np.arange(n_boot)[:, None] * n_patients + draws).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_patients).reshape(n_boot, n_patients).astype(np.float64)
    return counts[:, inverse]


def _stratified_weights(member_patients: np.ndarray, nonmember_patients: np.ndarray, n_boot: int,
                        seed: int) -> np.ndarray:
    """Members' and non-members' patients resampled separately (stratified), members' columns first."""
    rng = np.random.default_rng(seed)
    return np.concatenate([_patient_weights(member_patients, n_boot, rng),
                           _patient_weights(nonmember_patients, n_boot, rng)], axis=1)


def bootstrap_cis(member: np.ndarray, nonmember: np.ndarray, member_patients: np.ndarray,
                  nonmember_patients: np.ndarray, fpr_targets: Sequence[float], n_boot: int = DEFAULT_BOOT,
                  seed: int = 0, alpha: float = 0.05) -> tuple[tuple[float, float], dict[float, tuple[float, float]]]:
    """Percentile CIs of the AUC and of the TPR at each FPR target from one stratified bootstrap that resamples
    patients, not slices: a resampled patient contributes all its slices, so slices of one patient are never
    treated as independent evidence. The same replicates as :func:`auc_ci` and :func:`tpr_ci`.

    At a low FPR the threshold sits among the top few non-member scores, and slices of one patient move together:
    with a dozen non-member patients, one patient's slices decide whether a threshold lets 0 % or 8 % of the
    non-members through, and one member patient's slices shift the TPR by a tenth. The point estimate alone cannot
    carry a verdict (Carlini et al. 2022 read TPR at low FPR over thousands of independent examples)."""
    scores, labels = _labelled(member, nonmember)
    weights = _stratified_weights(member_patients, nonmember_patients, n_boot, seed)
    quantiles = [alpha / 2, 1 - alpha / 2]
    lo, hi = np.nanquantile(_weighted_auc(scores, labels, weights), quantiles)
    tprs = _weighted_tpr_at_fpr(scores, labels, weights, fpr_targets)
    return (float(lo), float(hi)), {target: tuple(float(q) for q in np.quantile(tpr, quantiles))  # type: ignore[misc]
                                    for target, (tpr, _) in zip(fpr_targets, tprs)}


def auc_ci(member: np.ndarray, nonmember: np.ndarray, member_patients: np.ndarray, nonmember_patients: np.ndarray,
           n_boot: int = DEFAULT_BOOT, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the AUC from the stratified patient bootstrap (:func:`bootstrap_cis`)."""
    return bootstrap_cis(member, nonmember, member_patients, nonmember_patients, (), n_boot, seed, alpha)[0]


def tpr_ci(member: np.ndarray, nonmember: np.ndarray, member_patients: np.ndarray, nonmember_patients: np.ndarray,
           target: float, n_boot: int = DEFAULT_BOOT, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the TPR at FPR ≤ ``target`` from the stratified patient bootstrap (:func:`bootstrap_cis`)."""
    _, tprs = bootstrap_cis(member, nonmember, member_patients, nonmember_patients, (target,), n_boot, seed, alpha)
    return tprs[target]


def cluster_bootstrap_mean(values: np.ndarray, groups: np.ndarray, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                           alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
    """Mean of ``values`` with a percentile CI from resampling ``groups`` (e.g. patients) with replacement."""
    values = np.asarray(values, dtype=np.float64)
    weights = _patient_weights(groups, n_boot, np.random.default_rng(seed))
    boot = (weights * values).sum(1) / weights.sum(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), (float(lo), float(hi))
