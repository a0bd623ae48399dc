"""The per-user cache: phantom tables, public pretraining and calibrated noise multipliers are computed once per
user, give the same numbers as computing them again, and can be switched off."""
from __future__ import annotations

import numpy as np
import pytest
import run_fakes
import torch

from cmraudit.data.sources import open_source
from cmraudit.run import AuditRun
from cmraudit.run.config import ModelSpec
from cmraudit.run.folder import load_samples


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "user-cache"
    monkeypatch.setenv("CMRAUDIT_CACHE_DIR", str(root))
    return root


def test_a_cached_phantom_table_equals_a_fresh_render(cache, monkeypatch):
    first = open_source("phantom:3,seed=7").load(32)
    assert len(list((cache / "phantom").glob("*.npz"))) == 1
    again = open_source("phantom:3,seed=7").load(32)  # from the cache
    monkeypatch.setenv("CMRAUDIT_CACHE_DIR", "off")
    fresh = open_source("phantom:3,seed=7").load(32)
    for table in (again, fresh):
        assert torch.equal(table.images, first.images) and torch.equal(table.masks, first.masks)
        assert table.masks.dtype == first.masks.dtype == torch.int64
        for column in ("patients", "vendors", "pathologies", "phases", "slice_index"):
            assert np.array_equal(getattr(table, column), getattr(first, column))
        assert table.source == first.source and table.meta == first.meta


def test_a_corrupt_cache_entry_is_rendered_again(cache):
    first = open_source("phantom:2,seed=7").load(32)
    (entry,) = (cache / "phantom").glob("*.npz")
    entry.write_bytes(b"not an npz")
    assert torch.equal(open_source("phantom:2,seed=7").load(32).images, first.images)


def test_public_pretraining_is_reused_across_runs_with_the_same_numbers(cache, register_plugin, tmp_path):
    register_plugin(run_fakes.FakePlugins(), name="run-fakes")
    models = [ModelSpec("fast-tiny-dp2", "fast-tiny", 2.0)]

    def run(out):
        config = run_fakes.tiny_config(out, models=models, dp={"accountant": "rdp"})
        return AuditRun(config).run()

    cold = run(tmp_path / "a")
    warm = run(tmp_path / "b")
    assert cold["models"]["fast-tiny-dp2"]["training"]["public_pretraining"]["from_user_cache"] is False
    assert warm["models"]["fast-tiny-dp2"]["training"]["public_pretraining"]["from_user_cache"] is True
    assert len(list((cache / "pretraining").iterdir())) == 1
    a = load_samples(tmp_path / "a" / "models" / "fast-tiny-dp2" / "samples.npz")
    b = load_samples(tmp_path / "b" / "models" / "fast-tiny-dp2" / "samples.npz")
    assert torch.equal(a.images, b.images)
    assert cold["models"]["fast-tiny-dp2"]["training"]["dp"] == warm["models"]["fast-tiny-dp2"]["training"]["dp"]


def test_a_calibrated_noise_multiplier_is_reused_and_a_tampered_one_is_not(cache, monkeypatch):
    import opacus.accountants.utils as opacus_utils

    from cmraudit.training import privacy
    from cmraudit.user_cache import entry_path

    dp = privacy.DPConfig(epsilon=8.0, delta=1e-5, accountant="rdp")
    searches = []
    search = opacus_utils.get_noise_multiplier

    def counted(**kwargs):
        searches.append(kwargs)
        return search(**kwargs)

    monkeypatch.setattr(opacus_utils, "get_noise_multiplier", counted)
    first = privacy.calibrate(dp, 0.25, 40)
    assert privacy.calibrate(dp, 0.25, 40) == first and len(searches) == 1
    assert privacy.epsilon_spent("rdp", [(first, 0.25, 40)], 1e-5) <= 8.0
    assert privacy.calibrate(dp, 0.25, 41) != first and len(searches) == 2  # another setting: another search

    # an entry that would overspend the budget (too little noise) is searched again, and the search replaces it
    entries = list(entry_path("dp-calibration", "x").parent.glob("*.json"))
    assert len(entries) == 2
    for entry in entries:
        entry.write_text("0.5")
    assert privacy.calibrate(dp, 0.25, 40) == first and len(searches) == 3
    assert privacy.calibrate(dp, 0.25, 40) == first and len(searches) == 3
