"""The data types every dataset source produces and every generator, attack and metric consumes.

A ``SliceTable`` is column-oriented: one tensor of images, one of masks and one array per label column. Column
storage keeps phantom generation, preprocessing, nearest-neighbour search and batching vectorised, and a patient
subset (``select_patients``) is a single index operation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

# Label convention (ACDC): M&Ms labels are remapped to these on load.
LABELS = {0: "BG", 1: "RV", 2: "MYO", 3: "LV"}
STRUCTURES = ("RV", "MYO", "LV")

# Vendor codes as in M&Ms-1 (Campello et al. 2021). ACDC was acquired on Siemens scanners (vendor A).
VENDORS = ("A", "B", "C", "D")
VENDOR_NAMES = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}

# Pathology groups as in ACDC (Bernard et al. 2018). Other M&Ms diagnoses map to OTHER.
PATHOLOGIES = ("NOR", "DCM", "HCM", "MINF", "RV", "OTHER")
PHASES = ("ED", "ES")


def vendor_index(code: str) -> int:
    return VENDORS.index(code) if code in VENDORS else 0


def pathology_index(name: str) -> int:
    return PATHOLOGIES.index(name) if name in PATHOLOGIES else PATHOLOGIES.index("OTHER")


@dataclass(frozen=True)
class Slice:
    """One 2-D short-axis slice: image (1, H, W) float in [-1, 1], mask (H, W) int64 in {0, 1, 2, 3}."""

    image: torch.Tensor
    mask: torch.Tensor
    patient: str
    vendor: str
    pathology: str
    phase: str
    slice_index: int


@dataclass
class SliceTable:
    """A set of slices stored column-wise.

    images: (N, 1, H, W) float32 in [-1, 1]; masks: (N, H, W) int64; patients, vendors, pathologies, phases:
    numpy string arrays of length N; slice_index: int array (0 = most basal slice of that volume).
    """

    images: torch.Tensor
    masks: torch.Tensor
    patients: np.ndarray
    vendors: np.ndarray
    pathologies: np.ndarray
    phases: np.ndarray
    slice_index: np.ndarray
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        self.patients = np.asarray(self.patients, dtype=str)
        self.vendors = np.asarray(self.vendors, dtype=str)
        self.pathologies = np.asarray(self.pathologies, dtype=str)
        self.phases = np.asarray(self.phases, dtype=str)
        self.slice_index = np.asarray(self.slice_index, dtype=np.int64)
        columns = (self.masks, self.patients, self.vendors, self.pathologies, self.phases, self.slice_index)
        if any(len(c) != n for c in columns):
            raise ValueError("SliceTable columns differ in length")
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, H, W), got {tuple(self.images.shape)}")
        if self.masks.shape != (n, *self.images.shape[2:]):
            raise ValueError("masks must be (N, H, W) matching the images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Slice:
        return Slice(self.images[i], self.masks[i], str(self.patients[i]), str(self.vendors[i]),
                     str(self.pathologies[i]), str(self.phases[i]), int(self.slice_index[i]))

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def patient_ids(self) -> list[str]:
        """Patient ids in first-appearance order."""
        return list(dict.fromkeys(self.patients.tolist()))

    def vendor_indices(self) -> torch.Tensor:
        return torch.tensor([vendor_index(v) for v in self.vendors], dtype=torch.long)

    def pathology_indices(self) -> torch.Tensor:
        return torch.tensor([pathology_index(p) for p in self.pathologies], dtype=torch.long)

    def phase_indices(self) -> torch.Tensor:
        """(N,) int64: 0 for ED, 1 for ES (the order of ``PHASES``; an unknown phase counts as ED)."""
        return torch.tensor([PHASES.index(p) if p in PHASES else 0 for p in self.phases], dtype=torch.long)

    def relative_positions(self) -> torch.Tensor:
        """(N,) float32 in [0, 1]: each slice's position base (0) -> apex (1) within its patient's volume at its
        phase, ``slice_index / max(1, slices - 1)``.

        The slice count of a (patient, phase) volume is read as its largest ``slice_index`` + 1, so slices a loader
        dropped (e.g. empty apical ones) do not shift the others. Call it on a table that holds whole volumes (the
        training set, a patient subset), not on a few rows: a row subset may lack the volume's last slice."""
        volumes: dict[tuple[str, str], int] = {}
        inverse = np.asarray([volumes.setdefault(k, len(volumes))
                              for k in zip(self.patients.tolist(), self.phases.tolist())], dtype=np.int64)
        last = np.zeros(len(volumes), dtype=np.int64)
        np.maximum.at(last, inverse, self.slice_index)
        position = self.slice_index / np.maximum(1, last[inverse])
        return torch.from_numpy(position.astype(np.float32))

    def take(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> "SliceTable":
        idx = np.asarray(index, dtype=np.int64)
        t = torch.from_numpy(idx)
        return SliceTable(self.images[t], self.masks[t], self.patients[idx], self.vendors[idx],
                          self.pathologies[idx], self.phases[idx], self.slice_index[idx], self.source, dict(self.meta))

    def select_patients(self, patients: Iterable[str]) -> "SliceTable":
        wanted = set(patients)
        return self.take(np.flatnonzero([p in wanted for p in self.patients]))

    def patient_rows(self) -> dict[str, np.ndarray]:
        """Row indices of each patient's slices (for patient-level sampling and aggregation)."""
        rows: dict[str, list[int]] = {}
        for i, p in enumerate(self.patients.tolist()):
            rows.setdefault(p, []).append(i)
        return {p: np.asarray(r, dtype=np.int64) for p, r in rows.items()}

    def patient_labels(self) -> dict[str, tuple[str, str]]:
        """patient -> (vendor, pathology)."""
        out: dict[str, tuple[str, str]] = {}
        for p, v, d in zip(self.patients.tolist(), self.vendors.tolist(), self.pathologies.tolist()):
            out.setdefault(p, (v, d))
        return out

    @staticmethod
    def concat(tables: Sequence["SliceTable"], source: str = "") -> "SliceTable":
        if not tables:
            raise ValueError("no tables to concatenate")
        return SliceTable(
            torch.cat([t.images for t in tables]), torch.cat([t.masks for t in tables]),
            np.concatenate([t.patients for t in tables]), np.concatenate([t.vendors for t in tables]),
            np.concatenate([t.pathologies for t in tables]), np.concatenate([t.phases for t in tables]),
            np.concatenate([t.slice_index for t in tables]), source or tables[0].source, dict(tables[0].meta))


@dataclass
class PatientVolume:
    """One patient's short-axis cine at ED and ES, before slicing: what NIfTI loaders and the phantom produce.

    images[phase]: (Z, H, W) float32 raw scanner intensities, slice 0 the most basal; masks[phase]: (Z, H, W)
    int64 ACDC labels. spacing_hwz: millimetres along H (rows), W (columns) and Z (slice spacing).
    """

    patient: str
    vendor: str
    pathology: str
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    spacing_hwz: tuple[float, float, float] = (1.5, 1.5, 8.0)
    info: dict = field(default_factory=dict)
