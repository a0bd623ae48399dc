"""Empirical ε lower bounds: from a membership test on independent units (Jagielski et al. 2020; Nasr et al.
2021), and from one training run with canaries (Steinke, Nasr & Jagielski 2023)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .roc import _labelled, roc_curve

DEFAULT_DELTA = 1e-5
#: pre-registered guess fractions of the one-run audit (its union bound runs over these)
DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)


def clopper_pearson(k: np.ndarray | int, n: int, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided (1 − alpha) binomial confidence interval for k successes out of n."""
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    lo = np.where(k > 0, beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return np.nan_to_num(lo), np.nan_to_num(hi, nan=1.0)


def _eps_at(member: np.ndarray, nonmember: np.ndarray, thresholds: np.ndarray, delta: float,
            alpha: float) -> np.ndarray:
    """(2, T) ε lower bounds of the tests "member when score >= threshold": row 0 log((TPR_lo − δ) / FPR_hi), row 1
    the mirrored log((TNR_lo − δ) / FNR_hi); Clopper–Pearson at level 1 − alpha; −inf where nothing is shown."""
    n_pos, n_neg = member.size, nonmember.size
    tp = n_pos - np.searchsorted(np.sort(member), thresholds, side="left")
    fp = n_neg - np.searchsorted(np.sort(nonmember), thresholds, side="left")
    tpr_lo, _ = clopper_pearson(tp, n_pos, alpha)
    _, fpr_hi = clopper_pearson(fp, n_neg, alpha)
    tnr_lo, _ = clopper_pearson(n_neg - fp, n_neg, alpha)
    _, fnr_hi = clopper_pearson(n_pos - tp, n_pos, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.stack([np.clip(tpr_lo - delta, 0, None) / fpr_hi, np.clip(tnr_lo - delta, 0, None) / fnr_hi]))
    return np.where(np.isfinite(out), out, -np.inf)


def eps_lower_bound(member: np.ndarray, nonmember: np.ndarray, delta: float = DEFAULT_DELTA,
                    alpha: float = 0.05, seed: int = 0) -> float:
    """Empirical ε lower bound with Clopper–Pearson bounds on the test's error rates (Jagielski et al. 2020; Nasr
    et al. 2021): log((TPR_lo − δ) / FPR_hi), or the mirrored log((TNR_lo − δ) / FNR_hi).

    Each score must be one independent trial: pass one score per privacy unit (patient or canary), never slices
    of one patient. The threshold is not chosen on the scores it is judged on (that makes the bound optimistic):
    the units are split in two halves (seeded), the threshold and direction are chosen on one half and the bound
    evaluated on the other, both ways round, at level alpha / 2 each (a union bound over the two), and the larger
    of the two is returned. With few units it is 0 by construction, which is the honest answer.
    """
    member = np.asarray(member, dtype=np.float64).ravel()
    nonmember = np.asarray(nonmember, dtype=np.float64).ravel()
    _labelled(member, nonmember)  # same checks as every other statistic
    if member.size < 2 or nonmember.size < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    halves = [np.array_split(rng.permutation(x), 2) for x in (member, nonmember)]
    best = 0.0
    for choose, judge in ((0, 1), (1, 0)):
        m_sel, n_sel = halves[0][choose], halves[1][choose]
        thresholds = roc_curve(m_sel, n_sel)[2][1:]
        chosen = _eps_at(m_sel, n_sel, thresholds, delta, alpha / 2)
        direction, column = np.unravel_index(int(np.argmax(chosen)), chosen.shape)
        held_out = _eps_at(halves[0][judge], halves[1][judge], thresholds[[column]], delta, alpha / 2)[direction, 0]
        best = max(best, float(held_out))
    return best


def _one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P-value of ≥ v correct out of r guesses on m canaries under (ε, δ)-DP (Steinke et al. 2023, main theorem):
    P[W ≥ v] + 2mδ · max_{i=1..v} P[v − i ≤ W < v] / i, W ~ Binomial(r, eᵋ / (1 + eᵋ))."""
    from scipy.stats import binom

    q = 1.0 / (1.0 + math.exp(-eps))
    tail = float(binom.sf(v - 1, r, q))
    if delta > 0 and v > 0:
        below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v − i ≤ W < v] for i = 1..v
        tail += 2 * m * delta * float(np.max(below / np.arange(1, v + 1)))
    return min(tail, 1.0)


def one_run_eps_from_counts(r: int, v: int, beta: float = 0.05, delta: float = 0.0, m: int | None = None) -> float:
    """ε lower bound at confidence 1 − ``beta`` from v correct out of r guesses (Steinke, Nasr & Jagielski,
    "Privacy Auditing with One (1) Training Run", NeurIPS 2023): the largest ε with
    P[Binomial(r, eᵋ / (1 + eᵋ)) ≥ v] ≤ beta, 0 when even ε = 0 is not rejected.

    δ = 0 (the default): P[Binomial(r, p) ≥ v] is the Beta(v, r − v + 1) CDF at p, increasing in p, so the root is
    exactly p = Beta.ppf(beta, v, r − v + 1), the one-sided (1 − beta) Clopper–Pearson lower limit of v / r
    (:func:`clopper_pearson` at level 2·beta), and ε = log(p / (1 − p)). No numerical root finding: this is exact.

    δ > 0: the paper's theorem adds 2mδ · max_{i=1..v} P[v − i ≤ W < v] / i to the p-value (m = the number of
    canaries, default r); the root in ε is then found with scipy's brentq. The added term is at most 2mδ (2% of
    the p-value's scale for m = 10³, δ = 10⁻⁵) and usually far smaller, but it is not always negligible against a
    union-corrected beta, so pass ``delta`` when the mechanism is (ε, δ)-DP rather than dismissing it.
    """
    r, v = int(r), int(v)
    if not (0 <= v <= r):
        raise ValueError(f"need 0 <= correct <= guesses (got {v} of {r})")
    if not 0 < beta < 1:
        raise ValueError(f"beta must lie strictly between 0 and 1 (got {beta})")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must lie in [0, 1] (got {delta})")
    m = r if m is None else int(m)
    if m < r:
        raise ValueError(f"cannot make {r} guesses on {m} canaries")
    if r == 0 or v == 0:
        return 0.0
    if delta == 0:
        p = float(clopper_pearson(v, r, 2 * beta)[0])
        return math.log(p / (1 - p)) if p > 0.5 else 0.0
    from scipy.optimize import brentq

    def excess(eps: float) -> float:
        return _one_run_p_value(m, r, v, eps, delta) - beta

    if excess(0.0) >= 0:
        return 0.0
    hi = 1.0
    while excess(hi) < 0:
        hi *= 2
        if hi > 1e3:  # P[Binomial(r, ~1) ≥ v] → 1 long before this
            return float("inf")
    return float(brentq(excess, 0.0, hi, xtol=1e-10))


def one_run_eps_lower_bound(scores: np.ndarray, included: np.ndarray, beta: float = 0.05,
                            guess_fractions: tuple[float, ...] = DEFAULT_GUESS_FRACTIONS, delta: float = 0.0,
                            seed: int = 0) -> dict[str, Any]:
    """One-run ε lower bound (Steinke, Nasr & Jagielski 2023) from m canaries, each included in training
    independently with probability ½: ``scores`` (m,) one score per canary (higher = more likely included),
    ``included`` (m,) bool.

    For each guess fraction f of the pre-registered grid the auditor guesses "in" for the k highest and "out" for
    the k lowest scores, k = round(f · m / 2) (at most m // 2), abstaining on the rest: r = 2k guesses, v correct,
    bound :func:`one_run_eps_from_counts` at confidence 1 − β/len(grid). A union bound over the grid makes the
    largest of them a valid bound at confidence 1 − β; it is returned with the r, v and f that gave it.

    The fractions must be fixed before the scores are seen (which is why the grid is an argument, not searched);
    the bound is invalid if the canaries' inclusion was not an independent fair coin per canary or the scores used
    ``included``. Ties are broken by a random permutation seeded by ``seed`` (a fixed order would let the
    canaries' index order, which may follow ``included``, decide the guesses); the random tie-break is a
    post-processing independent of ``included``, so the bound stays valid. ``delta`` = 0 is the (ε, 0) form of the
    theorem; see :func:`one_run_eps_from_counts` for what δ > 0 adds.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    z = np.asarray(included).ravel()
    if s.size != z.size or s.size == 0:
        raise ValueError(f"need one inclusion flag per score (got {s.size} scores and {z.size} flags)")
    if not np.isfinite(s).all():
        raise ValueError("canary scores must be finite")
    if z.dtype != bool:
        if not np.isin(z, (0, 1)).all():
            raise ValueError("included must be boolean (or 0/1)")
        z = z.astype(bool)
    fractions = tuple(float(f) for f in guess_fractions)
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError("guess fractions must lie in (0, 1]")
    m = s.size
    perm = np.random.default_rng(seed).permutation(m)
    order = perm[np.argsort(s[perm], kind="stable")]  # ascending; ties in random order
    beta_each = beta / len(fractions)
    best: dict[str, Any] = {"epsilon": 0.0, "guesses": 0, "correct": 0, "fraction": fractions[0]}
    for f in fractions:
        k = min(int(math.floor(f * m / 2 + 0.5)), m // 2)
        if k == 0:
            continue
        v = int(z[order[m - k:]].sum() + (~z[order[:k]]).sum())
        eps = one_run_eps_from_counts(2 * k, v, beta_each, delta, m)
        if eps > best["epsilon"] or best["guesses"] == 0:
            best = {"epsilon": eps, "guesses": 2 * k, "correct": v, "fraction": f}
    return {**best, "beta": float(beta), "delta": float(delta), "canaries": int(m)}
