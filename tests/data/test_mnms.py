"""The M&Ms loader on a hand-written M&Ms-layout fixture: 4-D volumes, CSV frames, label remap, diagnoses."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmraudit.data.mnms import MnmsSource
from cmraudit.data.nifti import DataWarning
from cmraudit.errors import DataError

SPACING = (1.25, 1.25, 10.0)
H, W, Z, T = 40, 48, 3, 6
# M&Ms label values (Campello et al. 2021): 1 LV, 2 MYO, 3 RV
M_LV, M_MYO, M_RV = 1, 2, 3

# the unlabelled vendor-C case warns in every test; the tests that care check it with pytest.warns
pytestmark = pytest.mark.filterwarnings("ignore::cmraudit.data.nifti.DataWarning")


def mnms_heart(lv_radius: float) -> np.ndarray:
    """(H, W, Z) M&Ms labels with the LV on the left half of the image and a larger RV on the right half."""
    yy, xx = np.mgrid[:H, :W]
    mask = np.zeros((H, W, Z), np.uint8)
    for k in range(Z):
        r = lv_radius * (1 - 0.15 * k)
        d = np.hypot(yy - H / 2, xx - 14)
        ring = d < r + 3
        rv = (((yy - H / 2) / (2.0 * r)) ** 2 + ((xx - 32) / (1.2 * r)) ** 2 < 1) & ~ring
        mask[..., k][rv] = M_RV
        mask[..., k][ring] = M_MYO
        mask[..., k][d < r] = M_LV
    return mask


def write_case(root: Path, code: str, ed: int, es: int, labelled: bool = True, seed: int = 0) -> np.ndarray:
    """A 4-D ``_sa`` cine and (optionally) a 4-D ``_sa_gt`` labelled only at frames ed and es."""
    rng = np.random.default_rng(seed)
    folder = root / code
    folder.mkdir(parents=True)
    gt = np.zeros((H, W, Z, T), np.uint8)
    gt[..., ed] = mnms_heart(7.0)
    gt[..., es] = mnms_heart(4.5)
    image = np.zeros((H, W, Z, T), np.float32)
    for t in range(T):
        phase_mask = gt[..., t] if gt[..., t].any() else gt[..., ed]
        image[..., t] = np.array([80.0, 300.0, 110.0, 290.0])[phase_mask] + rng.normal(0, 5, (H, W, Z))
    affine = np.diag([*SPACING, 1.0])
    img = nib.Nifti1Image(image, affine)
    img.header.set_zooms((*SPACING, 0.03))
    nib.save(img, str(folder / f"{code}_sa.nii.gz"))
    if labelled:
        nib.save(nib.Nifti1Image(gt, affine), str(folder / f"{code}_sa_gt.nii.gz"))
    return gt


def write_csv(path: Path, rows: list[dict], columns=("External code", "VendorName", "Vendor", "Centre", "ED", "ES",
                                                      "Age", "Pathology")) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["", *columns])  # the published CSV starts with an unnamed index column
        for i, row in enumerate(rows):
            writer.writerow([i, *[row.get(c, "") for c in columns]])


@pytest.fixture
def mnms_root(tmp_path):
    root = tmp_path / "OpenDataset"
    gts = {
        "A1D0Q7": write_case(root / "Training" / "Labeled", "A1D0Q7", ed=0, es=3),
        "B2F4K5": write_case(root / "Training" / "Labeled", "B2F4K5", ed=1, es=4, seed=1),
        "D4H9J2": write_case(root / "Validation", "D4H9J2", ed=0, es=2, seed=2),
    }
    write_case(root / "Training" / "Unlabeled", "C9Z8X7", ed=0, es=3, labelled=False, seed=3)
    write_csv(root / "mnms_info.csv", [
        {"External code": "A1D0Q7", "VendorName": "Siemens", "Vendor": "A", "Centre": 1, "ED": 0, "ES": 3,
         "Pathology": "NOR"},
        {"External code": "B2F4K5", "VendorName": "Philips", "Vendor": "B", "Centre": 2, "ED": 1, "ES": 4,
         "Pathology": "ARV"},
        {"External code": "C9Z8X7", "VendorName": "GE", "Vendor": "C", "Centre": 4, "ED": 0, "ES": 3,
         "Pathology": "HCM"},
        {"External code": "D4H9J2", "VendorName": "Canon", "Vendor": "D", "Centre": 5, "ED": 0, "ES": 2,
         "Pathology": "HHD"},
    ])
    return root, gts


def test_cases_vendors_pathologies_and_unlabelled_skip(mnms_root):
    root, _ = mnms_root
    source = MnmsSource(str(root))
    with pytest.warns(DataWarning, match="1 unlabelled case.*C9Z8X7"):
        vols = list(source.volumes())
    assert [v.patient for v in vols] == ["A1D0Q7", "B2F4K5", "D4H9J2"]
    assert [v.vendor for v in vols] == ["A", "B", "D"]
    assert [v.pathology for v in vols] == ["NOR", "RV", "OTHER"]  # ARV -> RV, HHD -> OTHER
    assert [v.info["diagnosis"] for v in vols] == ["NOR", "ARV", "HHD"]
    assert vols[1].info["vendorname"] == "Philips" and vols[1].info["centre"] == "2"
    assert vols[0].spacing_hwz == pytest.approx(SPACING)
    assert len(source.warnings) == 1


def test_labels_are_remapped_to_acdc_order(mnms_root):
    root, gts = mnms_root
    vols = {v.patient: v for v in MnmsSource(str(root)).volumes()}
    vol, gt = vols["B2F4K5"], gts["B2F4K5"]
    for phase, frame in (("ED", 1), ("ES", 4)):
        on_disk = np.transpose(gt[..., frame], (2, 0, 1))
        np.testing.assert_array_equal(vol.masks[phase] == 1, on_disk == M_RV)  # ACDC 1 = RV
        np.testing.assert_array_equal(vol.masks[phase] == 2, on_disk == M_MYO)
        np.testing.assert_array_equal(vol.masks[phase] == 3, on_disk == M_LV)  # ACDC 3 = LV
    assert (vol.masks["ED"] == 3).sum() > (vol.masks["ES"] == 3).sum()  # ED and ES taken from the CSV frames


def test_loaded_table_has_rv_right_and_lv_left(mnms_root):
    """Independent of the remap table: the structure called RV must be where the fixture put the RV (right)."""
    root, _ = mnms_root
    table = MnmsSource(str(root)).load(64)
    assert table.patient_ids == ["A1D0Q7", "B2F4K5", "D4H9J2"]
    cols = np.broadcast_to(np.arange(64), table.masks.shape)
    masks = table.masks.numpy()
    rv_col, lv_col = cols[masks == 1].mean(), cols[masks == 3].mean()
    # 18 px at 1.25 mm apart in the fixture = 22.5 mm = 9 px in a 160 mm field of view at 64 px
    assert rv_col > lv_col + 6
    assert (masks == 1).sum() > (masks == 3).sum()  # the fixture's RV is the larger cavity


def test_csv_path_as_argument_and_uncatalogued_case(mnms_root):
    root, _ = mnms_root
    write_case(root / "Testing", "E5E5E5", ed=0, es=3, seed=9)
    source = MnmsSource(str(root / "mnms_info.csv"))
    with pytest.warns(DataWarning):
        vols = list(source.volumes())
    assert len(vols) == 3
    assert any("not in the CSV" in w and "E5E5E5" in w for w in source.warnings)


def test_labels_missing_at_the_csv_frame_skip_the_patient(mnms_root):
    root, _ = mnms_root
    csv_path = root / "mnms_info.csv"
    csv_path.write_text(csv_path.read_text().replace("Philips,B,2,1,4", "Philips,B,2,2,4"))
    source = MnmsSource(str(root))
    with pytest.warns(DataWarning):
        vols = list(source.volumes())
    assert [v.patient for v in vols] == ["A1D0Q7", "D4H9J2"]
    message = next(w for w in source.warnings if "B2F4K5" in w)
    assert "no labels at the ED frame 2" in message and "labelled frames: [1, 4]" in message


def test_csv_missing_columns_is_one_error_naming_the_csv(tmp_path):
    write_case(tmp_path, "A1D0Q7", ed=0, es=3)
    write_csv(tmp_path / "info.csv", [{"External code": "A1D0Q7"}], columns=("External code", "Vendor", "ED", "ES"))
    with pytest.raises(DataError) as err:
        list(MnmsSource(str(tmp_path)).volumes())
    assert str(err.value) == f"{tmp_path / 'info.csv'}: missing column Pathology"
