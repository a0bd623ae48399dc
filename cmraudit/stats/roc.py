"""ROC curve, AUC (Mann–Whitney), TPR at a target FPR, membership advantage: one score per example."""
from __future__ import annotations

from typing import Any

import numpy as np

#: the low false-positive rates every attack reports its TPR at (Carlini et al. 2022)
FPR_TARGETS: tuple[float, ...] = (0.1, 0.01, 0.001)


def _labelled(member: np.ndarray, nonmember: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    member = np.asarray(member, dtype=np.float64).ravel()
    nonmember = np.asarray(nonmember, dtype=np.float64).ravel()
    if member.size == 0 or nonmember.size == 0:
        raise ValueError("ROC statistics need at least one member and one non-member score")
    if not (np.isfinite(member).all() and np.isfinite(nonmember).all()):
        raise ValueError("membership scores must be finite")
    scores = np.concatenate([member, nonmember])
    labels = np.concatenate([np.ones(member.size), np.zeros(nonmember.size)])
    return scores, labels


def roc_curve(member: np.ndarray, nonmember: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score plus the origin (threshold +inf).

    Identical to ``sklearn.metrics.roc_curve(y, s, drop_intermediate=False)``: predicting "member" for
    ``score >= threshold`` gives the point (fpr, tpr).
    """
    scores, labels = _labelled(member, nonmember)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # ties form one point
    tps = np.cumsum(y)[last_of_value]
    fps = (last_of_value + 1) - tps
    tpr = np.r_[0.0, tps / labels.sum()]
    fpr = np.r_[0.0, fps / (labels.size - labels.sum())]
    return fpr, tpr, np.r_[np.inf, s[last_of_value]]


def auc(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Area under the ROC curve = P(member score > non-member score) + ½ P(tie) (Mann–Whitney)."""
    return float(_weighted_auc(*_labelled(member, nonmember), None)[0])


def _weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """AUC for each row of ``weights`` (B, N) (frequency weights from a bootstrap); one value if weights is None.

    Vectorised over bootstrap replicates: sort once, sum weights per distinct score, and count for every member
    the non-member weight strictly below it plus half the tied weight.
    """
    w = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    order = np.argsort(scores, kind="mergesort")
    s, y, w = scores[order], labels[order].astype(bool), w[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    w_member = np.add.reduceat(np.where(y, w, 0.0), starts, axis=1)
    w_non = np.add.reduceat(np.where(y, 0.0, w), starts, axis=1)
    below = np.cumsum(w_non, axis=1) - w_non
    total = w_member.sum(1) * w_non.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w_member * (below + 0.5 * w_non)).sum(1) / total


def log_roc_points(member: np.ndarray, nonmember: np.ndarray, max_points: int = 200) -> dict[str, list[float]]:
    """ROC points for a log–log plot: zero-FPR points dropped (they sit at -inf), thinned to ``max_points``
    while keeping the low-FPR end, where a log axis puts its resolution."""
    fpr, tpr, _ = roc_curve(member, nonmember)
    keep = fpr > 0
    fpr, tpr = fpr[keep], tpr[keep]
    if fpr.size > max_points:
        idx = np.unique(np.geomspace(1, fpr.size, max_points).astype(int) - 1)
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def tpr_at_fpr(member: np.ndarray, nonmember: np.ndarray, target: float) -> dict[str, Any]:
    """TPR at the largest achieved FPR ≤ ``target``; ``resolvable`` is False when there are fewer than
    1/target non-members, so the target cannot even be reached by a single false positive."""
    tpr, fpr = _weighted_tpr_at_fpr(*_labelled(member, nonmember), None, target)
    n_non = np.asarray(nonmember).size
    return {"tpr": float(tpr[0]), "achieved_fpr": float(fpr[0]), "resolvable": bool(n_non * target >= 1 - 1e-9)}


def _weighted_tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                         target: float) -> tuple[np.ndarray, np.ndarray]:
    """(TPR, achieved FPR) at the largest FPR ≤ ``target``, for each row of ``weights`` (B, N) (frequency weights
    from a bootstrap); one value each if weights is None. The ROC's points are the distinct scores (ties form one
    point) plus the origin, as in :func:`roc_curve`; FPR and TPR only grow along it, so the last admissible point
    has the largest TPR."""
    w = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    order = np.argsort(-scores, kind="mergesort")
    s, y, w = scores[order], labels[order].astype(bool), w[:, order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    member_w, non_w = np.where(y, w, 0.0), np.where(y, 0.0, w)
    tpr = np.c_[np.zeros(len(w)), np.cumsum(member_w, axis=1)[:, last_of_value] / member_w.sum(1, keepdims=True)]
    fpr = np.c_[np.zeros(len(w)), np.cumsum(non_w, axis=1)[:, last_of_value] / non_w.sum(1, keepdims=True)]
    last = (fpr <= target * (1 + 1e-12)).sum(1, keepdims=True) - 1
    return np.take_along_axis(tpr, last, 1)[:, 0], np.take_along_axis(fpr, last, 1)[:, 0]


def advantage(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Membership advantage max over thresholds of TPR − FPR (Yeom et al. 2018)."""
    fpr, tpr, _ = roc_curve(member, nonmember)
    return float(np.max(tpr - fpr))
