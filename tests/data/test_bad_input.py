"""Bad input: one-line errors naming the file, or the patient skipped with a warning when the rest can go on."""
from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from cmraudit.data.acdc import AcdcSource
from cmraudit.data.export import export_acdc
from cmraudit.data.mnms import MnmsSource
from cmraudit.data.nifti import DataWarning, read_nifti, read_pair
from cmraudit.data.types import PatientVolume
from cmraudit.errors import DataError, UsageError

pytestmark = pytest.mark.filterwarnings("ignore::cmraudit.data.nifti.DataWarning")


def disc_volume(pid: str, z: int = 3, size: int = 24) -> PatientVolume:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - size / 2)
    mask2d = np.where(d < 4, 3, np.where(d < 6, 2, 0)) + np.where((d >= 6) & (d < 9) & (xx < size / 2 - 3), 1, 0)
    mask = np.repeat(mask2d[None], z, 0).astype(np.int64)
    image = (np.array([50.0, 300.0, 90.0, 320.0])[mask] + np.arange(z)[:, None, None]).astype(np.float32)
    return PatientVolume(pid, "A", "NOR", {"ED": image, "ES": image * 0.9}, {"ED": mask, "ES": mask})


@pytest.fixture
def acdc_dir(tmp_path):
    root = tmp_path / "acdc"
    export_acdc([disc_volume(f"patient00{i}") for i in (1, 2, 3)], root)
    return root


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_truncated_gz_is_a_data_error_naming_the_file(acdc_dir):
    path = acdc_dir / "patient001" / "patient001_frame01.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])  # loses the gzip trailer only
    with pytest.raises(DataError) as err:
        read_nifti(path)
    assert one_line(err.value).startswith(f"{path}: cannot read NIfTI")


def test_garbage_and_missing_files(tmp_path):
    garbage = tmp_path / "x.nii.gz"
    garbage.write_bytes(b"not a nifti at all" * 10)
    with pytest.raises(DataError, match="x.nii.gz: cannot read NIfTI"):
        read_nifti(garbage)
    not_gzip_inside = tmp_path / "y.nii.gz"
    not_gzip_inside.write_bytes(gzip.compress(b"\0" * 400))
    with pytest.raises(DataError, match="y.nii.gz: cannot read NIfTI"):
        read_nifti(not_gzip_inside)
    with pytest.raises(DataError, match="z.nii.gz: file not found"):
        read_nifti(tmp_path / "z.nii.gz")


def _rewrite(path, data):
    img = nib.load(str(path))
    new = nib.Nifti1Image(data, img.affine)  # a fresh header: the stored dtype follows the new data
    new.header.set_zooms(img.header.get_zooms()[: data.ndim])
    nib.save(new, str(path))


def test_bad_patients_are_skipped_with_a_warning_naming_the_file(acdc_dir):
    truncated = acdc_dir / "patient002" / "patient002_frame02.nii.gz"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing_gt = acdc_dir / "patient003" / "patient003_frame01_gt.nii.gz"
    missing_gt.unlink()
    source = AcdcSource(str(acdc_dir))
    with pytest.warns(DataWarning) as caught:
        table = source.load(32)
    assert table.patient_ids == ["patient001"]
    assert len(source.warnings) == 2 and len(caught) == 2
    assert source.warnings[0].startswith(f"{truncated}: cannot read NIfTI")
    assert source.warnings[1].startswith(f"{missing_gt}: missing ED labels")
    assert all("\n" not in w for w in source.warnings)


@pytest.mark.parametrize("fault, message", [
    ("nan", "image contains 1 NaN or infinite voxels"),
    ("shape", "mask shape (3, 20, 24) differs from image shape (24, 24, 3) of patient002_frame01.nii.gz"),
    ("labels", "mask has labels 4, 7 outside 0-3"),
    ("fractional", "mask has non-integer labels"),
])
def test_inconsistent_volumes_never_load_silently(acdc_dir, fault, message):
    image_path = acdc_dir / "patient002" / "patient002_frame01.nii.gz"
    mask_path = acdc_dir / "patient002" / "patient002_frame01_gt.nii.gz"
    image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(mask_path)).dataobj, dtype=np.float32)
    if fault == "nan":
        image[3, 4, 1] = np.nan
        _rewrite(image_path, image)
    elif fault == "shape":
        _rewrite(mask_path, np.ascontiguousarray(np.transpose(mask, (2, 0, 1))[:, :20, :]))
    elif fault == "labels":
        mask[0, 0, 0], mask[1, 1, 1] = 4, 7
        _rewrite(mask_path, mask)
    else:
        _rewrite(mask_path, mask + 0.5)
    culprit = image_path if fault == "nan" else mask_path
    with pytest.raises(DataError) as err:
        read_pair(image_path, mask_path)
    assert one_line(err.value).startswith(f"{culprit}: {message}")
    source = AcdcSource(str(acdc_dir))
    assert [v.patient for v in source.volumes()] == ["patient001", "patient003"]
    assert source.warnings == [f"{err.value} (patient patient002 skipped)"]


def test_no_usable_patient_is_one_error_naming_the_file(acdc_dir):
    for i in (1, 2, 3):
        (acdc_dir / f"patient00{i}" / f"patient00{i}_frame02_gt.nii.gz").unlink()
    with pytest.raises(DataError) as err:
        AcdcSource(str(acdc_dir)).load(32)
    text = one_line(err.value)
    assert text.startswith(f"{acdc_dir}: no usable ACDC patient (3 skipped")
    assert str(acdc_dir / "patient001" / "patient001_frame02_gt.nii.gz") in text


def test_empty_or_missing_folders(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path}: no ACDC patients found"):
        list(AcdcSource(str(tmp_path)).volumes())
    with pytest.raises(DataError, match="nowhere: no such folder"):
        list(AcdcSource(str(tmp_path / "nowhere")).volumes())
    with pytest.raises(DataError, match=f"^{tmp_path}: no M&Ms information CSV"):
        list(MnmsSource(str(tmp_path)).volumes())


def test_unknown_scheme_is_a_usage_error():
    from cmraudit.data.sources import open_source

    with pytest.raises(UsageError, match="unknown data scheme 'dicom'"):
        open_source("dicom:/data")
