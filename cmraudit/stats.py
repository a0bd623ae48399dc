"""The one implementation of every membership-inference summary: ROC, AUC with a patient bootstrap CI, TPR at low
FPR, an empirical ε lower bound and the membership advantage, at slice and at patient level.

Conventions: higher score = more likely a member; members are the positive class. Every number here can be
recomputed from a saved score file with scikit-learn (``roc_curve(..., drop_intermediate=False)``,
``roc_auc_score``), which the tests check.

References: Carlini et al. 2022, "Membership inference attacks from first principles" (TPR at low FPR, log-scale
ROC); Jagielski et al. 2020 and Nasr et al. 2021 (empirical ε from Clopper–Pearson bounds on FPR and FNR); Yeom et
al. 2018 (membership advantage = max TPR − FPR).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

FPR_TARGETS: tuple[float, ...] = (0.1, 0.01, 0.001)
DEFAULT_BOOT = 1000
DEFAULT_DELTA = 1e-5


# --------------------------------------------------------------------------------------------------- ROC
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
    fpr, tpr, _ = roc_curve(member, nonmember)
    ok = np.flatnonzero(fpr <= target * (1 + 1e-12))
    i = ok[-1]  # fpr and tpr are non-decreasing, so the last admissible point has the largest of both
    n_non = np.asarray(nonmember).size
    return {"tpr": float(tpr[i]), "achieved_fpr": float(fpr[i]), "resolvable": bool(n_non * target >= 1 - 1e-9)}


def advantage(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Membership advantage max over thresholds of TPR − FPR (Yeom et al. 2018)."""
    fpr, tpr, _ = roc_curve(member, nonmember)
    return float(np.max(tpr - fpr))


# --------------------------------------------------------------------------------------------------- ε bound
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


# --------------------------------------------------------------------------------------------------- patients
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


def cluster_bootstrap_mean(values: np.ndarray, groups: np.ndarray, n_boot: int = DEFAULT_BOOT, seed: int = 0,
                           alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
    """Mean of ``values`` with a percentile CI from resampling ``groups`` (e.g. patients) with replacement."""
    values = np.asarray(values, dtype=np.float64)
    weights = _patient_weights(groups, n_boot, np.random.default_rng(seed))
    boot = (weights * values).sum(1) / weights.sum(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), (float(lo), float(hi))


# --------------------------------------------------------------------------------------------------- summary
def _block(member: np.ndarray, nonmember: np.ndarray, member_patients: np.ndarray, nonmember_patients: np.ndarray,
           n_boot: int, seed: int, eps_bound: float) -> dict[str, Any]:
    return {
        "auc": auc(member, nonmember),
        "auc_ci": list(auc_ci(member, nonmember, member_patients, nonmember_patients, n_boot, seed)),
        "tpr_at_fpr": {str(f): tpr_at_fpr(member, nonmember, f) for f in FPR_TARGETS},
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


# ------------------------------------------------------------------------------------- audit power and canaries
DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)


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
