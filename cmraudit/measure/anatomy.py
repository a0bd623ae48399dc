"""Anatomical plausibility of short-axis label maps (0 BG, 1 RV, 2 MYO, 3 LV), generated or real.

Each mask gets a handful of checks drawn from short-axis anatomy (../shared/CARDIAC-FACTS.md; the label geometry of
ACDC, Bernard et al. 2018): the LV blood pool is one connected region enclosed by the myocardium; the myocardium is
one ring around it; the RV is one crescent beside the myocardium that does not touch the LV cavity. These are the
topological priors cardiac segmentation work enforces or scores (Painchaud et al. 2020, "Cardiac Segmentation with
Strong Anatomical Guarantees", whose anatomical-error criteria include holes, disconnected structures and LV-RV
contact; Oktay et al. 2018, ACNN).

A check applies only when the structures it is about are present: a basal slice without the RV, or an apical one
where the cavity has closed, is not implausible. Real masks also break some rules legitimately (the myocardial ring
opens at the outflow tract of basal slices; the RV frays into fragments at the apex), so no share is read alone:
``compare`` reports each check's pass rate for a generated set beside a real set, the real one as the baseline.

Areas are fractions of the image (comparable across image sizes); their distributions are compared with the
1-Wasserstein distance per structure, overall and per pathology.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats

RV, MYO, LV = 1, 2, 3
STRUCTURE_LABELS = {"RV": RV, "MYO": MYO, "LV": LV}
CHECKS = ("lv_one_component", "lv_enclosed_by_myo", "myo_one_component", "myo_ring_around_lv", "rv_one_component",
          "rv_beside_myo", "rv_apart_from_lv")
#: share of the LV boundary's outside contacts that must be myocardium (the rest: a gap to RV or background)
LV_ENCLOSED_MIN = 0.9
#: share of angular sectors around the LV centre that must hold myocardium for a ring
RING_SECTORS, RING_COVERAGE_MIN = 16, 0.9
#: fewer pixels than this and a structure counts as absent (single stray pixels are not anatomy)
MIN_PIXELS = 3
_FOUR = ndimage.generate_binary_structure(2, 1)

PASS, FAIL, NOT_APPLICABLE = 1, 0, -1


@dataclass
class MaskChecks:
    """Per-mask results for N masks: ``checks[name]`` (N,) int8 (1 pass, 0 fail, -1 not applicable), ``areas``
    (N, 3) fractions of the image for RV, MYO, LV, ``lv_enclosure`` (N,) the enclosed share (NaN without LV and
    MYO), and ``plausible`` (N,) bool: every applicable check passes."""

    checks: dict[str, np.ndarray]
    areas: np.ndarray
    lv_enclosure: np.ndarray

    @property
    def plausible(self) -> np.ndarray:
        return np.all(np.stack([v != FAIL for v in self.checks.values()]), axis=0)

    def pass_rate(self, name: str) -> tuple[float, int]:
        """(share passing among the masks it applies to, number it applies to); NaN share when none."""
        v = self.checks[name]
        n = int((v != NOT_APPLICABLE).sum())
        return (float((v == PASS).sum() / n) if n else float("nan")), n


def _components(region: np.ndarray) -> int:
    """4-connected components of at least ``MIN_PIXELS`` pixels (a stray pixel or two is resampling noise)."""
    labelled, n = ndimage.label(region, structure=_FOUR)
    return int((np.bincount(labelled.ravel(), minlength=n + 1)[1:] >= MIN_PIXELS).sum())


def _touches(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a pixel of ``a`` is 4-adjacent to (or on) a pixel of ``b``."""
    return bool((ndimage.binary_dilation(a, structure=_FOUR) & b).any())


def lv_enclosure(mask: np.ndarray) -> float:
    """Share of the LV's outside 4-neighbour contacts that are myocardium (1.0 = fully enclosed by MYO)."""
    lv = mask == LV
    padded = np.pad(mask, 1, constant_values=0)
    lv_p = np.pad(lv, 1, constant_values=False)
    contacts = myo = 0
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        neighbour = np.roll(np.roll(padded, dy, 0), dx, 1)
        edge = lv_p & (neighbour != LV)
        contacts += int(edge.sum())
        myo += int((edge & (neighbour == MYO)).sum())
    return myo / contacts if contacts else 1.0


def ring_coverage(mask: np.ndarray) -> float:
    """Share of ``RING_SECTORS`` angular sectors around the LV centroid that contain myocardium."""
    ys, xs = np.nonzero(mask == LV)
    my, mx = np.nonzero(mask == MYO)
    if ys.size == 0 or my.size == 0:
        return 0.0
    angle = np.arctan2(my - ys.mean(), mx - xs.mean())
    sectors = np.floor((angle + np.pi) / (2 * np.pi) * RING_SECTORS).astype(int) % RING_SECTORS
    return len(np.unique(sectors)) / RING_SECTORS


def check_mask(mask: np.ndarray) -> tuple[dict[str, int], np.ndarray, float]:
    """One (H, W) label map -> (check results, areas of RV/MYO/LV as image fractions, LV enclosure or NaN)."""
    mask = np.asarray(mask)
    regions = {name: mask == label for name, label in STRUCTURE_LABELS.items()}
    counts = {name: int(r.sum()) for name, r in regions.items()}
    present = {name: counts[name] >= MIN_PIXELS for name in regions}
    rv, myo, lv = regions["RV"], regions["MYO"], regions["LV"]
    out = dict.fromkeys(CHECKS, NOT_APPLICABLE)

    def verdict(ok: bool) -> int:
        return PASS if ok else FAIL

    enclosure = float("nan")
    if present["LV"]:
        out["lv_one_component"] = verdict(_components(lv) == 1)
        if present["MYO"]:
            enclosure = lv_enclosure(mask)
    if present["MYO"]:
        out["myo_one_component"] = verdict(_components(myo) == 1)
    if present["LV"] or present["MYO"]:
        # an LV cavity with no myocardium at all is not enclosed; a myocardium alone (apex) has nothing to enclose
        out["lv_enclosed_by_myo"] = NOT_APPLICABLE if not present["LV"] else verdict(
            present["MYO"] and enclosure >= LV_ENCLOSED_MIN)
    if present["LV"] and present["MYO"]:
        out["myo_ring_around_lv"] = verdict(ring_coverage(mask) >= RING_COVERAGE_MIN)
    if present["RV"]:
        out["rv_one_component"] = verdict(_components(rv) == 1)
        if present["MYO"]:
            out["rv_beside_myo"] = verdict(_touches(rv, myo))
        if present["LV"]:
            out["rv_apart_from_lv"] = verdict(not _touches(rv, lv))
    areas = np.asarray([counts[name] for name in STRUCTURE_LABELS], dtype=np.float64) / mask.size
    return out, areas, enclosure


def check_masks(masks: torch.Tensor | np.ndarray) -> MaskChecks:
    """``check_mask`` over (N, H, W) label maps."""
    array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    checks = {name: np.empty(len(array), dtype=np.int8) for name in CHECKS}
    areas = np.zeros((len(array), len(STRUCTURE_LABELS)))
    enclosure = np.full(len(array), np.nan)
    for i, mask in enumerate(array):
        result, areas[i], enclosure[i] = check_mask(mask)
        for name, value in result.items():
            checks[name][i] = value
    return MaskChecks(checks, areas, enclosure)


def _w1(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(stats.wasserstein_distance(a, b)) if len(a) and len(b) else None


def _set_summary(result: MaskChecks) -> dict[str, Any]:
    checks = {}
    for name in CHECKS:
        share, n = result.pass_rate(name)
        checks[name] = {"pass_share": None if np.isnan(share) else share, "applies": n}
    return {"n": int(len(result.areas)), "plausible_share": float(result.plausible.mean()) if len(result.areas)
            else None, "checks": checks,
            "area_mean": {s: float(result.areas[:, j].mean()) if len(result.areas) else None
                          for j, s in enumerate(STRUCTURE_LABELS)}}


def compare(generated: torch.Tensor | np.ndarray, real: torch.Tensor | np.ndarray,
            generated_pathologies: np.ndarray | None = None, real_pathologies: np.ndarray | None = None
            ) -> dict[str, Any]:
    """A generated set of masks beside a real one (the baseline): plausible share and per-check pass rates in each,
    their gap (generated - real), and area distributions per structure (means, W1), overall and per pathology.
    JSON-ready."""
    gen, ref = check_masks(generated), check_masks(real)
    out: dict[str, Any] = {"generated": _set_summary(gen), "real": _set_summary(ref),
                           "thresholds": {"lv_enclosed_min": LV_ENCLOSED_MIN, "ring_coverage_min": RING_COVERAGE_MIN,
                                          "ring_sectors": RING_SECTORS, "min_pixels": MIN_PIXELS}}
    g, r = out["generated"], out["real"]
    out["plausible_gap"] = (g["plausible_share"] - r["plausible_share"]
                            if g["plausible_share"] is not None and r["plausible_share"] is not None else None)
    out["check_gap"] = {name: (g["checks"][name]["pass_share"] - r["checks"][name]["pass_share"]
                               if g["checks"][name]["pass_share"] is not None
                               and r["checks"][name]["pass_share"] is not None else None) for name in CHECKS}
    out["area_w1"] = {s: _w1(gen.areas[:, j], ref.areas[:, j]) for j, s in enumerate(STRUCTURE_LABELS)}
    if generated_pathologies is not None and real_pathologies is not None:
        gp, rp = np.asarray(generated_pathologies, dtype=str), np.asarray(real_pathologies, dtype=str)
        per: dict[str, Any] = {}
        for pathology in sorted(set(gp) & set(rp)):
            a, b = gen.areas[gp == pathology], ref.areas[rp == pathology]
            per[pathology] = {s: {"generated_mean": float(a[:, j].mean()), "real_mean": float(b[:, j].mean()),
                                  "w1": _w1(a[:, j], b[:, j])} for j, s in enumerate(STRUCTURE_LABELS)}
            per[pathology]["n"] = {"generated": int(len(a)), "real": int(len(b))}
        out["per_pathology"] = per
    return out
