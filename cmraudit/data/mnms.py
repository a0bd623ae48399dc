"""M&Ms-1 loader (Campello et al., "Multi-Centre, Multi-Vendor and Multi-Disease Cardiac Segmentation: The M&Ms
Challenge", IEEE TMI 2021).

Layout, under ``mnms:PATH`` (a folder, or the information CSV inside it)::

    <any folders>/<code>/<code>_sa.nii.gz     4-D short-axis cine (X, Y, Z, T)
    <any folders>/<code>/<code>_sa_gt.nii.gz  4-D labels, present at the ED and ES frames only
    *.csv  columns External code, VendorName, Vendor, Centre, ED, ES, Pathology (ED/ES are 0-based frame indices)

M&Ms labels are 1 LV, 2 MYO, 3 RV; they are remapped to ACDC's 1 RV, 2 MYO, 3 LV on load so every source speaks
the same labels. Diagnoses map onto cmraudit's groups: NOR, DCM, HCM as themselves, ARV (arrhythmogenic right
ventricular cardiomyopathy) to RV, everything else (HHD, IHD, LVNC, AHS, Other, ...) to OTHER. IHD is not mapped
to MINF: ischaemic heart disease is broader than ACDC's MINF criteria (EF < 40% with regional wall-motion loss).
The raw diagnosis stays in ``PatientVolume.info["diagnosis"]``. Unlabelled cases (vendor C's training set) and
patients with unreadable files are skipped with a warning.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

import numpy as np

from ..api import DatasetSource
from ..errors import DataError, UsageError
from .nifti import as_image, as_labels, read_raw_pair, spacing_hwz, to_zhw, warn_skipped
from .types import VENDORS, PatientVolume

REQUIRED_COLUMNS = ("External code", "Vendor", "ED", "ES", "Pathology")
OPTIONAL_COLUMNS = ("VendorName", "Centre")
# index = M&Ms label, value = ACDC label: 1 LV -> 3, 2 MYO -> 2, 3 RV -> 1
MNMS_TO_ACDC = np.array([0, 3, 2, 1], dtype=np.int64)
PATHOLOGY_MAP = {"NOR": "NOR", "DCM": "DCM", "HCM": "HCM", "ARV": "RV"}
IMAGE_SUFFIXES = ("_sa.nii.gz", "_sa.nii")


def map_pathology(diagnosis: str) -> str:
    return PATHOLOGY_MAP.get(diagnosis.strip().upper(), "OTHER")


def _summary(codes: list[str], limit: int = 5) -> str:
    shown = ", ".join(codes[:limit])
    return shown + (f" and {len(codes) - limit} more" if len(codes) > limit else "")


def read_table(path: Path) -> dict[str, dict[str, str]]:
    """External code -> row of the M&Ms information CSV; DataError naming the CSV for missing columns."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({type(exc).__name__}: {exc})") from None
    table = {row["External code"]: row for row in rows if row["External code"]}
    if not table:
        raise DataError(f"{path}: no rows with an External code")
    return table


def _frame_index(row: dict[str, str], key: str, csv_path: Path, n_frames: int) -> int:
    try:
        frame = int(float(row[key]))
    except ValueError:
        raise DataError(f"{csv_path}: {key} of {row['External code']} is not a frame index: {row[key]!r}") from None
    if not 0 <= frame < n_frames:
        raise DataError(f"{csv_path}: {key} frame {frame} of {row['External code']} outside 0-{n_frames - 1}")
    return frame


def read_case(code: str, image_path: Path, mask_path: Path, row: dict[str, str], csv_path: Path) -> PatientVolume:
    """One M&Ms case: the ED and ES frames of the 4-D volume and labels, labels remapped to ACDC's order."""
    vendor = row["Vendor"].strip().upper()
    if vendor not in VENDORS:
        raise DataError(f"{csv_path}: unknown Vendor {row['Vendor']!r} for {code} (expected {', '.join(VENDORS)})")
    image4d, mask4d, zooms = read_raw_pair(image_path, mask_path, 4, "X, Y, Z, T")
    images, masks = {}, {}
    frames = {}
    for phase in ("ED", "ES"):
        t = frames[phase] = _frame_index(row, phase, csv_path, image4d.shape[3])
        labels = as_labels(mask4d[..., t], mask_path)
        if not labels.any():
            labelled = [i for i in range(mask4d.shape[3]) if np.any(mask4d[..., i])]
            raise DataError(f"{mask_path}: no labels at the {phase} frame {t} given in {csv_path.name} "
                            f"(labelled frames: {labelled or 'none'})")
        images[phase] = to_zhw(as_image(image4d[..., t], image_path))
        masks[phase] = to_zhw(MNMS_TO_ACDC[labels])
    diagnosis = row["Pathology"]
    info = {"file": str(image_path), "diagnosis": diagnosis, "ed_frame": frames["ED"], "es_frame": frames["ES"],
            "nb_frames": int(image4d.shape[3])}
    info.update({c.lower(): row[c] for c in OPTIONAL_COLUMNS if row.get(c)})
    return PatientVolume(code, vendor, map_pathology(diagnosis), images, masks, spacing_hwz(zooms, image_path), info)


class MnmsSource(DatasetSource):
    """M&Ms-1 layout: ``<code>/<code>_sa.nii.gz`` + ``_sa_gt.nii.gz`` (4-D) and the information CSV."""

    name = "mnms"
    description = "M&Ms-1 layout folder (mnms:PATH): <code>/<code>_sa(_gt).nii.gz and the information CSV"

    def __init__(self, arg: str | None = None) -> None:
        super().__init__(arg)
        if not arg:
            raise UsageError("the mnms source needs a folder: mnms:PATH")
        path = Path(arg).expanduser()
        self.csv_path: Path | None = path if path.suffix.lower() == ".csv" else None
        self.root = path.parent if self.csv_path else path
        #: one line per skipped patient (or group of patients) from the last ``volumes()``
        self.warnings: list[str] = []

    def find_csv(self) -> Path:
        """The CSV given, else the one CSV under the folder that has the required columns."""
        if self.csv_path is not None:
            return self.csv_path
        candidates = sorted(self.root.glob("*.csv")) or sorted(self.root.rglob("*.csv"))
        if not candidates:
            raise DataError(f"{self.root}: no M&Ms information CSV (columns {', '.join(REQUIRED_COLUMNS)})")
        errors = []
        for path in candidates:
            try:
                read_table(path)
                return path
            except DataError as exc:
                errors.append(str(exc))
        raise DataError(errors[0] if len(errors) == 1 else f"{self.root}: no usable CSV ({errors[0]}; ...)")

    def case_files(self) -> dict[str, Path]:
        """External code -> its ``_sa`` image file."""
        found: dict[str, Path] = {}
        for suffix in IMAGE_SUFFIXES:
            for path in sorted(self.root.rglob(f"*{suffix}")):
                found.setdefault(path.name[: -len(suffix)], path)
        return found

    def volumes(self) -> Iterator[PatientVolume]:
        self.warnings = []
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder")
        csv_path = self.find_csv()
        table = read_table(csv_path)
        cases = self.case_files()
        if not cases:
            raise DataError(f"{self.root}: no M&Ms cases found (expected <code>/<code>_sa.nii.gz)")
        unlabelled, uncatalogued = [], []
        yielded = 0
        for code, image_path in sorted(cases.items()):
            mask_path = image_path.with_name(f"{code}_sa_gt{image_path.name[len(code) + 3:]}")
            if code not in table:
                uncatalogued.append(code)
                continue
            if not mask_path.is_file():
                unlabelled.append(code)
                continue
            try:
                volume = read_case(code, image_path, mask_path, table[code], csv_path)
            except DataError as exc:
                warn_skipped(self.warnings, f"{exc} (patient {code} skipped)")
                continue
            yielded += 1
            yield volume
        if unlabelled:
            warn_skipped(self.warnings, f"{self.root}: {len(unlabelled)} unlabelled case(s) skipped "
                                        f"(no _sa_gt file): {_summary(unlabelled)}")
        if uncatalogued:
            warn_skipped(self.warnings, f"{csv_path}: {len(uncatalogued)} case(s) not in the CSV skipped: "
                                        f"{_summary(uncatalogued)}")
        if not yielded:
            first = self.warnings[0] if self.warnings else ""
            raise DataError(f"{self.root}: no usable M&Ms patient ({first})")
