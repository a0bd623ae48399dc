"""The patient as the unit: per-patient aggregation of slice scores and bootstraps that resample patients."""
from __future__ import annotations

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
    counts = np.zeros((n_boot, n_patients))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return counts[:, inverse]


def auc_ci(member: np.ndarray, nonmember: np.ndarray, member_patients: np.ndarray, nonmember_patients: np.ndarray,
           n_boot: int = DEFAULT_BOOT, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the AUC from a stratified bootstrap that resamples patients, not slices: members and
    non-members are resampled separately (stratified), and a resampled patient contributes all its slices, so
    slices of one patient are never treated as independent evidence."""
    scores, labels = _labelled(member, nonmember)
    rng = np.random.default_rng(seed)
    weights = np.concatenate([_patient_weights(member_patients, n_boot, rng),
                              _patient_weights(nonmember_patients, n_boot, rng)], axis=1)
    values = _weighted_auc(scores, labels, weights)
    lo, hi = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def tpr_ci(member: np.ndarray, nonmember: np.ndarray, member_patients: np.ndarray, nonmember_patients: np.ndarray,
           target: float, n_boot: int = DEFAULT_BOOT, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile CI of the TPR at FPR ≤ ``target`` from the same stratified patient bootstrap as :func:`auc_ci`.

    At a low FPR the threshold sits among the top few non-member scores, and slices of one patient move together:
    with a dozen non-member patients, one patient's slices decide whether a threshold lets 0 % or 8 % of the
    non-members through, and one member patient's slices shift the TPR by a tenth. The point estimate alone cannot
    carry a verdict (Carlini et al. 2022 read TPR at low FPR with thousands of independent examples)."""
    scores, labels = _labelled(member, nonmember)
    rng = np.random.default_rng(seed)
    weights = np.concatenate([_patient_weights(member_patients, n_boot, rng),
                              _patient_weights(nonmember_patients, n_boot, rng)], axis=1)
    values, _ = _weighted_tpr_at_fpr(scores, labels, weights, target)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def cluster_bootstrap_mean(values: np.ndarray, groups: np.ndarray, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                           alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
    """Mean of ``values`` with a percentile CI from resampling ``groups`` (e.g. patients) with replacement."""
    values = np.asarray(values, dtype=np.float64)
    weights = _patient_weights(groups, n_boot, np.random.default_rng(seed))
    boot = (weights * values).sum(1) / weights.sum(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), (float(lo), float(hi))
