"""Utility: TSTR / TRTR / real + synthetic / vendor folds / pathology classification, wired the right way round."""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch

from cmraudit.api import AuditContext, Split
from cmraudit.data.splits import make_split

utility = importlib.import_module("cmraudit.attacks.utility")

OPTIONS = {"segmenter": {"steps": 60},
           "utility": {"real_plus_synthetic": True, "lovo_folds": 1, "classifier_steps": 20}}


def mixed_split(table) -> Split:
    """A shuffled split: with 20 phantom patients (one per vendor x pathology stratum) the stratified split gives
    each role a single pathology, and the classifier needs two or more in the synthetic and test sets."""
    ids = list(np.random.default_rng(1).permutation(table.patient_ids))
    split = Split(ids[:8], ids[8:12], ids[12:16], ids[16:])
    for role in ("nonmembers", "test"):
        assert len(set(table.select_patients(getattr(split, role)).pathologies.tolist())) > 1
    return split


@pytest.fixture(scope="module")
def runs(phantom_table_32, tmp_path_factory):
    """Utility of a perfect "generator" (the non-members' real slices) and a useless one (noise on their masks)."""
    table = phantom_table_32
    split = mixed_split(table)
    real = table.select_patients(split.nonmembers)
    noise = torch.rand(real.images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    shared: dict = {}  # one run: every model's context shares the run-wide memo
    options = {**OPTIONS, "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    out = {}
    for name, synthetic in (("perfect", real), ("useless", dataclasses.replace(real, images=noise))):
        ctx = AuditContext(model=name, generator=None, data=table, split=split, synthetic=synthetic, cache={},
                           shared=shared, profile="smoke", options=options)
        out[name] = utility.Utility().compute(ctx)
    return out, shared


def test_values_and_directions(runs):
    values = runs[0]["perfect"]
    expected = {"tstr_dice", "tstr_hd95", "trtr_dice", "trtr_hd95", "real_plus_synthetic_dice",
                "real_plus_synthetic_hd95", "lovo_tstr_dice", "pathology_tstr_accuracy",
                "pathology_tstr_balanced_accuracy"}
    assert set(values) == expected
    for name, v in values.items():
        assert v.direction == ("lower" if name.endswith("hd95") else "higher"), name
        assert np.isfinite(v.value)
        if name.endswith("dice") or name.startswith("pathology"):
            assert 0.0 <= v.value <= 1.0
    tstr = values["tstr_dice"]
    assert set(tstr.details["by_structure"]) == {"RV", "MYO", "LV", "mean"}
    assert tstr.details["trtr"] == values["trtr_dice"].value and tstr.details["by_vendor"]
    fold = next(iter(values["lovo_tstr_dice"].details["folds"].values()))
    assert {"tstr", "trtr", "n_test_slices"} <= set(fold)


def test_tstr_tells_a_useful_synthetic_set_from_a_useless_one(runs):
    perfect, useless = runs[0]["perfect"], runs[0]["useless"]
    assert perfect["tstr_dice"].value > useless["tstr_dice"].value + 0.2
    assert perfect["tstr_hd95"].value < useless["tstr_hd95"].value
    assert perfect["lovo_tstr_dice"].value > useless["lovo_tstr_dice"].value
    # the real baselines do not depend on the synthetic set: evaluated once per run, for every model
    assert perfect["trtr_dice"].value == useless["trtr_dice"].value
    evaluations = [key for key in runs[1] if key[0] == "segmenter-evaluation"]
    assert len(evaluations) == 1 + len(perfect["lovo_tstr_dice"].details["folds"])  # TRTR and each vendor fold


def test_lovo_vendor_choice(phantom_table_32):
    split = make_split(phantom_table_32, seed=0)
    test = phantom_table_32.select_patients(split.test)
    vendors = utility.lovo_vendors(test, phantom_table_32, folds=-1)
    assert sorted(vendors) == sorted(set(test.vendors.tolist()))
    assert utility.lovo_vendors(test, phantom_table_32, folds=1) == vendors[:1]
    assert utility.lovo_vendors(test, phantom_table_32, folds=0) == []
    one_vendor = phantom_table_32.take(np.flatnonzero(phantom_table_32.vendors == vendors[0]))
    assert utility.lovo_vendors(test, one_vendor, folds=-1) == []  # nothing left to train on


def test_metrics_are_registered():
    from cmraudit.registry import registered

    metrics = registered("metrics")
    assert metrics["fidelity"].category == "fidelity" and metrics["utility"].category == "utility"


def test_patient_accuracy_matches_scikit_learn():
    from cmraudit.attacks.utility import patient_accuracy
    from sklearn.metrics import balanced_accuracy_score

    from cmraudit.data.types import PATHOLOGIES
    from cmraudit.testing import tiny_table

    table = tiny_table(n_patients=12, slices_per_patient=2, image_size=16)
    rng = np.random.default_rng(0)
    guesses = {p: int(rng.integers(0, 5)) for p in table.patient_ids}
    images = table.images.clone()
    for i, p in enumerate(table.patients):
        images[i, 0, 0, 0] = guesses[p]  # the "network" reads its answer from the first pixel

    class Reader(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), len(PATHOLOGIES)).float() * 10

    out = patient_accuracy(Reader(), dataclasses.replace(table, images=images))
    labels = table.patient_labels()
    truth = [PATHOLOGIES.index(labels[p][1]) for p in table.patient_ids]
    guess = [guesses[p] for p in table.patient_ids]
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, guess))
    assert out["accuracy"] == pytest.approx(np.mean(np.asarray(truth) == np.asarray(guess)))
