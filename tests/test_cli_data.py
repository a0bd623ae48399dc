"""`cmraudit data inspect | preview | export-phantom`, and bad input as one stderr line with the right exit code."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli

from cmraudit.data.export import export_acdc
from cmraudit.data.types import PatientVolume

try:
    import cmraudit.data.phantom  # noqa: F401

    HAS_PHANTOM = True
except ImportError:
    HAS_PHANTOM = False




def heart_volume(pid: str, vendor: str, pathology: str, lv_radius: float = 5.0, z: int = 3) -> PatientVolume:
    size = 32
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - 16, xx - 18)
    rv = ((yy - 16) / 9) ** 2 + ((xx - 8) / 4) ** 2 < 1
    mask2d = np.where(d < lv_radius, 3, np.where(d < lv_radius + 2.5, 2, np.where(rv, 1, 0)))
    mask = np.repeat(mask2d[None], z, 0).astype(np.int64)
    image = np.array([60.0, 310.0, 100.0, 330.0], np.float32)[mask]
    return PatientVolume(pid, vendor, pathology, {"ED": image, "ES": image}, {"ED": mask, "ES": mask},
                         (1.4, 1.4, 8.0), {"height": 170.0, "weight": 64.0})


@pytest.fixture
def acdc_dir(tmp_path):
    root = tmp_path / "acdc"
    export_acdc([heart_volume("patient001", "A", "NOR"), heart_volume("patient002", "B", "DCM", lv_radius=7.0)], root)
    return root


def test_inspect_json(acdc_dir, capsys):
    code, out, err = run_cli(["data", "inspect", f"acdc:{acdc_dir}", "--json", "--size", "32"], capsys)
    assert code == 0 and err == []
    summary = json.loads(out)
    assert summary["patients"] == 2 and summary["slices"] == 12 and summary["image_size"] == 32
    assert summary["vendors"] == {"A": 1, "B": 1} and summary["pathologies"] == {"DCM": 1, "NOR": 1}
    fractions = summary["label_fractions"]
    assert set(fractions) == {"BG", "RV", "MYO", "LV"} and sum(fractions.values()) == pytest.approx(1, abs=1e-3)
    assert all(fractions[k] > 0 for k in ("RV", "MYO", "LV"))
    assert -1 <= summary["intensity"]["min"] < summary["intensity"]["max"] <= 1


def test_inspect_table_and_preview(acdc_dir, tmp_path, capsys):
    code, out, _ = run_cli(["data", "inspect", f"acdc:{acdc_dir}", "--size", "32"], capsys)
    assert code == 0 and "patients" in out and "label fractions" in out
    png = tmp_path / "grid.png"
    code, out, err = run_cli(["data", "preview", f"acdc:{acdc_dir}", str(png), "--size", "32", "--n", "4"], capsys)
    assert code == 0 and err == [] and str(png) in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_skipped_patient_is_one_warning_line(acdc_dir, capsys):
    (acdc_dir / "patient002" / "patient002_frame01_gt.nii.gz").unlink()
    code, out, err = run_cli(["data", "inspect", f"acdc:{acdc_dir}", "--json", "--size", "32"], capsys)
    assert code == 0 and json.loads(out)["patients"] == 1
    assert len(err) == 1 and err[0].startswith("cmraudit: warning: ") and "patient002_frame01_gt.nii.gz" in err[0]


def test_unusable_inputs_are_one_error_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["data", "inspect", f"acdc:{empty}"], capsys)
    assert code == 1 and err == [f"cmraudit: error: {empty}: no ACDC patients found (expected patientNNN/Info.cfg)"]

    (empty / "info.csv").write_text("External code,Vendor,ED\nA1,A,0\n")
    code, _, err = run_cli(["data", "inspect", f"mnms:{empty}"], capsys)
    assert code == 1 and err == [f"cmraudit: error: {empty / 'info.csv'}: missing columns ES, Pathology"]

    code, _, err = run_cli(["data", "inspect", "dicom:/data"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("cmraudit: error: unknown data scheme 'dicom'")


def test_export_refuses_a_non_empty_folder(acdc_dir, capsys):
    if not HAS_PHANTOM:
        pytest.skip("cmraudit.data.phantom is not importable")
    code, _, err = run_cli(["data", "export-phantom", str(acdc_dir), "--n", "2"], capsys)
    assert code == 1 and err == [f"cmraudit: error: {acdc_dir}: folder is not empty (choose an empty folder, "
                                 "or overwrite)"]


@pytest.mark.skipif(not HAS_PHANTOM, reason="cmraudit.data.phantom is not importable")
def test_export_phantom_round_trip(tmp_path, capsys):
    """The phantom exported to ACDC layout reads back as the same patients, labels and anatomy."""
    from cmraudit.data.inspect import summarize
    from cmraudit.data.sources import open_source

    out_dir = tmp_path / "phantom-acdc"
    code, out, err = run_cli(["data", "export-phantom", str(out_dir), "--n", "8"], capsys)
    assert code == 0 and err == [] and "wrote 8 patients" in out
    exported = open_source(f"acdc:{out_dir}").load(32)
    phantom = open_source("phantom:8").load(32)
    assert exported.patient_ids == phantom.patient_ids
    assert exported.patient_labels() == phantom.patient_labels()  # vendor and pathology per patient
    a, b = summarize(exported), summarize(phantom)
    for label, fraction in b["label_fractions"].items():
        assert a["label_fractions"][label] == pytest.approx(fraction, abs=0.005), label
    assert abs(a["slices"] - b["slices"]) <= 0.02 * b["slices"]
