"""cmraudit.stats against scikit-learn, and its edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from cmraudit import stats
from cmraudit.api import AttackResult


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_auc_match_sklearn(seed, tied):
    rng = np.random.default_rng(seed)
    m, n = rng.normal(0.4, 1, 37), rng.normal(0, 1, 53)
    if tied:
        m, n = np.round(m), np.round(n)
    y, s = np.r_[np.ones(m.size), np.zeros(n.size)], np.r_[m, n]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ours = stats.roc_curve(m, n)
    np.testing.assert_allclose(ours[0], fpr)
    np.testing.assert_allclose(ours[1], tpr)
    np.testing.assert_allclose(ours[2][1:], thr[1:])
    assert stats.auc(m, n) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert stats.advantage(m, n) == pytest.approx(np.max(tpr - fpr))


def test_tpr_at_fpr_takes_largest_achieved_fpr_below_target():
    member = np.array([10, 9, 8, 7, 1.0])
    nonmember = np.arange(10, dtype=float) * 0.5  # 0 .. 4.5, between the fourth and fifth member
    out = stats.tpr_at_fpr(member, nonmember, 0.1)
    assert out == {"tpr": 0.8, "achieved_fpr": 0.1, "resolvable": True}
    assert stats.tpr_at_fpr(member, nonmember, 0.099)["achieved_fpr"] == 0.0
    assert stats.tpr_at_fpr(member, nonmember, 0.01)["resolvable"] is False  # 10 non-members < 1 / 0.01
    out = stats.tpr_at_fpr(member, nonmember, 0.25)
    assert out["achieved_fpr"] == 0.2 and out["tpr"] == 0.8  # 0.2 is the largest achieved FPR ≤ 0.25


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bootstrap_tpr_matches_sklearn_with_sample_weights(seed):
    """Each bootstrap replicate's TPR at FPR <= target is scikit-learn's weighted ROC read at that target, ties and
    patients drawn zero times included."""
    from cmraudit.stats.patients import _stratified_weights
    from cmraudit.stats.roc import _weighted_tpr_at_fpr

    rng = np.random.default_rng(seed)
    m, n = np.round(rng.normal(0.5, 1, 60), 1), np.round(rng.normal(0, 1, 140), 1)
    weights = _stratified_weights(rng.integers(0, 12, 60).astype(str), rng.integers(0, 20, 140).astype(str), 25, seed)
    y, s = np.r_[np.ones(m.size), np.zeros(n.size)], np.r_[m, n]
    targets = (0.1, 0.01, 0.03)
    ours = _weighted_tpr_at_fpr(s, y, weights, targets)
    for row, w in enumerate(weights):
        fpr, tpr, _ = roc_curve(y, s, sample_weight=w, drop_intermediate=False)
        for target, (tprs, fprs) in zip(targets, ours):
            i = np.flatnonzero(fpr <= target * (1 + 1e-12))[-1]
            assert (tprs[row], fprs[row]) == pytest.approx((tpr[i], fpr[i]), abs=1e-12)


def _clustered(rng: np.random.Generator, patients: int, shift: float = 0.0, prefix: str = "p"):
    """Ten slices per patient whose scores share a patient effect, as white-box signals do."""
    effect = np.repeat(rng.normal(size=patients), 10)
    ids = np.repeat([f"{prefix}{i}" for i in range(patients)], 10)
    return effect + 0.5 * rng.normal(size=patients * 10) + shift, ids


def test_tpr_ci_is_the_patient_bootstrap_of_the_reported_tpr():
    rng = np.random.default_rng(0)
    (m, mp), (n, npat) = _clustered(rng, 24, 0.8), _clustered(rng, 12, prefix="n")
    for target in (0.1, 0.01):
        point = stats.tpr_at_fpr(m, n, target)["tpr"]
        lo, hi = stats.tpr_ci(m, n, mp, npat, target, n_boot=400)
        assert 0.0 <= lo <= point <= hi <= 1.0 and hi - lo > 0.05
    # one patient per slice: the same scores as independent units give a narrower interval
    lo, hi = stats.tpr_ci(m, n, mp, npat, 0.1, n_boot=400)
    lo_s, hi_s = stats.tpr_ci(m, n, np.arange(m.size).astype(str), np.arange(n.size).astype(str), 0.1, n_boot=400)
    assert hi_s - lo_s < hi - lo
    separable = stats.tpr_ci(m + 20, n, mp, npat, 0.01, n_boot=200)
    assert separable == (1.0, 1.0)


def test_tpr_ci_does_not_flag_noise_over_many_splits():
    """No membership, 24 member and 12 non-member patients of ten correlated slices: the TPR@1% point estimate
    exceeds 0.05 on about a quarter of the draws (measured 23 % of 200), the CI's lower bound almost never; members
    shifted by two patient SDs are caught on most draws."""
    noise_point = noise_lower = caught = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        (m, mp), (n, npat) = _clustered(rng, 24), _clustered(rng, 12, prefix="n")
        noise_point += stats.tpr_at_fpr(m, n, 0.01)["tpr"] > 0.05
        noise_lower += stats.tpr_ci(m, n, mp, npat, 0.01, n_boot=300, seed=seed)[0] > 0.05
        caught += stats.tpr_ci(m + 2.0, n, mp, npat, 0.01, n_boot=300, seed=seed)[0] > 0.05
    assert noise_point >= 6 and noise_lower <= 2 and caught >= 45


def test_perfect_separation_and_eps_bound():
    member, nonmember = np.linspace(1, 2, 200), np.linspace(-2, 0, 200)
    assert stats.auc(member, nonmember) == 1.0
    assert stats.tpr_at_fpr(member, nonmember, 0.001)["tpr"] == 1.0
    # threshold chosen on one half, judged on the other 100 + 100 at alpha / 2 = 0.025 (two-sided CP):
    # 0/100 false positives give FPR_hi = 1 - 0.0125^(1/100) and TPR_lo = 0.0125^(1/100)
    hi = 1 - 0.0125 ** (1 / 100)
    assert stats.eps_lower_bound(member, nonmember, delta=0) == pytest.approx(np.log((1 - hi) / hi), rel=1e-6)
    assert stats.eps_lower_bound(np.zeros(50), np.zeros(50)) == 0.0


def test_eps_bound_is_not_optimistic_on_pure_noise():
    """Scores that carry no membership: choosing the threshold on the judged scores finds a spurious ε > 0 in
    about 7% of draws of 200 + 200 units (measured); the held-out choice keeps it well under the nominal 5%."""
    rng = np.random.default_rng(0)
    positive = sum(stats.eps_lower_bound(rng.normal(size=200), rng.normal(size=200), seed=s) > 0 for s in range(100))
    assert positive <= 2


def test_eps_bound_uses_patients_not_slices():
    """Ten identical slices per patient must not count as ten trials: the summary's bound is the patient one."""
    from cmraudit.api import AttackResult

    rng = np.random.default_rng(1)
    member, nonmember = rng.normal(0.6, 1, 12), rng.normal(0, 1, 12)
    result = AttackResult(np.repeat(member, 10), np.repeat(nonmember, 10), np.repeat(np.arange(12), 10).astype(str),
                          np.repeat(np.arange(12, 24), 10).astype(str))
    out = stats.summarize(result, n_boot=50)
    assert out["eps_lower_bound"] == out["patient"]["eps_lower_bound"] == stats.eps_lower_bound(member, nonmember)


def test_clopper_pearson_matches_scipy_binomtest():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (10, 10), (17, 120)]:
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")
        lo, hi = stats.clopper_pearson(k, n)
        assert (float(lo), float(hi)) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_patient_aggregation():
    scores, patients = np.array([1.0, 3.0, 5.0, 0.0]), np.array(["b", "b", "a", "c"])
    mean, ids = stats.aggregate_by_patient(scores, patients, "mean")
    assert ids.tolist() == ["a", "b", "c"] and mean.tolist() == [5.0, 2.0, 0.0]
    assert stats.aggregate_by_patient(scores, patients, "max")[0].tolist() == [5.0, 3.0, 0.0]


def test_bootstrap_resamples_patients_not_slices():
    """Ten patients per side whose 50 slices are identical: the evidence is 10 vs 10, not 500 vs 500."""
    rng = np.random.default_rng(0)
    pm, pn = rng.normal(0.5, 1, 10), rng.normal(0, 1, 10)
    m, n = np.repeat(pm, 50), np.repeat(pn, 50)
    by_patient = stats.auc_ci(m, n, np.repeat(np.arange(10), 50), np.repeat(np.arange(10, 20), 50), n_boot=500)
    by_slice = stats.auc_ci(m, n, np.arange(500), np.arange(500, 1000), n_boot=500)
    patient_level = stats.auc_ci(pm, pn, np.arange(10), np.arange(10, 20), n_boot=500)
    assert by_patient[1] - by_patient[0] > 3 * (by_slice[1] - by_slice[0])
    assert by_patient == pytest.approx(patient_level, abs=0.08)


def test_summarize_fields_and_score_file_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    result = AttackResult(rng.normal(1, 1, 40), rng.normal(0, 1, 30), np.repeat(np.arange(8), 5).astype(str),
                          np.repeat(np.arange(8, 14), 5).astype(str), arrays={"extra": np.arange(3)})
    out = stats.summarize(result, n_boot=200)
    assert set(out) == {"auc", "auc_ci", "tpr_at_fpr", "eps_lower_bound", "advantage", "level", "n_members",
                        "n_nonmembers", "patient"}
    assert set(out["tpr_at_fpr"]) == {"0.1", "0.01", "0.001"}
    assert all(e["ci"][0] <= e["ci"][1] for e in out["tpr_at_fpr"].values())
    assert out["patient"]["n_members"] == 8 and out["patient"]["aggregation"] == "mean"
    assert out["auc_ci"][0] <= out["auc"] <= out["auc_ci"][1]
    from cmraudit.run.folder import load_scores, save_scores

    save_scores(result, tmp_path / "s.npz")
    again = load_scores(tmp_path / "s.npz")
    assert stats.summarize(again, n_boot=200) == out
    assert again.arrays["extra"].tolist() == [0, 1, 2]


def test_rejects_empty_or_non_finite():
    with pytest.raises(ValueError):
        stats.auc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError):
        stats.auc(np.array([np.nan]), np.array([1.0]))
