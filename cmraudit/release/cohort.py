"""The synthetic set as synthetic patients in the ACDC layout (``cmraudit.data.export``).

A synthetic patient is what one conditioning patient's masks produced: its ED slices and its ES slices, stacked
by ``slice_index``. A sample that conditioned on the same mask several times (``n_samples`` above the number of
masks) makes several synthetic patients, one per repetition. The ACDC layout needs an ED and an ES volume of the
same shape, so

* a synthetic patient left without ED or ES (the filter removed all of one phase) is dropped, and counted (apart
  from those the filter emptied);
* a slice position present in one phase only is dropped, and counted.

Ids are ``patient001``, ``patient002``, ... in a seeded random order, so neither the id nor the folder order points
at the conditioning patient; the prefix becomes ``synthetic`` when a ``patientNNN`` id would equal a real patient's
id (ACDC data). Vendor and Group (pathology) come from the conditioning labels. Images are written as float32 on
a 0-1000 scale (the loader rescales every patient to its own percentiles), masks as uint8, with the in-plane spacing
of the run's field of view (``FOV_MM`` / image size) and a nominal slice spacing.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..data.preprocess import FOV_MM
from ..data.types import PatientVolume, SliceTable

#: slice spacing (mm) written to the NIfTI headers: the synthetic set is 2-D, so this is nominal
NOMINAL_SLICE_SPACING = 8.0
PHASES = ("ED", "ES")


@dataclass
class Cohort:
    volumes: list[PatientVolume]
    dropped_patients: int = 0  # synthetic patients left with slices but without ED or ES
    emptied: int = 0  # synthetic patients every slice of which the filter removed
    dropped_slices: int = 0  # slices of those patients, plus slices whose position the other phase lacks
    id_prefix: str = "patient"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def slices(self) -> int:
        return sum(v.images[p].shape[0] for v in self.volumes for p in PHASES)

    def summary(self) -> dict[str, Any]:
        """Counts only (no id of a real patient, and none of a synthetic one either: they carry nothing)."""
        per = [v.images["ED"].shape[0] for v in self.volumes]
        return {"patients": len(self.volumes), "slices": self.slices,
                "slices_per_phase": {"min": min(per, default=0), "max": max(per, default=0)},
                "vendors": dict(sorted(Counter(v.vendor for v in self.volumes).items())),
                "pathologies": dict(sorted(Counter(v.pathology for v in self.volumes).items())),
                "dropped_patients_without_ed_or_es": self.dropped_patients,
                "patients_emptied_by_filter": self.emptied,
                "dropped_slices_without_partner_phase": self.dropped_slices,
                "id_prefix": self.id_prefix, **self.extra}


def repetition(table: SliceTable) -> np.ndarray:
    """Per row: how many earlier rows conditioned on the same (patient, phase, slice) mask."""
    seen: Counter = Counter()
    out = np.zeros(len(table), np.int64)
    for i, key in enumerate(zip(table.patients.tolist(), table.phases.tolist(), table.slice_index.tolist())):
        out[i] = seen[key]
        seen[key] += 1
    return out


def _id_prefix(n: int, real_ids: set[str]) -> str:
    for prefix in ("patient", "synthetic", "synth"):
        if not any(f"{prefix}{i + 1:03d}" in real_ids for i in range(n)):
            return prefix
    raise ValueError("no synthetic id prefix is free of real patient ids")  # pragma: no cover


def build_cohort(synthetic: SliceTable, keep: np.ndarray | None, real_ids: Iterable[str], seed: int = 0) -> Cohort:
    """Group the kept synthetic slices into synthetic patients (see the module docstring)."""
    keep = np.ones(len(synthetic), bool) if keep is None else np.asarray(keep, bool)
    rep = repetition(synthetic)
    rows = np.flatnonzero(keep)
    groups: dict[tuple[str, int], list[int]] = {}
    for i in rows.tolist():
        groups.setdefault((str(synthetic.patients[i]), int(rep[i])), []).append(i)
    # every conditioning patient and repetition, including those the filter emptied, is a would-be patient
    all_groups = set(zip(synthetic.patients.tolist(), rep.tolist()))
    emptied = len(all_groups) - len(groups)
    dropped_patients = dropped_slices = 0
    kept_groups: list[tuple[tuple[str, int], dict[str, np.ndarray]]] = []
    for key in sorted(groups):
        members = np.asarray(groups[key])
        by_phase = {p: members[synthetic.phases[members] == p] for p in PHASES}
        positions = {p: set(synthetic.slice_index[by_phase[p]].tolist()) for p in PHASES}
        shared = positions["ED"] & positions["ES"]
        if not shared:
            dropped_patients += 1
            dropped_slices += len(members)
            continue
        chosen = {}
        for p in PHASES:
            z = synthetic.slice_index[by_phase[p]]
            order = np.argsort(z, kind="stable")
            picked = by_phase[p][order][np.isin(z[order], sorted(shared))]
            # one slice per position (a repetition key already separates repeated masks)
            _, first = np.unique(synthetic.slice_index[picked], return_index=True)
            chosen[p] = picked[np.sort(first)]
            dropped_slices += len(by_phase[p]) - len(chosen[p])
        kept_groups.append((key, chosen))
    order = np.random.default_rng(seed).permutation(len(kept_groups))
    prefix = _id_prefix(len(kept_groups), set(map(str, real_ids)))
    spacing = FOV_MM / synthetic.image_size
    images = synthetic.images[:, 0].numpy()
    masks = synthetic.masks.numpy()
    volumes = []
    for number, index in enumerate(order.tolist(), start=1):
        _, chosen = kept_groups[index]
        first = int(chosen["ED"][0])
        volumes.append(PatientVolume(
            f"{prefix}{number:03d}", str(synthetic.vendors[first]), str(synthetic.pathologies[first]),
            {p: ((images[chosen[p]] + 1.0) * 500.0).astype(np.float32) for p in PHASES},
            {p: masks[chosen[p]].astype(np.uint8) for p in PHASES},
            (spacing, spacing, NOMINAL_SLICE_SPACING), {"ed_frame": 1, "es_frame": 2, "nb_frames": 2}))
    return Cohort(volumes, dropped_patients, emptied, dropped_slices, prefix)
