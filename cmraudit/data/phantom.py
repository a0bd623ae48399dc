"""The built-in phantom: procedural short-axis bSSFP cine MRI at ED and ES, no download needed.

``phantom`` (60 patients), ``phantom:N`` or ``phantom:N,seed=S``. Patient ``phantom-0007`` is drawn from its own
random stream (seed, 7), so it is the same patient whatever N is; pathologies cycle through the five ACDC groups and vendors
through A–D so that any 20 consecutive patients hold every (vendor, pathology) pair once.

Each patient has an identity of its own — body habitus, heart size, position and rotation, irregular contours,
tissue texture in 3-D patient space — consistent across that patient's slices and phases, so a model that
memorises a patient can be told apart from one that draws a typical heart (see ``phantom_anatomy`` for the
anatomy and ``phantom_style`` for the vendors' acquisition).

``volumes()`` renders each patient on its scanner's native grid (what ``cmraudit data export-phantom`` writes).
``load(image_size)`` renders the same patients directly on the heart-centred grid that
``preprocess.volumes_to_table`` would crop and resample to, which is an order of magnitude faster; geometry is
closed-form in millimetres, so both routes give the same labels up to pixel sampling.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len

from ..api import DatasetSource
from ..errors import UsageError
from .phantom_anatomy import (
    Anatomy,
    Angles,
    blob_distance,
    heart_distances,
    labels,
    sample_anatomy,
)
from .phantom_style import Acquisition, acquire, sample_acquisition
from .preprocess import FOV_MM, PERCENTILES, heart_centre, normalise
from .types import PATHOLOGIES, VENDORS, PatientVolume, SliceTable

DEFAULT_PATIENTS = 60
GROUPS = PATHOLOGIES[:5]  # NOR DCM HCM MINF RV: the ACDC groups (OTHER only comes from M&Ms)
LATTICE_HALF_MM = 210.0   # texture lattices span ±210 mm in x and y ...
LATTICE_Z_MM = (-40.0, 160.0)  # ... and this range along the stack


@dataclass(frozen=True)
class PhantomPatient:
    number: int
    patient: str
    vendor: str
    pathology: str
    anatomy: Anatomy
    acquisition: Acquisition
    positions: np.ndarray            # relative ED position of each slice along the LV (0 base, 1 apex)
    slice_spacing: float             # mm
    native_shape: tuple[int, int]    # (H, W) of the scanner's matrix
    native_offset: complex           # FOV centre in the patient frame (mm)
    info: dict = field(default_factory=dict)


def phantom_patient(number: int, seed: int = 0) -> PhantomPatient:
    """Patient ``number`` (1-based) of the phantom with this seed; independent of how many patients are drawn."""
    rng = np.random.default_rng([seed, number])
    pathology = GROUPS[(number - 1) % 5]
    vendor = VENDORS[((number - 1) % 5 + (number - 1) // 5) % 4]
    anatomy = sample_anatomy(rng, pathology)
    acq = sample_acquisition(vendor, rng)
    n = int(rng.integers(8, 11))
    first, last = rng.uniform(0.0, 0.04), rng.uniform(0.86, 0.95)
    positions = np.linspace(first, last, n)
    fov_w = float(np.clip(2 * anatomy.body[0] + rng.uniform(15, 60), 300, 440))
    fov_h = max(0.8 * fov_w, 2 * anatomy.body[1] + rng.uniform(15, 40))
    # matrix sizes with small prime factors, as scanners use (and FFTs like)
    shape = (next_fast_len(int(fov_h / acq.pixel_mm)), next_fast_len(int(fov_w / acq.pixel_mm)))
    height = 150 + 40 * rng.random()
    weight = 22 * (height / 100) ** 2 * (0.8 + 0.7 * anatomy.obesity)  # BMI 18-33 with the body fat
    info = {"height_cm": round(height, 1), "weight_kg": round(weight, 1),
            "n_frames": int(rng.integers(25, 36)), "ed_frame": 1, "seed": seed, "number": number}
    info["es_frame"] = round(info["n_frames"] * rng.uniform(0.3, 0.42))
    patient_id = f"phantom-{number:04d}" if seed == 0 else f"phantom-s{seed}-{number:04d}"  # seeds never share ids
    return PhantomPatient(number, patient_id, vendor, pathology, anatomy, acq, positions,
                          float((last - first) * anatomy.length / (n - 1)), shape,
                          complex(rng.uniform(-15, 15), rng.uniform(-10, 10)), info)


# ------------------------------------------------------------------------------------------------------ rendering
def _phase_rows(p: PhantomPatient) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row (ED slices then ES slices): relative LV position, phase flag, z of the slice plane in mm."""
    a = p.anatomy
    z = p.positions * a.length
    s_es = np.clip((z - a.descent) / (a.length - a.descent), 0, 1)  # the base descends toward the apex at ES
    n = len(z)
    return np.concatenate([p.positions, s_es]), np.repeat([0.0, 1.0], n), np.concatenate([z, z])


def _texture(lattice: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Smooth interpolation of a (C, nz, ny, nx) lattice at (x, y): (H, W) and z: (Z,) → (C, Z, H, W):
    linear between the lattice's z planes, bicubic in-plane (round blobs, no trilinear facets)."""
    nz = lattice.shape[1]
    zi = np.clip((z - LATTICE_Z_MM[0]) / (LATTICE_Z_MM[1] - LATTICE_Z_MM[0]) * (nz - 1), 0, nz - 1.001)
    lo = zi.astype(int)
    w = (zi - lo).astype(np.float32)[None, :, None, None]
    planes = lattice[:, lo] * (1 - w) + lattice[:, lo + 1] * w            # (C, Z, ny, nx)
    grid = np.stack([x / LATTICE_HALF_MM, y / LATTICE_HALF_MM], -1).astype(np.float32)
    grid = torch.from_numpy(grid)[None].expand(len(z), -1, -1, -1)
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(planes.transpose(1, 0, 2, 3))), grid, mode="bicubic",
                        padding_mode="border", align_corners=True)
    return out.numpy().transpose(1, 0, 2, 3)


def _alpha(d: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Fraction of a pixel inside a boundary at signed distance d: partial-volume edges, no aliasing staircase."""
    return np.clip(0.5 - d / pixel_mm, 0, 1)


def _soft(v: np.ndarray, threshold: float, softness: float = 0.2) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(v - threshold) / softness))


def _signal(p: PhantomPatient, x: np.ndarray, y: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Relative tissue signal (blood = 1) and ACDC labels, both (2Z, H, W), on the grid of pixel centres x, y."""
    a, acq, t = p.anatomy, p.acquisition, p.anatomy.tissue
    s, es, zrows = _phase_rows(p)
    z = zrows[: len(p.positions)]
    pos = (x + 1j * y).astype(np.complex64)
    c, f = _texture(a.lattice_coarse, x, y, z), _texture(a.lattice_fine, x, y, z)
    myo = 1.0 / acq.contrast
    fat = acq.fat * t["fat"] * (1 + 0.06 * c[0] + 0.05 * f[0]) * (1 - 0.3 * _soft(f[1], 1.3))  # fibrous septa
    muscle = 0.95 * myo * t["muscle"] * (1 + 0.08 * c[1] + 0.08 * f[1])
    lung = 0.035 * t["lung"] * (1 + 0.4 * c[2]) + 0.45 * _soft(f[2], 2.0, 0.1)  # bright vessels in dark lung
    liver = 1.1 * myo * t["liver"] * (1 + 0.06 * c[0] + 0.04 * f[0]) + 0.5 * _soft(f[1], 1.7)
    blood = t["blood"] * (1 + 0.04 * c[1])

    d_body = blob_distance(pos, *a.body, a.body_harm)
    d_thorax = blob_distance(pos - a.thorax_centre, *a.thorax, a.thorax_harm)
    d_muscle = d_body + a.fat_sc * np.maximum(1 + Angles(pos / (np.abs(pos) + 1e-3)).modulation(a.fat_harm), 0.3)
    grow = (0.4 + 0.8 * np.clip(z / a.length, 0, 1.1))[:, None, None]  # the liver fills in toward the apex
    d_liver = np.maximum(blob_distance(pos - a.liver_centre, a.liver[0] * grow, a.liver[1] * grow, a.liver_harm),
                         d_thorax)
    canal = a.spine + 1j * (a.spine_r + 9)
    S = _alpha(d_body, pixel_mm) * fat
    d_med = np.min([blob_distance(pos - c, ax, ay, a.body_harm) for c, ax, ay in a.mediastinum], axis=0)
    for d, value in ((d_muscle, muscle), (d_thorax, lung), (np.maximum(d_med, d_thorax), 0.3 * fat + 0.6 * muscle),
                     (d_liver, liver),
                     (np.abs(pos - a.aorta) - a.aorta_r, 0.9 * blood), (np.abs(pos - a.spine) - a.spine_r, 0.06),
                     (np.abs(pos - a.spine) - a.spine_r + 2, 0.5 * t["marrow"] * (1 + 0.1 * f[0])),
                     (np.abs(pos - canal) - 9, 0.3 * myo), (np.abs(pos - canal) - 7, 0.9)):
        S = S + _alpha(d, pixel_mm) * (value - S)
    # the heart is evaluated only in the window it can reach (most of a native matrix is body and lungs)
    win = (slice(None), *_heart_window(a, x, y))
    S = np.concatenate([S, S])
    heart, blood, fat = S[win], np.concatenate([blood, blood])[win], np.concatenate([fat, fat])[win]
    d = heart_distances(a, pos[win[1:]], s, es)
    for dist, value in ((d["fat"] - 1.2, 0.08), (d["fat"], fat), (d["outflow"], blood), (d["heart"], myo),
                        (d["rv"], blood), (d["epi"], myo * (1 + d["myo_texture"])),
                        (d["endo"], blood * (1 - d["trabeculae"])), (d["pap"], 1.1 * myo)):
        heart = heart + _alpha(dist, pixel_mm) * (value - heart)
    S[win] = heart
    masks = np.zeros(S.shape, dtype=np.int64)
    masks[win] = labels(d)
    return S.astype(np.float32, copy=False), masks


def _heart_extent(a: Anatomy) -> tuple[complex, float]:
    """Centre and half-size (mm) of a square holding the LV, RV crescent, epicardial fat and outflow tract."""
    centre = a.centre + 0.5 * a.rv_width * a.rotation * a.rv_dir
    return centre, 1.2 * a.r_epi + 0.8 * a.rv_width + 3.0 * a.epi_fat + 20 + abs(a.drift) + abs(a.es_shift)


def _heart_window(a: Anatomy, x: np.ndarray, y: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the grid within the heart's extent."""
    centre, reach = _heart_extent(a)
    rows = np.flatnonzero(np.abs(y[:, 0] - centre.imag) <= reach)
    cols = np.flatnonzero(np.abs(x[0] - centre.real) <= reach)
    if rows.size == 0 or cols.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def render(p: PhantomPatient, x: np.ndarray, y: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Stored images (float32, scanner units) and labels, both (2Z, H, W): ED slices then ES slices."""
    signal, masks = _signal(p, x, y, pixel_mm)
    rng = np.random.default_rng([p.info["seed"], p.number, 1])  # acquisition noise: its own stream
    return acquire(signal, x, y, _phase_rows(p)[2], pixel_mm, p.acquisition, rng), masks


def _grid(centre: complex, shape: tuple[int, int], pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    rows = centre.imag + (np.arange(shape[0]) - (shape[0] - 1) / 2) * pixel_mm
    cols = centre.real + (np.arange(shape[1]) - (shape[1] - 1) / 2) * pixel_mm
    y, x = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    return x, y


def heart_centroid(p: PhantomPatient, pixel_mm: float) -> complex:
    """Centroid (mm) of the labelled ED voxels, as ``preprocess.heart_centre`` computes it on a volume."""
    centre, reach = _heart_extent(p.anatomy)
    x, y = _grid(centre, (int(2 * reach / pixel_mm) + 1,) * 2, pixel_mm)
    n = len(p.positions)
    mask = labels(heart_distances(p.anatomy, (x + 1j * y).astype(np.complex64), p.positions, np.zeros(n), False))
    row, col = heart_centre(mask)
    return complex(x[0, 0] + col * pixel_mm, y[0, 0] + row * pixel_mm)


# ---------------------------------------------------------------------------------------------------- the source
def _parse_arg(arg: str | None) -> tuple[int, int | None]:
    """``N`` or ``N,seed=S`` (either part optional) → (patients, seed or None)."""
    text = "" if arg is None else str(arg).strip()
    count, _, rest = text.partition(",")
    seed = None
    if rest:
        key, _, value = rest.partition("=")
        try:
            seed = int(value) if key.strip() == "seed" else None
        except ValueError:
            seed = None
        if seed is None or seed < 0:
            raise UsageError(f"phantom:{arg}: expected phantom:N or phantom:N,seed=S, e.g. phantom:200,seed=1")
    if not count.strip():
        return DEFAULT_PATIENTS, seed
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"phantom:{arg}: expected a number of patients ≥ 1, e.g. phantom:40")
    return n, seed


class PhantomSource(DatasetSource):
    """``phantom``, ``phantom:N`` or ``phantom:N,seed=S``: N procedural patients (default 60) of the phantom with
    seed S (default 0). Different seeds draw different patients, with ids that never collide (``phantom-s1-0007``):
    ``phantom:200,seed=1`` is a public data set disjoint from the default ``phantom``."""

    name = "phantom"
    description = ("built-in procedural short-axis cine MRI (ED/ES, vendors A-D, 5 ACDC groups): "
                   "phantom[:N[,seed=S]]")

    def __init__(self, arg: str | None = None, *, seed: int = 0) -> None:
        super().__init__(arg)
        self.n_patients, spec_seed = _parse_arg(arg)
        self.seed = int(seed) if spec_seed is None else spec_seed

    def patients(self) -> Iterator[PhantomPatient]:
        for number in range(1, self.n_patients + 1):
            yield phantom_patient(number, self.seed)

    def volumes(self) -> Iterator[PatientVolume]:
        """Each patient on its scanner's native matrix, slice 0 the most basal."""
        for p in self.patients():
            px = p.acquisition.pixel_mm
            images, masks = render(p, *_grid(p.native_offset, p.native_shape, px), px)
            n = len(p.positions)
            yield PatientVolume(p.patient, p.vendor, p.pathology, {"ED": images[:n], "ES": images[n:]},
                                {"ED": masks[:n], "ES": masks[n:]}, (px, px, p.slice_spacing), dict(p.info))

    def load(self, image_size: int) -> SliceTable:
        """Render straight onto the heart-centred FOV_MM grid ``volumes_to_table`` would resample to.

        The phantom holds no patient, so its tables are kept in the per-user cache (``cmraudit.user_cache``), keyed
        by the patients, seed, size and the phantom's own source code: a run's data, DP pretraining set and canaries
        are rendered once per user, not once per run."""
        from ..user_cache import entry_path, fingerprint

        key = fingerprint("phantom", self.n_patients, self.seed, int(image_size), FOV_MM, sources=_PHANTOM_CODE)
        path = entry_path("phantom", f"{key}.npz")
        if path is not None and path.is_file():
            try:
                return _read_table(path, self.spec)
            except (OSError, KeyError, ValueError):
                pass  # unreadable entry: render again and replace it
        table = self._render(image_size)
        if path is not None:
            try:
                _write_table(path, table)
            except OSError:
                pass  # the cache is an optimisation; a read-only home must not fail the run
        return table

    def _render(self, image_size: int) -> SliceTable:
        pixel_mm = FOV_MM / image_size
        tables = []
        for p in self.patients():
            grid = _grid(heart_centroid(p, min(pixel_mm, 3.0)), (image_size, image_size), pixel_mm)
            images, masks = render(p, *grid, pixel_mm)
            images = normalise(images, tuple(np.percentile(images, PERCENTILES)))
            keep = np.flatnonzero(masks.reshape(len(masks), -1).max(1) > 0)
            n = len(p.positions)
            tables.append(SliceTable(torch.from_numpy(images[keep, None].astype(np.float32)),
                                     torch.from_numpy(masks[keep]),
                                     [p.patient] * keep.size, [p.vendor] * keep.size, [p.pathology] * keep.size,
                                     np.where(keep < n, "ED", "ES"), keep % n, self.spec))
        table = SliceTable.concat(tables, source=self.spec)
        table.meta.update(seed=self.seed, fov_mm=FOV_MM)
        return table


#: the code a phantom table depends on: a change to any of it invalidates the cached tables
_PHANTOM_CODE = tuple(Path(__file__).with_name(name) for name in
                      ("phantom.py", "phantom_anatomy.py", "phantom_style.py", "preprocess.py", "types.py"))


def _write_table(path: Path, table: SliceTable) -> None:
    from ..io import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        np.savez(fh, images=table.images.numpy(), masks=table.masks.numpy().astype(np.uint8),
                 patients=table.patients, vendors=table.vendors, pathologies=table.pathologies, phases=table.phases,
                 slice_index=table.slice_index, seed=np.array(table.meta["seed"]))


def _read_table(path: Path, spec: str) -> SliceTable:
    with np.load(path, allow_pickle=False) as z:
        table = SliceTable(torch.from_numpy(z["images"]), torch.from_numpy(z["masks"].astype(np.int64)),
                           z["patients"], z["vendors"], z["pathologies"], z["phases"], z["slice_index"], spec)
        table.meta.update(seed=int(z["seed"]), fov_mm=FOV_MM)
    return table
