"""ACDC loader (Bernard et al., "Deep learning techniques for automatic MRI cardiac multi-structures segmentation
and diagnosis: is the problem solved?", IEEE TMI 2018).

Layout, under any folder below ``acdc:PATH`` (``training/`` and ``testing/`` both work)::

    patient001/Info.cfg                   ED: 1 / ES: 12 / Group: DCM / Height / Weight / NbFrame
    patient001/patient001_frame01.nii.gz  the ED volume; ..._frame01_gt.nii.gz its labels (0 BG 1 RV 2 MYO 3 LV)
    patient001/patient001_frame12.nii.gz  the ES volume; ..._frame12_gt.nii.gz

The pathology is the ``Group`` line. ACDC was acquired on Siemens scanners, so the vendor is "A" unless Info.cfg
has a ``Vendor`` line (an exported phantom writes one). A patient with a missing, unreadable or inconsistent file
is skipped with a warning naming the file; a folder with no usable patient is an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..api import DatasetSource
from ..errors import DataError, UsageError
from .nifti import find_nifti, read_pair, warn_skipped
from .types import PATHOLOGIES, VENDOR_NAMES, VENDORS, PatientVolume

INFO_FILE = "Info.cfg"
ACDC_VENDOR = "A"  # Siemens (Bernard et al. 2018)


def parse_info(path: Path) -> dict[str, str]:
    """``Key: value`` lines of an Info.cfg, keys lower-cased."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            info[key.strip().lower()] = value.strip()
    return info


def _frame(info: dict[str, str], key: str, path: Path) -> int:
    if key not in info:
        raise DataError(f"{path}: no {key.upper()} line")
    try:
        frame = int(float(info[key]))
    except ValueError:
        raise DataError(f"{path}: {key.upper()} is not a frame number: {info[key]!r}") from None
    if frame < 0:
        raise DataError(f"{path}: {key.upper()} frame {frame} is negative")
    return frame


def parse_vendor(value: str | None, path: Path) -> str:
    """A vendor code (A-D) or scanner maker name (Siemens, Philips, GE, Canon) -> the code."""
    if value is None or not value.strip():
        return ACDC_VENDOR
    value = value.strip()
    if value.upper() in VENDORS:
        return value.upper()
    by_name = {name.lower(): code for code, name in VENDOR_NAMES.items()}
    by_name["toshiba"] = "D"  # Canon Medical was Toshiba Medical until 2018
    if value.lower() in by_name:
        return by_name[value.lower()]
    raise DataError(f"{path}: unknown Vendor {value!r} (expected one of {', '.join(VENDORS)} or "
                    f"{', '.join(VENDOR_NAMES.values())})")


def _number(info: dict[str, str], key: str) -> float | None:
    try:
        return float(info[key]) if key in info else None
    except ValueError:
        return None


def read_patient(folder: Path) -> PatientVolume:
    """One ACDC patient folder -> PatientVolume; DataError naming the file at fault."""
    cfg = folder / INFO_FILE
    info = parse_info(cfg)
    group = info.get("group")
    if not group:
        raise DataError(f"{cfg}: no Group line (the pathology is needed to condition and stratify)")
    if group.upper() not in PATHOLOGIES:
        raise DataError(f"{cfg}: unknown Group {group!r} (expected one of {', '.join(PATHOLOGIES)})")
    vendor = parse_vendor(info.get("vendor"), cfg)
    frames = {"ED": _frame(info, "ed", cfg), "ES": _frame(info, "es", cfg)}
    patient = folder.name
    images, masks = {}, {}
    spacing = None
    files = {}
    for phase, frame in frames.items():
        stem = f"{patient}_frame{frame:02d}"
        image_path = find_nifti(folder, stem)
        mask_path = find_nifti(folder, f"{stem}_gt")
        if image_path is None:
            raise DataError(f"{folder / (stem + '.nii.gz')}: missing {phase} image (frame {frame} from {INFO_FILE})")
        if mask_path is None:
            raise DataError(f"{folder / (stem + '_gt.nii.gz')}: missing {phase} labels")
        images[phase], masks[phase], phase_spacing = read_pair(image_path, mask_path)
        if phase == "ES" and images["ES"].shape != images["ED"].shape:
            raise DataError(f"{image_path}: ES volume shape differs from the ED volume's")
        spacing = spacing or phase_spacing
        files[phase] = str(image_path)
    meta = {"file": files["ED"], "files": files, "folder": str(folder), "group": group,
            "ed_frame": frames["ED"], "es_frame": frames["ES"]}
    for key, name in (("height", "height"), ("weight", "weight"), ("nbframe", "nb_frames")):
        value = _number(info, key)
        if value is not None:
            meta[name] = int(value) if name == "nb_frames" else value
    return PatientVolume(patient, vendor, group.upper(), images, masks, spacing, meta)  # type: ignore[arg-type]


class AcdcSource(DatasetSource):
    """ACDC layout: ``patientNNN/Info.cfg`` with ``patientNNN_frameXX.nii.gz`` and ``_gt`` label files."""

    name = "acdc"
    description = "ACDC layout folder (acdc:PATH): patientNNN/Info.cfg, _frameXX.nii.gz and _gt files"

    def __init__(self, arg: str | None = None) -> None:
        super().__init__(arg)
        if not arg:
            raise UsageError("the acdc source needs a folder: acdc:PATH")
        self.root = Path(arg).expanduser()
        #: one line per skipped patient from the last ``volumes()`` (also issued as DataWarning)
        self.warnings: list[str] = []

    def patient_folders(self) -> list[Path]:
        """Folders holding an Info.cfg, sorted by patient id; ``root`` itself may be one patient's folder."""
        if not self.root.exists():
            raise DataError(f"{self.root}: no such folder")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder (acdc:PATH takes the folder holding patientNNN/)")
        folders = sorted({cfg.parent for cfg in self.root.rglob(INFO_FILE)}, key=lambda p: (p.name, str(p)))
        if not folders:
            raise DataError(f"{self.root}: no ACDC patients found (expected patientNNN/{INFO_FILE})")
        return folders

    def volumes(self) -> Iterator[PatientVolume]:
        self.warnings = []
        seen: dict[str, Path] = {}
        yielded = 0
        for folder in self.patient_folders():
            if folder.name in seen:
                warn_skipped(self.warnings, f"{folder}: skipped, patient id {folder.name} already read from "
                                            f"{seen[folder.name]}")
                continue
            try:
                volume = read_patient(folder)
            except DataError as exc:
                warn_skipped(self.warnings, f"{exc} (patient {folder.name} skipped)")
                continue
            seen[folder.name] = folder
            yielded += 1
            yield volume
        if not yielded:
            first = self.warnings[0] if self.warnings else ""
            raise DataError(f"{self.root}: no usable ACDC patient ({len(self.warnings)} skipped; first: {first})")
