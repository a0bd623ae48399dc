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
    """Assign each patient one role, stratified by pathology then vendor, deterministic from ``seed``.

    Patients are laid out pathology by pathology (pathologies in a seeded random order; within one, vendors
    interleaved, patients shuffled) and dealt to the roles one at a time: each goes to the role furthest below its target
    share, summed over the totals, the patient's pathology and the patient's vendor (sequential largest-remainder
    apportionment on three margins). Every role thus receives a spread of pathologies and vendors, and the role
    totals stay within a patient or two of ``fractions``.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if set(fractions) != set(Split.ROLES) or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ConfigError(f"split fractions need the roles {', '.join(Split.ROLES)} with non-negative values")
    total = sum(fractions.values())
    weights = np.array([fractions[r] / total for r in Split.ROLES])
    rng = np.random.default_rng(seed)
    labels = table.patient_labels()
    assigned: dict[str, list[str]] = {r: [] for r in Split.ROLES}
    # running role counts overall, per pathology and per vendor: each patient goes where the sum of deficits is largest
    counts: dict[object, np.ndarray] = {}
    for patient in _stratified_order(labels, rng):
        vendor, pathology = labels[patient]
        keys = ("all", ("pathology", pathology), ("vendor", vendor))
        tallies = [counts.setdefault(key, np.zeros(len(Split.ROLES))) for key in keys]
        # the overall total counts double so role sizes stay on target
        deficit = sum(w * (weights * (t.sum() + 1) - t) for w, t in zip((2.0, 1.0, 1.0), tallies))
        # ties go to a random role: a fixed tie-break would favour one role in a way that depends on labels
        role = int(np.argmax(deficit + rng.uniform(0, 1e-6, len(deficit))))
        for t in tallies:
            t[role] += 1
        assigned[Split.ROLES[role]].append(patient)
    return Split(*(sorted(assigned[r]) for r in Split.ROLES), seed=seed)


def _stratified_order(labels: dict[str, tuple[str, str]], rng: np.random.Generator) -> list[str]:
    """Patients grouped by pathology, vendors round-robin inside each group, everything shuffled by ``rng``."""
    by_pathology: dict[str, dict[str, list[str]]] = {}
    for patient in sorted(labels):
        vendor, pathology = labels[patient]
        by_pathology.setdefault(pathology, {}).setdefault(vendor, []).append(patient)
    order: list[str] = []
    for pathology in rng.permutation(sorted(by_pathology)).tolist():
        vendors = by_pathology[pathology]
        queues = [list(rng.permutation(vendors[v])) for v in rng.permutation(sorted(vendors)).tolist()]
        while any(queues):
            order.extend(q.pop() for q in queues if q)
    return order


def save_split(split: Split, path: Path) -> None:
    from ..io import atomic_write_text

    atomic_write_text(path, json.dumps(split.to_dict(), indent=1))


def load_split(path: Path) -> Split:
    try:
        return Split.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: not a readable split file ({exc})") from None
