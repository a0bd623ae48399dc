"""Audit power (null AUC SD, the AUC an audit can rule out, units needed) and the one-run ε lower bound of
Steinke, Nasr & Jagielski 2023, against the worked numbers of AUDIT-STATISTICS.md and by simulation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from cmraudit import stats


@pytest.mark.parametrize("n1, n2, sd", [(24, 12, 0.104), (80, 40, 0.056), (50, 50, 0.058), (100, 100, 0.041),
                                        (128, 128, 0.036)])
def test_null_auc_sd_matches_table(n1, n2, sd):
    # 24 × 12 is 0.10347, which the table rounds up to 0.104
    assert stats.null_auc_sd(n1, n2) == pytest.approx(sd, abs=6e-4)


@pytest.mark.parametrize("n1, n2, bound", [(24, 12, 0.67), (80, 40, 0.59), (50, 50, 0.60), (100, 100, 0.57),
                                           (128, 128, 0.56)])
def test_one_sided_upper_bound_column(n1, n2, bound):
    # the table's one-sided 95% bound at power ½ (z_power = 0): 0.5 + 1.645 · SD
    assert stats.ruled_out_auc(n1, n2, alpha=0.10, power=0.5) == pytest.approx(bound, abs=0.005)


def test_null_auc_sd_is_the_simulated_sd():
    rng = np.random.default_rng(0)
    aucs = [stats.auc(rng.normal(size=24), rng.normal(size=12)) for _ in range(4000)]
    assert np.std(aucs) == pytest.approx(stats.null_auc_sd(24, 12), rel=0.05)


def test_ruled_out_auc():
    assert stats.ruled_out_auc(24, 12) == pytest.approx(0.5 + 2.80 * 0.104, abs=2e-3)
    assert stats.ruled_out_auc(24, 12) > 0.6  # the default phantom split cannot rule out AUC 0.6
    assert stats.ruled_out_auc(100, 100) < stats.ruled_out_auc(24, 12)
    with pytest.raises(ValueError):
        stats.null_auc_sd(0, 12)


def test_ruled_out_auc_has_the_stated_power():
    # no leakage: the two-sided 95% upper bound AUĈ + 1.96 SD₀ falls below ruled_out_auc in about 80% of audits
    rng = np.random.default_rng(1)
    n1, n2 = 60, 60
    sd, target = stats.null_auc_sd(n1, n2), stats.ruled_out_auc(n1, n2)
    aucs = np.array([stats.auc(rng.normal(size=n1), rng.normal(size=n2)) for _ in range(3000)])
    assert np.mean(aucs + 1.959964 * sd < target) == pytest.approx(0.8, abs=0.03)


def test_units_needed():
    # the table's reasoning: (1.645 + 0.84) · SD ≤ 0.1 needs about 100 units a side (one-sided 95%)
    n1, n2 = stats.units_needed(0.6, nonmember_ratio=1.0, alpha=0.10)
    assert n1 == n2 and 95 <= n1 <= 110
    # two-sided 95% (the default) asks for (1.96 + 0.84) · SD ≤ 0.1: SD ≤ 0.0357, about 131 a side
    n1, n2 = stats.units_needed(0.6, nonmember_ratio=1.0)
    assert n1 == n2 and 125 <= n1 <= 140
    assert stats.ruled_out_auc(n1, n2) <= 0.6 < stats.ruled_out_auc(n1 - 1, n2 - 1)
    # the patient split's 2 : 1 ratio
    n1, n2 = stats.units_needed(0.6)
    assert n2 == math.ceil(n1 / 2) and stats.ruled_out_auc(n1, n2) <= 0.6
    assert stats.ruled_out_auc(n1 - 1, math.ceil((n1 - 1) / 2)) > 0.6
    assert stats.units_needed(0.99, 1.0) == (1, 1) or stats.ruled_out_auc(*stats.units_needed(0.99, 1.0)) <= 0.99
    for bad in (0.5, 0.4, 1.2):
        with pytest.raises(ValueError):
            stats.units_needed(bad)


@pytest.mark.parametrize("r, v, eps", [(100, 60, 0.05), (100, 75, 0.70), (200, 150, 0.82), (50, 50, 2.79),
                                       (100, 100, 3.49)])
def test_one_run_bound_matches_table(r, v, eps):
    bound = stats.one_run_eps_from_counts(r, v, 0.05)
    assert bound == pytest.approx(eps, abs=0.006)
    # it is the root of the defining equation
    assert binom.sf(v - 1, r, 1 / (1 + math.exp(-bound))) == pytest.approx(0.05, rel=1e-6)


def test_one_run_bound_edges_and_delta():
    assert stats.one_run_eps_from_counts(100, 50) == 0.0
    assert stats.one_run_eps_from_counts(100, 0) == 0.0 and stats.one_run_eps_from_counts(0, 0) == 0.0
    # δ > 0 (the paper's extra term) only lowers the bound; δ = 0 through the root finder agrees with the quantile
    for r, v in ((100, 75), (100, 100)):
        plain = stats.one_run_eps_from_counts(r, v)
        assert stats.one_run_eps_from_counts(r, v, delta=1e-12, m=r) == pytest.approx(plain, abs=1e-6)
        assert stats.one_run_eps_from_counts(r, v, delta=1e-5, m=1000) < plain
    with pytest.raises(ValueError):
        stats.one_run_eps_from_counts(10, 11)


def test_perfect_attack_on_100_canaries():
    rng = np.random.default_rng(0)
    included = rng.random(100) < 0.5
    out = stats.one_run_eps_lower_bound(included + rng.normal(0, 0.01, 100), included)
    assert out["epsilon"] > 2 and out["correct"] == out["guesses"] and out["canaries"] == 100
    # f = 1 guesses "in" for exactly half the canaries, which is wrong when the coin gave more or fewer than 50
    assert out["beta"] == 0.05 and out["fraction"] in stats.DEFAULT_GUESS_FRACTIONS
    assert out["epsilon"] == pytest.approx(stats.one_run_eps_from_counts(out["guesses"], out["guesses"], 0.05 / 4))


def test_noise_scores_rarely_give_a_positive_bound():
    rng = np.random.default_rng(2)
    positive = 0
    for _ in range(200):
        included = rng.random(100) < 0.5
        positive += stats.one_run_eps_lower_bound(rng.normal(size=100), included)["epsilon"] > 0
    assert positive <= 0.05 * 200 + 8  # β = 0.05 plus Monte-Carlo slack (binomial SD ≈ 3 draws)


def test_bound_respects_a_true_eps_dp_mechanism():
    # randomised response: each canary's score is its bit, flipped with probability 1 / (1 + e^ε): exactly ε-DP
    eps, rng, above = 1.0, np.random.default_rng(3), 0
    for _ in range(300):
        included = rng.random(300) < 0.5
        flip = rng.random(300) < 1 / (1 + math.exp(eps))
        scores = (included ^ flip).astype(float)  # two values only: the random tie-break does the rest
        bound = stats.one_run_eps_lower_bound(scores, included, seed=int(rng.integers(1 << 30)))
        above += bound["epsilon"] > eps
    assert above <= 0.05 * 300


def test_ties_do_not_leak_label_order():
    # all scores equal: any index order that follows the labels must not turn into correct guesses
    included = np.r_[np.zeros(50, bool), np.ones(50, bool)]
    for z in (included, included[::-1]):
        out = stats.one_run_eps_lower_bound(np.zeros(100), z)
        assert out["epsilon"] == 0.0 and out["correct"] < 0.75 * out["guesses"]


def test_one_run_input_checks():
    with pytest.raises(ValueError):
        stats.one_run_eps_lower_bound(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError):
        stats.one_run_eps_lower_bound(np.zeros(4), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError):
        stats.one_run_eps_lower_bound(np.zeros(4), np.zeros(4, bool), guess_fractions=(0.0,))
