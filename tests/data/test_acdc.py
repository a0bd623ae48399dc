"""The ACDC loader on a hand-written ACDC-layout fixture (tiny synthetic hearts written with nibabel)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmraudit.data.acdc import AcdcSource, parse_vendor
from cmraudit.errors import DataError, UsageError

SPACING = (1.5, 1.25, 8.0)


def synthetic_heart(h: int, w: int, z: int, lv_radius: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, Z) image and ACDC labels: LV disc + MYO ring at the right, an RV ellipse to its left."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w, z), np.uint8)
    for k in range(z):
        r = lv_radius * (1 - 0.12 * k)  # cavities shrink toward the apex
        d = np.hypot(yy - h / 2, xx - w * 0.6)
        ring = d < r + 3
        rv = (((yy - h / 2) / (1.6 * r)) ** 2 + ((xx - (w * 0.6 - 1.9 * r)) / r) ** 2 < 1) & ~ring
        mask[..., k][rv] = 1
        mask[..., k][ring] = 2
        mask[..., k][d < r] = 3
    intensity = np.array([120.0, 420.0, 150.0, 460.0])  # BG, RV, MYO, LV: bright blood, dark muscle
    image = intensity[mask] + rng.normal(0, 10, mask.shape)
    return image.astype(np.float32), mask


def write_nifti(path: Path, data: np.ndarray, spacing=SPACING) -> None:
    img = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    img.header.set_zooms(spacing)
    nib.save(img, str(path))


def write_acdc_patient(root: Path, pid: str, group: str, ed: int = 1, es: int = 7, extra: str = "",
                       shape=(40, 48, 4), seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / pid
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 172.0\nNbFrame: 10\n"
                                     f"Weight: 70.5\n{extra}")
    written = {}
    for phase, frame, radius in (("ED", ed, 7.0), ("ES", es, 4.5)):
        image, mask = synthetic_heart(*shape, lv_radius=radius, seed=seed + frame)
        write_nifti(folder / f"{pid}_frame{frame:02d}.nii.gz", image)
        write_nifti(folder / f"{pid}_frame{frame:02d}_gt.nii.gz", mask)
        written[phase] = (image, mask)
    return written


def test_reads_groups_frames_spacing_and_vendor(tmp_path):
    a = write_acdc_patient(tmp_path, "patient001", "DCM", ed=1, es=7)
    b = write_acdc_patient(tmp_path, "patient002", "HCM", ed=2, es=9, extra="Vendor: Philips\n", seed=5)
    source = AcdcSource(str(tmp_path))
    vols = list(source.volumes())
    assert [v.patient for v in vols] == ["patient001", "patient002"]
    assert [v.pathology for v in vols] == ["DCM", "HCM"]
    assert [v.vendor for v in vols] == ["A", "B"]  # Siemens by default, the Vendor line otherwise
    assert source.warnings == []
    for vol, written in ((vols[0], a), (vols[1], b)):
        assert vol.spacing_hwz == pytest.approx(SPACING)
        for phase in ("ED", "ES"):
            image, mask = written[phase]
            # (H, W, Z) on disk -> (Z, H, W) in memory, ED and ES from their own frames
            np.testing.assert_array_equal(vol.masks[phase], np.transpose(mask, (2, 0, 1)))
            np.testing.assert_allclose(vol.images[phase], np.transpose(image, (2, 0, 1)))
    assert (vols[0].masks["ED"] == 3).sum() > (vols[0].masks["ES"] == 3).sum()  # ES cavity is smaller
    assert vols[1].info["height"] == 172.0 and vols[1].info["weight"] == 70.5 and vols[1].info["nb_frames"] == 10
    assert (vols[1].info["ed_frame"], vols[1].info["es_frame"]) == (2, 9)


def test_load_gives_a_labelled_slice_table(tmp_path):
    write_acdc_patient(tmp_path / "training", "patient001", "NOR")  # nested below the given folder
    write_acdc_patient(tmp_path / "testing", "patient101", "RV", seed=3)
    table = AcdcSource(str(tmp_path)).load(32)
    assert table.patient_ids == ["patient001", "patient101"]
    assert table.image_size == 32 and table.source == f"acdc:{tmp_path}"
    assert set(table.phases.tolist()) == {"ED", "ES"}
    assert len(table) == 2 * 2 * 4  # two patients, two phases, four labelled slices each
    assert set(np.unique(table.masks.numpy())) == {0, 1, 2, 3}
    assert float(table.images.min()) >= -1 and float(table.images.max()) <= 1
    # blood is bright, muscle dark: the LV mean intensity must exceed the myocardium's after normalisation
    images, masks = table.images[:, 0], table.masks
    assert images[masks == 3].mean() > images[masks == 2].mean() + 0.5


def test_patient_folder_itself_and_vendor_names(tmp_path):
    write_acdc_patient(tmp_path, "patient007", "MINF", extra="Vendor: D\n")
    vols = list(AcdcSource(str(tmp_path / "patient007")).volumes())
    assert [(v.patient, v.vendor, v.pathology) for v in vols] == [("patient007", "D", "MINF")]
    assert parse_vendor("GE", Path("x")) == "C" and parse_vendor("siemens", Path("x")) == "A"
    with pytest.raises(DataError, match="x: unknown Vendor 'Hitachi'"):
        parse_vendor("Hitachi", Path("x"))


def test_missing_group_or_frame_skips_the_patient(tmp_path):
    write_acdc_patient(tmp_path, "patient001", "NOR")
    write_acdc_patient(tmp_path, "patient002", "NOR", seed=2)
    cfg = tmp_path / "patient002" / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("Group: NOR\n", ""))
    source = AcdcSource(str(tmp_path))
    with pytest.warns(UserWarning, match="no Group line"):
        vols = list(source.volumes())
    assert [v.patient for v in vols] == ["patient001"]
    assert len(source.warnings) == 1 and str(cfg) in source.warnings[0]


def test_needs_a_folder():
    with pytest.raises(UsageError, match="acdc:PATH"):
        AcdcSource(None)
