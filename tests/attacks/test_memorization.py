"""The memorisation attack's statistics on hand-made distances, and its contract."""
from __future__ import annotations

import numpy as np
from cmraudit.attacks.memorization import dcr_share

from cmraudit.registry import get
from cmraudit.testing import check_attack


def test_dcr_share_balances_patient_counts():
    """Thirty training patients against ten held-out ones, all equally far: the share is ½, not ¾."""
    rng = np.random.default_rng(0)
    d_train, d_hold = rng.uniform(1, 2, (400, 30)), rng.uniform(1, 2, (400, 10))
    groups = np.repeat(np.arange(40), 10)
    _, share, (lo, hi) = dcr_share(d_train, d_hold, groups, repeats=50)
    assert abs(share - 0.5) < 0.03 and lo < 0.5 < hi
    naive = (d_train.min(1) < d_hold.min(1)).mean()
    assert naive > 0.7  # what an unbalanced comparison would report


def test_dcr_share_detects_closer_training_set():
    rng = np.random.default_rng(1)
    d_train, d_hold = rng.uniform(0.5, 1.5, (200, 10)), rng.uniform(1, 2, (200, 10))
    _, share, (lo, _) = dcr_share(d_train, d_hold, np.arange(200) // 5)
    assert share > 0.9 and lo > 0.8


def test_memorization_contract_and_outputs():
    result = check_attack(get("attacks", "memorization"), options={"attacks": {"features": False}})
    d = result.details
    assert result.level == "patient"
    assert set(d["dcr_share"]) == {"pixel", "near_copy"}
    assert 0 <= d["memorised"]["share"] <= 1 and len(d["pairs"]) == len(result.arrays["pairs_synthetic"])
    assert result.arrays["pairs_synthetic"].shape[1:] == result.arrays["pairs_train"].shape[1:]
