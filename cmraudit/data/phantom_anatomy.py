"""Procedural short-axis anatomy of one phantom patient: body, lungs, liver, spine, aorta and the heart.

Everything lives in a patient frame in millimetres — x toward the image's right (the patient's left), y toward the
image's bottom (posterior), origin at the body's centre, z along the stack from the LV base toward the apex — and
positions are complex numbers ``x + iy``. So the same patient rendered on the scanner's native grid or on a
heart-centred grid has the same geometry, and the contours of every structure are closed-form: star-shaped blobs
(an ellipse whose radius is modulated by a few Fourier harmonics, so no two contours are the same ellipse).

The LV is a truncated ellipsoid of revolution along z with a wall thickness that varies around the circumference;
end-systole shrinks each cavity radius by sqrt(1 - local EF) (the cavity area by the EF) and keeps the myocardial
area of each sector (incompressible wall, so the wall thickens). Pathologies follow the ACDC groups (Bernard et
al., IEEE TMI 2018): DCM dilated thin-walled LV with low EF, HCM thick (septal) wall with high EF, MINF a thinned,
akinetic sector, RV a dilated, poorly contracting right ventricle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HARMONICS = np.arange(2, 6)  # contour harmonics (k = 1 would only shift a blob's centre)

# Per group: ED base cavity radius, wall thickness (mm), LV EF (remote myocardium for MINF), RV crescent width
# (mm), RV EF, descent of the base toward the apex at ES (mm, long-axis shortening).
PROFILES = {
    "NOR": {"r_endo": (22, 27), "wall": (7.5, 10), "ef": (0.58, 0.72),
            "rv_width": (20, 28), "rv_ef": (0.50, 0.65), "descent": (8, 13)},
    "DCM": {"r_endo": (31, 37), "wall": (5, 6.5), "ef": (0.15, 0.32),
            "rv_width": (20, 28), "rv_ef": (0.30, 0.50), "descent": (2, 5)},
    "HCM": {"r_endo": (15, 20), "wall": (11, 14), "ef": (0.64, 0.80),
            "rv_width": (16, 24), "rv_ef": (0.50, 0.65), "descent": (6, 10)},
    "MINF": {"r_endo": (25, 30), "wall": (7.5, 10), "ef": (0.32, 0.45),
             "rv_width": (20, 28), "rv_ef": (0.40, 0.60), "descent": (3, 7)},
    "RV": {"r_endo": (20, 25), "wall": (7, 9), "ef": (0.50, 0.64),
           "rv_width": (36, 50), "rv_ef": (0.20, 0.38), "descent": (6, 11)},
}


@dataclass(frozen=True)
class Anatomy:
    pathology: str
    obesity: float
    length: float                # LV base-to-apex length covered by the stack (mm)
    # surroundings
    body: tuple[float, float]
    body_harm: np.ndarray
    fat_sc: float
    fat_harm: np.ndarray
    thorax_centre: complex
    thorax: tuple[float, float]
    thorax_harm: np.ndarray
    liver_centre: complex
    liver: tuple[float, float]
    liver_harm: np.ndarray
    mediastinum: tuple[tuple[complex, float, float], ...]  # (centre, semi-axes) of soft-tissue blobs
    spine: complex
    spine_r: float
    aorta: complex
    aorta_r: float
    # heart
    centre: complex
    drift: complex               # LV centre shift from base to apex
    es_shift: complex
    rotation: complex            # unit: heart frame → patient frame
    r_epi: float
    wall: float
    apex: float                  # taper: radius ∝ sqrt(1 - (s / apex)²)
    epi_harm: np.ndarray         # (2, K): at the base and change toward the apex
    endo_harm: np.ndarray
    wall_harm: np.ndarray
    septal_extra: float
    infarct: tuple[complex, float, float, float, float] | None  # direction, half-width, thinning, s from, s to
    ef: float
    descent: float
    rv_dir: complex
    rv_width: float
    rv_span: float               # half-angle of the arc the RV crescent covers (radians)
    rv_end: float                # relative position where the RV crescent has faded
    rv_ef: float
    rv_harm: np.ndarray
    papillary: np.ndarray        # unit directions (2,)
    papillary_r: float
    trabeculae: tuple[int, complex, float]
    epi_fat: float
    epi_fat_harm: np.ndarray
    outflow: complex | None      # direction of the LV outflow tract in the most basal slice
    myo_texture: np.ndarray      # (2, K)
    tissue: dict
    lattice_coarse: np.ndarray
    lattice_fine: np.ndarray


def _harm(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    k = HARMONICS
    return (amplitude * rng.uniform(0.3, 1.0, k.size) / k * 2) * np.exp(2j * np.pi * rng.random(k.size))


def _unit(angle: float) -> complex:
    return complex(np.exp(1j * angle))


def _lattice(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """White noise smoothed by a [1, 2, 1] kernel along each spatial axis and re-standardised."""
    field = rng.standard_normal(shape, dtype=np.float32)
    for axis in range(1, field.ndim):
        field = 0.5 * field + 0.25 * (np.roll(field, 1, axis) + np.roll(field, -1, axis))
    return (field - field.mean()) / field.std()


def sample_anatomy(rng: np.random.Generator, pathology: str) -> Anatomy:
    p = PROFILES[pathology]
    size = rng.uniform(0.9, 1.12)              # body habitus: the heart scales with it, less than the body
    obesity = float(rng.beta(2.0, 3.0))
    fat_sc = 4 + 20 * obesity
    body = (145 * size * rng.uniform(0.93, 1.07) + fat_sc, 98 * size * rng.uniform(0.9, 1.1) + fat_sc)
    ant, post = rng.uniform(8, 14), rng.uniform(38, 55)  # chest wall and back muscle thickness
    thorax = (body[0] - fat_sc - rng.uniform(10, 16), body[1] - fat_sc - (ant + post) / 2)
    thorax_centre = complex(0, -(post - ant) / 2)
    heart_scale = np.sqrt(size)
    r_endo = rng.uniform(*p["r_endo"]) * heart_scale
    wall = rng.uniform(*p["wall"])
    rotation = _unit(rng.normal(0, 0.2))
    # the heart lies against the anterior chest wall, left of the midline (image right)
    centre = thorax_centre + complex(rng.uniform(8, 30), -thorax[1] + r_endo + wall + rng.uniform(12, 30))
    spine = thorax_centre + 1j * thorax[1] * rng.uniform(0.86, 0.95) + rng.uniform(-6, 6)
    spine_r = rng.uniform(14, 19)
    infarct = None
    if pathology == "MINF":  # LAD (anterior/septal), RCA (inferior) or LCx (lateral) territory
        direction = _unit(rng.choice([-np.pi / 2 - 0.4, np.pi / 2 + 0.2, 0.3]) + rng.normal(0, 0.25))
        s_from = rng.uniform(0.0, 0.4)
        infarct = (direction, rng.uniform(0.55, 1.0), rng.uniform(0.4, 0.6), s_from, s_from + rng.uniform(0.5, 0.9))
    pap = np.exp(1j * (np.array([-np.pi / 4, 3 * np.pi / 4]) + rng.normal(0, 0.25, 2)))
    tissue = {name: rng.uniform(0.9, 1.1) for name in ("muscle", "liver", "lung", "marrow", "fat", "blood")}
    return Anatomy(
        pathology=pathology, obesity=obesity,
        length=rng.uniform(75, 95) * heart_scale * (1.12 if pathology == "DCM" else 1.0),
        body=body, body_harm=_harm(rng, 0.06), fat_sc=fat_sc, fat_harm=_harm(rng, 0.3),
        thorax_centre=thorax_centre, thorax=thorax, thorax_harm=_harm(rng, 0.04),
        liver_centre=thorax_centre + complex(-0.6 * thorax[0], 0.8 * thorax[1]) * rng.uniform(0.9, 1.1),
        liver=(0.6 * thorax[0] * rng.uniform(0.85, 1.1), 0.55 * thorax[1] * rng.uniform(0.85, 1.1)),
        # posterior mediastinum between heart and spine (oesophagus, connective tissue): separates the lungs
        mediastinum=(((centre + spine) / 2, rng.uniform(14, 24), abs(spine - centre) / 2 + 5),),
        liver_harm=_harm(rng, 0.08),
        spine=spine, spine_r=spine_r, aorta=spine + (spine_r + rng.uniform(6, 12)) * _unit(-1.0 + rng.normal(0, 0.15)),
        aorta_r=rng.uniform(9, 13),
        centre=centre, drift=complex(*rng.normal(0, 4, 2)), es_shift=complex(*rng.normal(0, 1.2, 2)),
        rotation=rotation, r_epi=r_endo + wall, wall=wall,
        apex=rng.uniform(1.06, 1.14) + (0.12 if pathology == "DCM" else 0),  # a dilated LV is more spherical
        epi_harm=np.stack([_harm(rng, 0.04), _harm(rng, 0.03)]),
        endo_harm=np.stack([_harm(rng, 0.05), _harm(rng, 0.04)]),
        wall_harm=_harm(rng, 0.12),
        septal_extra=rng.uniform(0.5, 0.95) if pathology == "HCM" else 0.0,
        infarct=infarct, ef=rng.uniform(*p["ef"]), descent=rng.uniform(*p["descent"]),
        rv_dir=_unit(np.pi + rng.uniform(0.1, 0.35)), rv_width=rng.uniform(*p["rv_width"]) * heart_scale,
        rv_span=rng.uniform(1.05, 1.35) + (0.2 if pathology == "RV" else 0.0),
        rv_end=rng.uniform(0.75, 0.95), rv_ef=rng.uniform(*p["rv_ef"]), rv_harm=_harm(rng, 0.2),
        papillary=pap, papillary_r=rng.uniform(2.5, 4.0) * (1.5 if pathology == "HCM" else 1.0),
        trabeculae=(int(rng.integers(9, 16)), _unit(rng.uniform(0, 2 * np.pi)), rng.uniform(0.2, 0.45)),
        epi_fat=1.0 + 5.0 * obesity + rng.uniform(0, 2), epi_fat_harm=_harm(rng, 1.0),
        outflow=_unit(-np.pi * 0.6 + rng.normal(0, 0.2)) if rng.random() < 0.6 else None,
        myo_texture=np.stack([_harm(rng, 0.06), _harm(rng, 0.06)]), tissue=tissue,
        # identity texture of the surroundings (lattices span ±210 mm in-plane, -40..160 mm along the stack):
        # 3 channels on a 17.5 mm / 28 mm lattice and 3 on a 6 mm / 18 mm one
        lattice_coarse=_lattice(rng, (3, 8, 25, 25)), lattice_fine=_lattice(rng, (3, 12, 71, 71)),
    )


# ----------------------------------------------------------------------------------------------------- geometry
class Angles:
    """cos kθ and sin kθ for k in HARMONICS at directions ``unit`` = e^{iθ}, computed once and shared by every
    contour that is modulated around the same centre."""

    def __init__(self, unit: np.ndarray) -> None:
        self.unit = unit
        self.cos = np.empty((len(HARMONICS), *unit.shape), dtype=np.float32)
        self.sin = np.empty_like(self.cos)
        power = unit * unit
        for i in range(len(HARMONICS)):
            if i:
                power = power * unit
            self.cos[i], self.sin[i] = power.real, power.imag

    def modulation(self, coeffs: np.ndarray) -> np.ndarray:
        """Re Σ_k c_k e^{ikθ}; coeffs (K,) or (K, ...) broadcasting against the directions."""
        if coeffs.ndim == 1:
            return (np.tensordot(coeffs.real.astype(np.float32), self.cos, 1)
                    - np.tensordot(coeffs.imag.astype(np.float32), self.sin, 1))
        return (coeffs.real.astype(np.float32) * self.cos - coeffs.imag.astype(np.float32) * self.sin).sum(0)


def blob_distance(rel: np.ndarray, ax, ay, coeffs: np.ndarray) -> np.ndarray:
    """Signed radial distance (mm, negative inside) to a star-shaped blob: an ellipse with semi-axes (ax, ay)
    along the real and imaginary axes of ``rel`` (positions relative to the blob's centre, in its frame) whose
    radius is scaled by ``1 + Angles.modulation(coeffs)``."""
    r = np.abs(rel) + np.float32(1e-3)
    rho = np.sqrt((rel.real / ax) ** 2 + (rel.imag / ay) ** 2) + np.float32(1e-6)
    return r - r / rho * (1 + Angles(rel / r).modulation(coeffs))


def sector(unit: np.ndarray, direction: complex, half_width: float, softness: float = 0.08) -> np.ndarray:
    """Soft indicator of the angular sector of ``half_width`` radians around ``direction``."""
    cos_delta = (unit * np.conj(direction)).real
    return 1.0 / (1.0 + np.exp(-(cos_delta - np.cos(half_width)) / softness))


def _power(u: np.ndarray, n: int) -> np.ndarray:
    """u**n by repeated squaring (numpy's complex power goes through exp/log)."""
    result, base = None, u
    while n:
        if n & 1:
            result = base if result is None else result * base
        base, n = base * base, n >> 1
    return result


def _along_s(coeffs: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Harmonic coefficients (2, K) given at the base and as change toward the apex → (K, B, 1, 1)."""
    return coeffs[0][:, None, None, None] + coeffs[1][:, None, None, None] * s[None]


def lv_radii(a: Anatomy, angles: Angles, s: np.ndarray, es: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Endocardial and epicardial radii (mm) in the directions of ``angles`` (heart frame) at relative positions
    s (0 base, 1 apex) and phases es (0 ED, 1 ES), both (B, 1, 1)."""
    unit = angles.unit
    taper = np.sqrt(np.clip(1 - (s / a.apex) ** 2, 0.04, 1))
    epi = a.r_epi * taper * (1 + angles.modulation(_along_s(a.epi_harm, s)))
    wall = a.wall * (1 - 0.3 * s) * (1 + angles.modulation(a.wall_harm))
    ef = np.full(np.broadcast_shapes(unit.shape, s.shape), a.ef, dtype=np.float32)
    if a.septal_extra:  # asymmetric septal hypertrophy: the wall facing the RV is thickest
        wall = wall * (1 + a.septal_extra * sector(unit, a.rv_dir, 0.9, 0.25))
    if a.infarct is not None:
        direction, half, thinning, s_from, s_to = a.infarct
        extent = np.clip((s - s_from) / 0.1, 0, 1) * np.clip((s_to - s) / 0.1, 0, 1)
        scar = sector(unit, direction, half) * extent
        wall = wall * (1 - thinning * scar)
        ef = ef * (1 - 0.9 * scar)  # akinetic scar
    if a.outflow is not None:  # the LV outflow tract interrupts the ring in the most basal slice
        wall = wall * (1 - sector(unit, a.outflow, 0.45) * np.clip(1 - s / 0.06, 0, 1))
    endo = np.minimum(np.maximum(epi - wall, 0) * (1 + angles.modulation(_along_s(a.endo_harm, s))), epi)
    endo_es = endo * np.sqrt(1 - ef * es)
    epi_es = np.sqrt(endo_es ** 2 + epi ** 2 - endo ** 2)  # each sector keeps its myocardial area
    return endo_es.astype(np.float32, copy=False), epi_es.astype(np.float32, copy=False)


def heart_distances(a: Anatomy, pos: np.ndarray, s: np.ndarray, es: np.ndarray,
                    appearance: bool = True) -> dict[str, np.ndarray]:
    """Signed distances (mm) to the heart's structures for positions ``pos`` (complex, (H, W)) on rows with
    relative positions ``s`` and phases ``es`` (each (B,)); arrays (B, H, W). ``appearance`` adds what only the
    image needs (fat, papillary muscles, trabeculae, texture)."""
    s3 = s.astype(np.float32)[:, None, None]
    es3 = es.astype(np.float32)[:, None, None]
    centre = a.centre + a.drift * s3 + a.es_shift * es3
    rel = ((pos[None] - centre) * np.conj(a.rotation)).astype(np.complex64, copy=False)
    r = np.abs(rel) + np.float32(1e-3)
    angles = Angles(rel / r)
    endo, epi = lv_radii(a, angles, s3, es3)
    # RV: a crescent hugging the LV epicardium over an arc of ±rv_span around rv_dir, widest in the middle;
    # it narrows toward the apex and fades out at rv_end
    width = a.rv_width * np.clip(1 - s3 / a.rv_end, 0, 1) ** 0.6 * (1 - a.rv_ef * es3) ** 0.8
    cos_span = np.cos(a.rv_span)
    profile = np.clip(((angles.unit * np.conj(a.rv_dir)).real - cos_span) / (1 - cos_span), 0, 1) ** 0.6
    rv_outer = epi + width * profile * (1 + angles.modulation(a.rv_harm))
    out = {"endo": r - endo, "epi": r - epi, "rv": np.where(width > 0.5, r - rv_outer, np.float32(1e3))}
    # the RV free wall (3 mm) thins out toward the insertion points instead of wrapping the LV
    rv_wall = np.where(width > 0.5, r - rv_outer - 3.0 * np.clip(profile * 5, 0, 1), np.float32(1e3))
    if not appearance:
        return out
    # papillary muscles: round, touching the wall, mid-ventricular slices only, labelled as cavity (ACDC)
    d_pap = np.full(rel.shape, 1e3, dtype=np.float32)
    radius = a.papillary_r * np.clip((s3 - 0.15) / 0.1, 0, 1) * np.clip((0.85 - s3) / 0.1, 0, 1) * (1 + 0.15 * es3)
    for direction in a.papillary:
        wall_r, _ = lv_radii(a, Angles(np.full(s3.shape, direction, dtype=np.complex64)), s3, es3)
        d_pap = np.minimum(d_pap, np.abs(rel - (wall_r - 0.9 * radius) * direction) - radius)
    out["pap"] = np.where(radius > 0.3, d_pap, np.float32(1e3))
    # epicardial fat: patchy, thickest where the harmonics put it (grooves), absent elsewhere
    fat = a.epi_fat * np.maximum(angles.modulation(a.epi_fat_harm) + 0.35, 0)
    out["heart"] = np.minimum(out["epi"], rv_wall)
    out["fat"] = out["heart"] - fat
    n, phase, depth = a.trabeculae
    ridges = np.maximum((_power(angles.unit, n) * phase).real, 0) ** 2
    out["trabeculae"] = (depth * (0.3 + 0.7 * s3) * ridges * np.clip(1 - (endo - r) / 3.5, 0, 1)).astype(np.float32)
    out["outflow"] = np.full(rel.shape, 1e3, dtype=np.float32)
    if a.outflow is not None:
        out["outflow"] = np.where(s3 < 0.06, np.abs(rel - (a.r_epi + 4) * a.outflow) - 13, out["outflow"])
    out["myo_texture"] = angles.modulation(_along_s(a.myo_texture, s3))
    return out


def labels(d: dict[str, np.ndarray]) -> np.ndarray:
    """ACDC labels at pixel centres: 1 RV cavity, 2 LV myocardium, 3 LV cavity (papillary muscles included)."""
    out = np.where(d["rv"] < 0, 1, 0)
    out = np.where(d["epi"] < 0, 2, out)
    return np.where(d["endo"] < 0, 3, out).astype(np.int64)
