"""The shared segmenter: MONAI Dice/HD95 against hand-computed values, determinism, learning, real-data caching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmraudit.api import AuditContext
from cmraudit.data.splits import make_split
from cmraudit.measure.segmenter import (
    dice_hd95,
    evaluate,
    load_segmenter,
    real_segmenter,
    segmenter_config,
    train_segmenter,
)


def _square(lo: int, hi: int, label: int = 3, size: int = 32) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.long)
    m[lo:hi, lo:hi] = label
    return m


def test_dice_and_hd95_match_hand_computed_values():
    # reference: a 10x10 LV square; prediction: the same square grown by 2 px on every side (14x14)
    target, pred = _square(10, 20)[None], _square(8, 22)[None]
    dice, hd = dice_hd95(pred, target, pixel_mm=1.5)
    lv = 2  # columns are RV, MYO, LV
    assert dice[0, lv] == pytest.approx(2 * 100 / (100 + 196))
    # every reference edge pixel is 2 px from the prediction's edge; prediction edge -> reference edge: 40 side
    # pixels at 2, 8 next to corners at sqrt(5), 4 corners at sqrt(8). The 95th percentile of those 52 distances
    # (linear interpolation at rank 48.45) is sqrt(8); HD95 is the larger direction, in mm
    assert hd[0, lv] == pytest.approx(math.sqrt(8) * 1.5, rel=1e-5)
    assert np.isnan(dice[0, 0]) and np.isnan(hd[0, 0])  # no RV in the reference: not scored


def test_perfect_missing_and_absent_structures():
    target = _square(5, 15, label=1) + _square(18, 28, label=3) * 1
    dice, hd = dice_hd95(target[None], target[None])
    assert dice[0, 0] == dice[0, 2] == 1.0 and hd[0, 0] == hd[0, 2] == 0.0
    assert np.isnan(dice[0, 1]) and np.isnan(hd[0, 1])  # no MYO anywhere
    empty = torch.zeros_like(target)
    dice, hd = dice_hd95(empty[None], target[None], pixel_mm=2.0)
    assert dice[0, 0] == 0.0
    assert hd[0, 0] == pytest.approx(2.0 * math.hypot(32, 32))  # missing prediction: the image diagonal


@pytest.fixture(scope="module")
def split_table(phantom_table_32):
    split = make_split(phantom_table_32, seed=0)
    return phantom_table_32, split


def test_training_is_deterministic_and_learns(split_table):
    table, split = split_table
    train, test = table.select_patients(split.members), table.select_patients(split.test)
    config = segmenter_config("smoke", steps=60)
    a = train_segmenter(train.images, train.masks, seed=3, config=config)
    b = train_segmenter(train.images, train.masks, seed=3, config=config)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    untrained = train_segmenter(train.images, train.masks, steps=0, seed=3, config=config)
    learned, chance = evaluate(a, test), evaluate(untrained, test)
    assert learned["dice"]["mean"] > 0.5 > chance["dice"]["mean"]
    assert learned["dice_ci"][0] <= learned["dice"]["mean"] <= learned["dice_ci"][1]
    assert set(learned["by_vendor"]) == set(test.vendors.tolist())
    assert set(learned["dice"]) == {"RV", "MYO", "LV", "mean"} and learned["hd95_mm"]["mean"] > 0


def test_real_segmenter_is_trained_once_per_run_and_cached_on_disk(split_table, tmp_path, monkeypatch):
    import cmraudit.measure.segmenter as seg

    table, split = split_table
    calls = []
    real_train = seg.train_segmenter
    monkeypatch.setattr(seg, "train_segmenter", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    def make(shared: dict) -> AuditContext:
        return AuditContext(model="m", generator=None, data=table, split=split, synthetic=table.take([0]),
                            profile="smoke", shared=shared, workdir=tmp_path / "run" / "models" / "m",
                            options={"segmenter": {"steps": 5}})

    shared: dict = {}
    first = real_segmenter(make(shared))
    assert real_segmenter(make(shared)) is first and len(calls) == 1  # memoised for the run (ctx.shared)
    files = list((tmp_path / "run" / "cache").glob("segmenter-*.pt"))
    assert len(files) == 1  # saved in the run folder's cache/
    again = real_segmenter(make({}))  # a new process (empty memo) loads the file
    assert len(calls) == 1
    for pa, pb in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(pa, pb)
    real_segmenter(make({}), exclude_vendor=table.vendors[0])  # another fingerprint: trained
    assert len(calls) == 2
    files[0].write_bytes(b"not a checkpoint")  # a corrupt cache file is retrained, never trusted
    assert load_segmenter(files[0]) is None
    real_segmenter(make({}))
    assert len(calls) == 3
