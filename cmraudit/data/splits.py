"""Patient-level splits: members / non-members / reference / test, stratified by vendor and pathology.

The privacy unit is the patient, so every split is by patient: a patient's slices are all in one role.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..api import Split
from ..errors import ConfigError, RunError
from .types import SliceTable

DEFAULT_FRACTIONS = {"members": 0.4, "nonmembers": 0.2, "reference": 0.2, "test": 0.2}


def make_split(table: SliceTable, seed: int = 0, fractions: dict[str, float] | None = None) -> Split:
    """Assign each patient one role, stratified by (vendor, pathology), deterministic from ``seed``.

    Within each stratum patients are shuffled and dealt to the roles by largest remainder, so small strata still
    spread over the roles and the totals match ``fractions`` as closely as integers allow.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if set(fractions) != set(Split.ROLES) or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ConfigError(f"split fractions need the roles {', '.join(Split.ROLES)} with non-negative values")
    total = sum(fractions.values())
    weights = np.array([fractions[r] / total for r in Split.ROLES])
    labels = table.patient_labels()
    strata: dict[tuple[str, str], list[str]] = {}
    for patient in sorted(labels):
        strata.setdefault(labels[patient], []).append(patient)
    rng = np.random.default_rng(seed)
    assigned: dict[str, list[str]] = {r: [] for r in Split.ROLES}
    # carry the fractional remainders across strata so totals stay close to the targets
    debt = np.zeros(len(Split.ROLES))
    for key in sorted(strata):
        patients = strata[key]
        rng.shuffle(patients)
        want = weights * len(patients) + debt
        counts = np.floor(want).astype(int)
        rest = len(patients) - counts.sum()
        order = np.argsort(-(want - counts), kind="stable")
        counts[order[:rest]] += 1
        debt = want - counts
        start = 0
        for role, c in zip(Split.ROLES, counts):
            assigned[role].extend(patients[start:start + c])
            start += c
    return Split(*(sorted(assigned[r]) for r in Split.ROLES), seed=seed)


def save_split(split: Split, path: Path) -> None:
    from ..io import atomic_write_text

    atomic_write_text(path, json.dumps(split.to_dict(), indent=1))


def load_split(path: Path) -> Split:
    try:
        return Split.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: not a readable split file ({exc})") from None
