"""Known answers for the re-identification attack (Packhäuser et al. 2022).

A generator that copies its members' images (+ noise) re-identifies every member; one that draws fresh patients
(a phantom of another seed) re-identifies nobody beyond the calibrated false-flag rate; an identity network that
cannot tell patients apart makes the attack skip instead of reporting a reassuring number. The pool generator is
the one of ``test_known_answers.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
from cmraudit.attacks.reidentification import ReidentificationAttack

# tests/attacks has no __init__.py: pytest puts the folder itself on sys.path
from test_known_answers import PoolGenerator

from cmraudit.api import AuditContext, NotApplicable
from cmraudit.data.splits import make_split
from cmraudit.data.types import SliceTable
from cmraudit.run.folder import load_scores, save_scores
from cmraudit.stats import summarize
from cmraudit.testing import check_attack
from cmraudit.testing.tiny import sample_table

SIZE = 32


@pytest.fixture(scope="module")
def world():
    from cmraudit.data.sources import open_source

    table = open_source("phantom:60").load(SIZE)  # 24 members, 12 non-members, 12 reference, 12 test patients
    return table, make_split(table, seed=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run")


def _context(world, pool: SliceTable, run_dir, model: str, options=None) -> AuditContext:
    table, split = world
    generator = PoolGenerator(pool)
    synthetic = sample_table(generator, table.select_patients(split.reference), seed=0)
    return AuditContext(model=model, generator=generator, data=table, split=split, synthetic=synthetic,
                        profile="quick", workdir=run_dir / "models" / model, options=dict(options or {}))


@pytest.fixture(scope="module")
def copycat(world, run_dir):
    table, split = world
    ctx = _context(world, table.select_patients(split.members), run_dir, "copycat")
    result = ReidentificationAttack().run(ctx)
    return ctx, result, summarize(result, n_boot=400)


def test_copycat_members_are_reidentified(copycat, tmp_path):
    ctx, result, summary = copycat
    d = result.details
    # the identity network re-identifies held-out real patients
    assert d["identity_verification_auc"] >= 0.8
    lo, hi = d["identity_verification_auc_ci"]
    assert 0.6 < lo <= d["identity_verification_auc"] <= hi
    assert result.level == "patient"
    assert summary["patient"]["auc"] >= 0.95
    assert d["reidentified"]["images_share"] >= 0.8
    assert d["reidentified"]["patients_share"] >= 0.8
    assert d["reidentified"]["threshold"] == d["threshold"]
    # per-image arrays, in the synthetic set's order (the release command reads these three names)
    best, sim, flagged = (result.arrays[k] for k in ("synthetic_best_patient", "synthetic_similarity",
                                                     "synthetic_flagged"))
    n = len(ctx.synthetic)
    assert best.shape == sim.shape == flagged.shape == (n,)
    assert best.dtype.kind == "U" and sim.dtype == np.float64 and flagged.dtype == bool
    members = set(ctx.split.members)
    expected = np.array([p in members for p in best]) & (sim > d["threshold"])
    assert (flagged == expected).all()
    assert flagged.mean() == pytest.approx(d["reidentified"]["images_share"])
    save_scores(result, tmp_path / "reid.npz")
    again = load_scores(tmp_path / "reid.npz")
    assert (again.arrays["synthetic_best_patient"] == best).all()
    assert (again.arrays["synthetic_flagged"] == flagged).all()
    # the identity network is cached in the run folder, beside the models
    assert list((ctx.workdir.parent.parent / "cache").glob("identity-*.pt"))


def test_fresh_patients_are_not_reidentified(world, run_dir, copycat, monkeypatch):
    from cmraudit.data.sources import open_source
    from cmraudit.measure import identity

    # the side runs and the run's other models load the cached network instead of training it again
    monkeypatch.setattr(identity, "train_identity", lambda *a, **k: pytest.fail("identity network retrained"))
    fresh = open_source("phantom:60,seed=1").load(SIZE)  # other people, same population
    ctx = _context(world, fresh, run_dir, "fresh")
    result = ReidentificationAttack().run(ctx)
    d = result.details
    lo, hi = summarize(result, n_boot=400)["patient"]["auc_ci"]
    assert lo <= 0.5 <= hi
    assert d["identity_verification_auc"] == copycat[1].details["identity_verification_auc"]
    # calibrated on non-members: about flag_rate (1%) of a fresh generator's images are flagged
    assert d["calibration"]["flag_rate"] == 0.01
    assert d["reidentified"]["images_share"] <= 0.03
    assert d["nonmember_matches_above_threshold_share"] <= 0.03


def test_network_that_cannot_reidentify_is_not_applicable(world, run_dir):
    table, split = world
    # patient labels shuffled over slices: "same patient" means nothing, no network can verify it
    shuffled = table.take(np.arange(len(table)))
    shuffled.patients = np.random.default_rng(0).permutation(table.patients)
    ctx = _context((shuffled, make_split(shuffled, seed=0)), table.select_patients(split.members), run_dir,
                   "shuffled", options={"reidentification": {"identity_steps": 0}})
    with pytest.raises(NotApplicable, match=r"cannot re-identify real patients: verification AUC 0\.[45]"):
        ReidentificationAttack().run(ctx)
    # the setting: a floor the (good) network does not clear
    ctx = _context(world, table.select_patients(split.members), run_dir, "strict",
                   options={"reidentification": {"min_verification_auc": 0.999}})
    with pytest.raises(NotApplicable, match=r"verification AUC 0\.9\d\d .*must clear 0\.999"):
        ReidentificationAttack().run(ctx)


def test_contract(tmp_path):
    from cmraudit.data.sources import open_source

    result = check_attack(ReidentificationAttack, table=open_source("phantom:20").load(SIZE),
                          options={"cache_dir": str(tmp_path)})
    assert result.level == "patient"
    assert "identity_verification_auc" in result.details


def test_the_run_verifies_its_identity_network_once(world, run_dir, copycat, monkeypatch):
    """Contexts sharing a run's memo (every model, the canary and null audits) verify the identity network on the
    test patients and embed the same real slices once, with the numbers of a context computing them alone."""
    from cmraudit.attacks import reidentification

    calls = []
    original = reidentification.verify
    monkeypatch.setattr(reidentification, "verify", lambda *a, **k: calls.append(1) or original(*a, **k))
    table, split = world
    shared: dict = {}
    results = []
    for model in ("copycat-again", "copycat-twice"):
        ctx = _context(world, table.select_patients(split.members), run_dir, model)
        ctx.shared = shared
        results.append(ReidentificationAttack().run(ctx))
    assert len(calls) == 1
    for result in results:
        assert result.details["identity_verification_auc_ci"] == copycat[1].details["identity_verification_auc_ci"]
        np.testing.assert_array_equal(result.member_scores, copycat[1].member_scores)
        np.testing.assert_array_equal(result.nonmember_scores, copycat[1].nonmember_scores)
    # members, non-members and the synthetic set, which both contexts sampled alike
    assert sum(key[0] == "identity-embedding" for key in shared) == 3
