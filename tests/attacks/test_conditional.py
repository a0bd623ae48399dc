"""Conditional fidelity (vendor / pathology Classification Accuracy Score): known answers on the phantom, the
run cache, the chance guard, and the values' way into results.json and the report."""
from __future__ import annotations

import dataclasses
import functools
import importlib

import numpy as np
import pytest
import torch

from cmraudit.api import AuditContext
from cmraudit.data.sources import open_source
from cmraudit.data.splits import make_split
from cmraudit.measure.classifier import LinearProbe, _masked_quantiles, label_scores, separates

conditional = importlib.import_module("cmraudit.attacks.conditional")
VENDOR_ONLY = {"conditional": {"pathology": False}}  # the vendor probe needs no segmenter: fast


@functools.lru_cache(maxsize=1)
def phantom():
    table = open_source("phantom:40").load(32)
    return table, make_split(table, seed=0)


def _context(tmp_path, synthetic, data=None, options=VENDOR_ONLY) -> AuditContext:
    table, split = phantom()
    return AuditContext(model="m", generator=None, data=data if data is not None else table, split=split,
                        synthetic=synthetic, profile="smoke", seed=0, workdir=tmp_path / "models" / "m",
                        options=options)


def _reference():
    table, split = phantom()
    return table.select_patients(split.reference)


def test_right_vendor_scores_like_real_and_vendor_blind_scores_chance(tmp_path):
    ref = _reference()
    faithful = conditional.Conditional().compute(_context(tmp_path, ref))
    # every image shows vendor A, whatever vendor it was asked for (masks and labels stay the conditioning ones)
    a = np.flatnonzero(ref.vendors == "A")
    blind = dataclasses.replace(ref, images=ref.images[a[np.arange(len(ref)) % len(a)]])
    ignored = conditional.Conditional().compute(_context(tmp_path, blind))

    real = faithful["vendor_balanced_accuracy"].details
    assert real["informative"] and real["chance"] == pytest.approx(0.25)
    assert real["real"] > 0.6
    # the faithful generator's images are real held-out slices: it scores within the real accuracies' spread
    assert faithful["vendor_balanced_accuracy"].value > 0.5
    assert faithful["vendor_accuracy"].value == pytest.approx(real["real_conditioning"]["accuracy"])
    # the vendor-blind one scores about chance, and only its vendor-A rows are right
    assert ignored["vendor_balanced_accuracy"].value < 0.4
    per_class = ignored["vendor_accuracy"].details["per_class"]
    assert max(per_class[v]["recall"] for v in "BCD") < 0.3
    assert set(faithful) == {"vendor_accuracy", "vendor_balanced_accuracy"}


def test_probes_are_trained_once_and_reloaded_from_the_cache_folder(tmp_path, monkeypatch):
    ref = _reference()
    first = conditional.Conditional().compute(_context(tmp_path, ref))
    assert list((tmp_path / "cache").glob("conditional-probes-*.pt"))

    def refuse(*args, **kwargs):
        raise AssertionError("probe retrained")

    monkeypatch.setattr(LinearProbe, "fit", refuse)
    again = conditional.Conditional().compute(_context(tmp_path, ref))  # a fresh ctx.cache: from the file
    assert {k: v.value for k, v in again.items()} == {k: v.value for k, v in first.items()}
    assert again["vendor_accuracy"].ci == first["vendor_accuracy"].ci


def test_a_classifier_at_chance_on_real_data_says_so(tmp_path):
    table, split = phantom()
    # vendor labels drawn at random per patient: the images carry no trace of them
    rng = np.random.default_rng(3)
    label = {p: "ABCD"[rng.integers(4)] for p in table.patient_ids}
    shuffled = dataclasses.replace(table, vendors=np.asarray([label[p] for p in table.patients]))
    ref = shuffled.select_patients(split.reference)
    values = conditional.Conditional().compute(_context(tmp_path, ref, data=shuffled))
    details = values["vendor_accuracy"].details
    assert not details["informative"]
    assert "cannot tell the classes apart" in details["note"]


def test_masked_quantiles_and_probe_known_answers():
    values = torch.linspace(0, 2, 16).reshape(1, 4, 4)  # 0 .. 2 in 16 steps
    masks = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]).reshape(1, 4, 4)
    q = _masked_quantiles(values, masks, (0.5,)).reshape(4)
    assert q[0] == pytest.approx(values[0, 0, 1].item(), abs=0.005)  # 2nd of the 4 smallest
    assert q[1] == pytest.approx(values[0, 1, 1].item(), abs=0.005)
    assert q[2] == pytest.approx(values[0, 2, 3].item(), abs=0.005)  # 4th of 8
    assert q[3] == 0.0  # LV absent

    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.concatenate([rng.normal(-2, 1, (50, 3)), rng.normal(2, 1, (50, 3))]))
    y = np.asarray(["a"] * 50 + ["b"] * 50)
    probe = LinearProbe.fit(x, y)
    assert np.mean(probe.predict(x) == y) > 0.95
    scores = label_scores(y, probe.predict(x), np.arange(100) // 5, probe.classes, 100, 0)
    assert separates(scores) and scores["chance"] == 0.5
    guess_a = label_scores(y, np.asarray(["a"] * 100), np.arange(100) // 5, probe.classes, 100, 0)
    assert guess_a["balanced_accuracy"] == 0.5 and not separates(guess_a)


def test_values_reach_results_json_and_the_report(register_plugin, tmp_path):
    import run_fakes

    from cmraudit import results as R
    from cmraudit.run import AuditRun

    register_plugin(run_fakes.FakePlugins(), name="run-fakes")
    config = run_fakes.tiny_config(tmp_path / "run", attacks=["known-mia"], metrics=["conditional"])
    doc = AuditRun(config).run()
    R.validate(doc)
    entry = doc["models"]["fast-tiny"]["metrics"]["conditional"]
    assert entry["status"] == "ok", entry
    values = entry["values"]
    assert {"vendor_accuracy", "pathology_accuracy", "pathology_balanced_accuracy"} <= set(values)
    assert "real" in values["vendor_accuracy"]["details"]
    html = (config.out / "report.html").read_text()
    assert "Conditional fidelity" in html
