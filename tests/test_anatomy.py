"""Anatomical plausibility checks: real phantom masks mostly pass, hand-broken masks are flagged, and slices where a
structure is legitimately absent are not."""
from __future__ import annotations

import numpy as np
import pytest

from cmraudit.measure import anatomy


def heart(size: int = 48, lv_at: tuple[int, int] | None = None, rv: bool = True, lv: bool = True) -> np.ndarray:
    """A textbook short-axis mask: LV disc inside a MYO ring, RV crescent on the left of the ring."""
    yy, xx = np.mgrid[0:size, 0:size]
    c = size // 2
    d = np.hypot(yy - c, xx - c)
    mask = np.zeros((size, size), dtype=np.int64)
    if rv:
        d_rv = np.hypot(yy - c, xx - (c - 9))
        mask[(d_rv < 9) & (d >= 10)] = 1
    mask[(d >= 6) & (d < 10)] = 2
    if lv:
        cy, cx = lv_at or (c, c)
        mask[np.hypot(yy - cy, xx - cx) < 6] = 3
    return mask


def failed(mask: np.ndarray) -> set[str]:
    checks, _, _ = anatomy.check_mask(mask)
    return {k for k, v in checks.items() if v == anatomy.FAIL}


def test_textbook_heart_passes_every_check():
    checks, areas, enclosure = anatomy.check_mask(heart())
    assert all(v == anatomy.PASS for v in checks.values()), checks
    assert enclosure == 1.0 and np.all(areas > 0)


def test_lv_outside_the_myocardium_is_flagged():
    mask = heart(lv=False)
    mask[(np.hypot(*np.mgrid[0:48, 0:48] - np.array([24, 40])[:, None, None]) < 5)] = 3  # LV beside the ring
    assert {"lv_enclosed_by_myo"} <= failed(mask)


def test_two_lv_blobs_are_flagged():
    mask = heart()
    mask[2:6, 40:44] = 3  # a second cavity outside the heart
    assert {"lv_one_component", "lv_enclosed_by_myo"} <= failed(mask)


def test_rv_touching_the_lv_and_a_broken_ring_are_flagged():
    mask = heart()
    mask[22:27, 14:22] = 1  # the RV cuts through the septum into the cavity
    assert {"rv_apart_from_lv", "lv_enclosed_by_myo"} <= failed(mask)
    open_ring = heart(rv=False)
    open_ring[:24, 14:34][open_ring[:24, 14:34] == 2] = 0  # half the myocardium missing
    assert "myo_ring_around_lv" in failed(open_ring)


def test_absent_structures_are_not_implausible():
    assert failed(heart(rv=False)) == set()  # basal / apical slice without RV
    apex = heart(rv=False, lv=False)  # the cavity has closed: myocardium only
    checks, _, _ = anatomy.check_mask(apex)
    assert failed(apex) == set() and checks["lv_enclosed_by_myo"] == anatomy.NOT_APPLICABLE
    assert failed(np.zeros((16, 16), dtype=np.int64)) == set()


def test_real_phantom_masks_are_mostly_plausible():
    from cmraudit.data.sources import open_source

    table = open_source("phantom:12").load(64)
    result = anatomy.check_masks(table.masks)
    assert result.plausible.mean() >= 0.75
    for name in ("lv_one_component", "lv_enclosed_by_myo", "myo_ring_around_lv", "rv_beside_myo"):
        share, n = result.pass_rate(name)
        assert share >= 0.95 and n > 0, (name, share)


def test_compare_reads_a_set_against_the_real_baseline():
    real = np.stack([heart(), heart(rv=False), heart()])
    broken = real.copy()
    broken[0][2:6, 40:44] = 3
    same = anatomy.compare(real, real, np.array(["NOR", "DCM", "NOR"]), np.array(["NOR", "DCM", "NOR"]))
    assert same["plausible_gap"] == 0 and all(v == 0 for v in same["area_w1"].values())
    assert same["per_pathology"]["NOR"]["LV"]["w1"] == 0
    worse = anatomy.compare(broken, real)
    assert worse["generated"]["plausible_share"] == pytest.approx(2 / 3) and worse["real"]["plausible_share"] == 1
    assert worse["check_gap"]["lv_one_component"] < 0 and worse["area_w1"]["LV"] > 0
