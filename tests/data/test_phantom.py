"""The built-in phantom: contract of its volumes and tables, determinism, and the signals an audit relies on
(pathologies a classifier can tell apart, vendor styles, patient identity)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from cmraudit.data.phantom import PhantomSource, phantom_patient
from cmraudit.data.preprocess import volumes_to_table
from cmraudit.data.types import VENDORS
from cmraudit.errors import UsageError

GROUPS = ("NOR", "DCM", "HCM", "MINF", "RV")


@pytest.fixture(scope="module")
def table40():
    return PhantomSource("40").load(32)


@pytest.fixture(scope="module")
def volumes4():
    """Native-resolution volumes of patients 1-4: vendors A, B, C, D and groups NOR, DCM, HCM, MINF."""
    return list(PhantomSource("4").volumes())


def _ed_rows(table, rows):
    return rows[table.phases[rows] == "ED"], rows[table.phases[rows] == "ES"]


def _per_patient(table, fn):
    """{group: [fn(ED masks, ES masks) for each patient]}."""
    out: dict[str, list[float]] = {}
    for rows in table.patient_rows().values():
        ed, es = _ed_rows(table, rows)
        out.setdefault(table.pathologies[rows[0]], []).append(fn(table.masks[ed].numpy(), table.masks[es].numpy()))
    return out


# ------------------------------------------------------------------------------------------------------ contract
def test_spec_parsing():
    assert PhantomSource.name == "phantom"
    assert PhantomSource().n_patients == 60
    assert PhantomSource("7").n_patients == 7 and PhantomSource("7").spec == "phantom:7"
    for bad in ("0", "-3", "abc", "2.5"):
        with pytest.raises(UsageError, match="phantom"):
            PhantomSource(bad)


def test_volumes_are_raw_scanner_images_in_acdc_layout(volumes4):
    assert [v.patient for v in volumes4] == ["phantom-0001", "phantom-0002", "phantom-0003", "phantom-0004"]
    assert [(v.vendor, v.pathology) for v in volumes4] == [("A", "NOR"), ("B", "DCM"), ("C", "HCM"), ("D", "MINF")]
    for v in volumes4:
        assert set(v.images) == set(v.masks) == {"ED", "ES"}
        z, h, w = v.images["ED"].shape
        assert 6 <= z <= 10 and h >= 150 and w >= 150
        for phase in ("ED", "ES"):
            img, msk = v.images[phase], v.masks[phase]
            assert img.dtype == np.float32 and msk.dtype == np.int64 and img.shape == msk.shape == (z, h, w)
            assert img.min() >= 0 and img.max() > 50  # stored scanner values, not normalised
            assert set(np.unique(msk)) == {0, 1, 2, 3}
        assert 0.9 <= v.spacing_hwz[0] == v.spacing_hwz[1] <= 1.9 and 5 <= v.spacing_hwz[2] <= 14
        lv = (v.masks["ED"] == 3).sum((1, 2))
        assert lv[0] > lv[-1]  # slice 0 is the most basal: the cavity shrinks toward the apex
        assert (v.masks["ED"][-1] == 1).sum() < (v.masks["ED"][0] == 1).sum()  # the RV crescent fades
        assert 1 <= v.info["es_frame"] <= v.info["n_frames"]


def test_load_matches_the_volume_route(volumes4):
    """load() renders straight on the heart-centred grid; it must agree with exporting volumes and reloading."""
    direct = PhantomSource("4").load(32)
    reloaded = volumes_to_table(volumes4, 32, source="phantom:4")
    assert direct.patient_ids == reloaded.patient_ids
    assert direct.patient_labels() == reloaded.patient_labels()
    assert np.array_equal(direct.slice_index, reloaded.slice_index)
    rows_a, rows_b = direct.patient_rows(), reloaded.patient_rows()
    for patient in rows_a:
        for label in (1, 2, 3):
            fa = (direct.masks[rows_a[patient]] == label).float().mean().item()
            fb = (reloaded.masks[rows_b[patient]] == label).float().mean().item()
            assert fa == pytest.approx(fb, rel=0.12), (patient, label)


def test_deterministic_and_patients_independent_of_count():
    a, b = PhantomSource("3").load(32), PhantomSource("3").load(32)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    c = PhantomSource("6").load(32)
    rows = c.patient_rows()
    first3 = np.concatenate([rows[p] for p in a.patient_ids])
    assert torch.equal(c.images[first3], a.images)
    other = PhantomSource("3", seed=1).load(32)
    assert PhantomSource("3,seed=1").load(32).patient_labels() == other.patient_labels()  # the spec's seed
    # same vendors and groups, different anatomy, and ids that never collide with another seed's
    assert list(other.patient_labels().values()) == list(a.patient_labels().values())
    assert not set(other.patient_ids) & set(a.patient_ids)
    lv = [[(t.masks[r] == 3).sum().item() for r in t.patient_rows().values()] for t in (a, other)]
    assert all(x != y for x, y in zip(*lv))
    assert phantom_patient(2, seed=1).anatomy.r_epi != phantom_patient(2, seed=0).anatomy.r_epi


def test_labels_coverage_and_balance(table40):
    assert set(torch.unique(table40.masks).tolist()) == {0, 1, 2, 3}
    assert (table40.masks.flatten(1).amax(1) > 0).all()
    pairs = list(table40.patient_labels().values())
    assert len(pairs) == 40 and len(set(table40.patient_ids)) == 40
    assert {v for v, _ in pairs} == set(VENDORS) and {p for _, p in pairs} == set(GROUPS)
    assert len(set(pairs[:20])) == 20  # every (vendor, group) pair once in 20 consecutive patients
    assert table40.images.min() >= -1 and table40.images.max() <= 1
    assert table40.images.min() == -1 and table40.images.max() == 1


def test_patients_are_distinct(table40):
    rows = table40.patient_rows()
    ed_areas = {p: tuple((table40.masks[_ed_rows(table40, r)[0]] > 0).sum((1, 2)).tolist()) for p, r in rows.items()}
    assert len(set(ed_areas.values())) == len(ed_areas)


# ------------------------------------------------------------------------------------------- pathology signal
def test_pathologies_differ_as_in_acdc(table40):
    lv_ed = {g: np.mean(v) for g, v in _per_patient(table40, lambda ed, es: (ed == 3).sum() / len(ed)).items()}
    rv_ed = {g: np.mean(v) for g, v in _per_patient(table40, lambda ed, es: (ed == 1).sum() / len(ed)).items()}
    ef = _per_patient(table40, lambda ed, es: 1 - (es == 3).sum() / (ed == 3).sum())

    def thickness(ed, es):  # mean wall thickness (pixels) over the mid-ventricular ED slices
        mid = ed[len(ed) // 4: 3 * len(ed) // 4]
        outer, inner = np.sqrt((mid >= 2).sum((1, 2)) / np.pi), np.sqrt((mid == 3).sum((1, 2)) / np.pi)
        return float(np.mean(outer - inner))

    wall = {g: np.mean(v) for g, v in _per_patient(table40, thickness).items()}
    assert lv_ed["DCM"] > 1.8 * lv_ed["NOR"] and lv_ed["HCM"] < lv_ed["NOR"]
    assert wall["HCM"] > 1.4 * wall["NOR"] and wall["DCM"] < wall["NOR"]
    assert rv_ed["RV"] > 1.5 * rv_ed["NOR"]
    assert max(ef["DCM"] + ef["MINF"]) < 0.42  # ACDC: EF < 40% for DCM and MINF
    assert min(ef["NOR"] + ef["HCM"]) > 0.5


def test_infarcts_thin_one_sector_of_the_wall(table40):
    def uniformity(ed, es):  # least / median myocardial pixel count over 8 angular sectors, mid slices
        ratios = []
        for m in ed[len(ed) // 4: 3 * len(ed) // 4]:
            rr, cc = np.nonzero(m >= 2)
            r, c = np.nonzero(m == 2)
            counts = np.histogram(np.arctan2(r - rr.mean(), c - cc.mean()), bins=8, range=(-np.pi, np.pi))[0]
            ratios.append(counts.min() / np.median(counts))
        return float(np.mean(ratios))

    u = _per_patient(table40, uniformity)
    assert np.mean(u["MINF"]) < np.mean(u["NOR"]) - 0.08


# ------------------------------------------------------------------------------------------ vendors, intensity
def test_blood_pool_is_bright_and_masks_align(table40):
    img, msk = table40.images[:, 0], table40.masks
    for vendor in VENDORS:
        sel = torch.from_numpy(table40.vendors == vendor)
        i, m = img[sel], msk[sel]
        assert i[m == 3].mean() > i[m == 2].mean() + 0.5
        assert i[m == 1].mean() > i[m == 2].mean() + 0.5


def test_vendor_styles_differ(table40, volumes4):
    # stored intensity ranges differ by vendor as on real scanners (patients 1-4 are vendors A-D)
    top = [float(np.percentile(v.images["ED"], 99)) for v in volumes4]
    assert top[1] > 2 * top[0] > 2 * top[2] and top[3] > top[0]
    # after normalisation the myocardium's grey level still separates vendors (contrast, gamma)
    img, msk = table40.images[:, 0], table40.masks
    by_vendor: dict[str, list[float]] = {}
    for rows in table40.patient_rows().values():
        r = torch.from_numpy(rows)
        by_vendor.setdefault(table40.vendors[rows[0]], []).append(float(img[r][msk[r] == 2].mean()))
    assert stats.f_oneway(*by_vendor.values()).pvalue < 1e-3


# ------------------------------------------------------------------------------------------------ identity
def test_surroundings_identify_the_patient(table40):
    """A patient's neighbouring slices share body, lungs, liver texture; another patient's do not."""
    img, masks = table40.images[:, 0].numpy(), table40.masks.numpy()
    away = ~np.stack([ndimage.binary_dilation(m > 0, iterations=4) for m in masks])

    def similarity(i, j):
        sel = away[i] & away[j]
        return np.corrcoef(img[i][sel], img[j][sel])[0, 1]

    rows = {p: _ed_rows(table40, r)[0] for p, r in table40.patient_rows().items()}
    patients = list(rows)
    same, other = [], []
    for k, p in enumerate(patients):
        q = patients[(k + 4) % len(patients)]  # patient k + 4 has the same vendor as patient k
        same.append(similarity(rows[p][2], rows[p][3]))
        other.append(similarity(rows[p][2], rows[q][3]))
    same, other = np.array(same), np.array(other)
    assert np.mean(same) > 0.9 and np.mean(same > other) > 0.95
