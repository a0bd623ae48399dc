"""Patient-level splits: disjoint, complete, deterministic, on target sizes, stratified by pathology and vendor."""
from __future__ import annotations

from collections import Counter

import pytest

from cmraudit.api import Split
from cmraudit.data.splits import load_split, make_split, save_split
from cmraudit.errors import ConfigError


@pytest.fixture(scope="module")
def table40():
    from cmraudit.data.sources import open_source

    return open_source("phantom:40").load(16)


def test_every_patient_in_exactly_one_role(table40):
    split = make_split(table40, seed=0)
    roles = [p for r in Split.ROLES for p in getattr(split, r)]
    assert sorted(roles) == sorted(table40.patient_ids)
    assert len(set(roles)) == len(roles)


def test_sizes_follow_fractions_and_seed_determines_split(table40):
    split = make_split(table40, seed=3)
    assert [len(getattr(split, r)) for r in Split.ROLES] == [16, 8, 8, 8]
    assert make_split(table40, seed=3) == split
    assert make_split(table40, seed=4).members != split.members


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_role_spreads_over_pathologies_and_vendors(table40, seed):
    split = make_split(table40, seed=seed)
    labels = table40.patient_labels()
    for role in Split.ROLES:
        patients = getattr(split, role)
        pathologies = Counter(labels[p][1] for p in patients)
        vendors = Counter(labels[p][0] for p in patients)
        assert len(pathologies) == 5 and max(pathologies.values()) - min(pathologies.values()) <= 1, (role, pathologies)
        assert len(vendors) >= 3, (role, vendors)


def test_custom_fractions_and_bad_fractions(table40):
    split = make_split(table40, fractions={"members": 0.5, "nonmembers": 0.5, "reference": 0, "test": 0})
    assert len(split.members) == len(split.nonmembers) == 20 and not split.reference and not split.test
    with pytest.raises(ConfigError, match="split fractions"):
        make_split(table40, fractions={"members": 1.0})


def test_save_and_load_round_trip(table40, tmp_path):
    split = make_split(table40, seed=1)
    save_split(split, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == split
