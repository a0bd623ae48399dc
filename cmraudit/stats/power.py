"""How much an audit can show before it runs: the null spread of an AUC, the smallest AUC an audit rules out, and
how many units that needs (Hanley & McNeil 1982)."""
from __future__ import annotations

import math


def _z(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def null_auc_sd(n_members: float, n_nonmembers: float) -> float:
    """Standard deviation of the AUC of ``n_members`` and ``n_nonmembers`` independent units (patients or
    canaries) when members and non-members are exchangeable (no leakage): √((n₁ + n₂ + 1) / (12 n₁ n₂)), the
    Mann–Whitney U null variance divided by (n₁ n₂)² (Hanley & McNeil 1982). Without ties it is exact and does not
    depend on the attack. Count patients, not slices: slices of one patient are not independent.
    """
    n1, n2 = float(n_members), float(n_nonmembers)
    if not (n1 >= 1 and n2 >= 1):
        raise ValueError(f"need at least one member and one non-member (got {n_members} and {n_nonmembers})")
    return math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def ruled_out_auc(n_members: float, n_nonmembers: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest AUC an audit of that many independent units rules out with probability ``power`` when the model
    does not leak: 0.5 + (z_{1−α/2} + z_power) · SD₀, SD₀ = :func:`null_auc_sd` (2.80 · SD₀ for the defaults).

    "Rules out a" means the upper end of the two-sided (1 − α) confidence interval, AUĈ + z_{1−α/2} · SD₀, lies
    below a. With no leakage AUĈ ≈ N(0.5, SD₀²), so this happens with probability Φ((a − 0.5) / SD₀ − z_{1−α/2}),
    which is at least ``power`` exactly when a ≥ 0.5 + (z_{1−α/2} + z_power) · SD₀: the usual sample-size
    formula, the two-sided interval's upper bound on the CI's own scale. It uses the normal approximation and the
    null SD for the interval's width (the bootstrap CI of :func:`auc_ci` is close to it for a non-leaking model).
    A one-sided 95% bound is ``alpha=0.10`` (z = 1.645, the convention of a one-sided table: (1.645 + 0.84) · SD₀).
    """
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must lie strictly between 0 and 1")
    return 0.5 + (_z(1 - alpha / 2) + _z(power)) * null_auc_sd(n_members, n_nonmembers)


def units_needed(target_auc: float, nonmember_ratio: float = 0.5, alpha: float = 0.05,
                 power: float = 0.8) -> tuple[int, int]:
    """Smallest (members, non-members), non-members = ⌈ratio · members⌉, whose audit rules out ``target_auc``
    (:func:`ruled_out_auc` ≤ target) with probability ``power`` when the model does not leak.

    ``nonmember_ratio`` is non-members per member: 0.5 for the default patient split (40% members, 20%
    non-members, e.g. 24 : 12), 1.0 for canaries (each in with probability ½, so on average half in, half out; a
    canary audit of m canaries is (m/2, m/2)). The counts are independent units: patients or canaries.
    """
    if not target_auc > 0.5:
        raise ValueError(f"target AUC must exceed 0.5, the AUC of no leakage (got {target_auc})")
    if target_auc > 1:
        raise ValueError(f"an AUC cannot exceed 1 (got {target_auc})")
    if not nonmember_ratio > 0:
        raise ValueError(f"nonmember_ratio must be positive (got {nonmember_ratio})")

    def pair(n1: int) -> tuple[int, int]:
        return n1, max(1, math.ceil(nonmember_ratio * n1 - 1e-9))

    def enough(n1: int) -> bool:  # SD₀ falls as n1 grows (and n2 with it), so this is monotone
        return ruled_out_auc(*pair(n1), alpha, power) <= target_auc

    hi = 1
    while not enough(hi):
        hi *= 2
    lo = hi // 2  # not enough (or 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return pair(hi)


