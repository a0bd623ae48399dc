"""ROC curve, AUC (Mann–Whitney), TPR at a target FPR, membership advantage: one score per example."""
from __future__ import annotations

from typing import Any, Sequence

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
    [(tpr, fpr)] = _weighted_tpr_at_fpr(*_labelled(member, nonmember), None, (target,))
    n_non = np.asarray(nonmember).size
    return {"tpr": float(tpr[0]), "achieved_fpr": float(fpr[0]), "resolvable": bool(n_non * target >= 1 - 1e-9)}


def _weighted_tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None,
                         targets: Sequence[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(TPR, achieved FPR) at the largest FPR ≤ each target, for each row of ``weights`` (B, N) (frequency weights
    from a bootstrap); one value each if weights is None.

    The ROC's points are the distinct scores plus the origin, as in :func:`roc_curve`, and both rates only grow
    along it, so the answer is the point just above the first non-member (in descending score order) whose
    cumulative weight takes the FPR past the target: every member and non-member scoring strictly higher counts,
    and nothing tied with it (ties form one point). Members and non-members are summed separately, vectorised over
    the replicates, and the cumulative sums serve every target."""
    w = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    is_member = labels.astype(bool)
    orders = [np.flatnonzero(group)[np.argsort(-scores[group], kind="mergesort")] for group in (is_member, ~is_member)]
    ascending = [-scores[order] for order in orders]  # minus the scores, descending scores as ascending keys
    cums = []
    for order in orders:
        cum = np.c_[np.zeros(len(w)), np.cumsum(w[:, order], axis=1)]
        cums.append(cum / cum[:, -1:])
    rows = np.arange(len(w))
    out = []
    for target in targets:
        over = cums[1][:, 1:] > target * (1 + 1e-12)
        any_over = over.any(1)
        cut = ascending[1][np.where(any_over, over.argmax(1), 0)]  # minus the first offending non-member's score
        counted = [np.where(any_over, np.searchsorted(keys, cut, side="left"), keys.size) for keys in ascending]
        out.append((cums[0][rows, counted[0]], cums[1][rows, counted[1]]))
    return out


def advantage(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Membership advantage max over thresholds of TPR − FPR (Yeom et al. 2018)."""
    fpr, tpr, _ = roc_curve(member, nonmember)
    return float(np.max(tpr - fpr))
