"""Volumes → 2-D slices: heart-centred square crop of a fixed field of view, resampling, robust normalisation.

Every source (ACDC, M&Ms, an exported phantom) goes through the same steps, so a model sees the same geometry
whatever the scanner's matrix size: a square of ``FOV_MM`` millimetres centred on the heart (centroid of the
labelled structures over the patient's ED volume), resampled to ``image_size`` (bilinear with antialiasing for
images, nearest neighbour for masks), intensities clipped to the patient's 0.5–99.5 percentiles and mapped to [-1, 1].
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .types import PatientVolume, SliceTable

FOV_MM = 160.0
PERCENTILES = (0.5, 99.5)


def heart_centre(mask: np.ndarray) -> tuple[float, float]:
    """(row, col) centroid of labelled voxels of a (Z, H, W) mask; the image centre when nothing is labelled."""
    zz, rr, cc = np.nonzero(mask > 0)
    if rr.size == 0:
        return (mask.shape[1] - 1) / 2, (mask.shape[2] - 1) / 2
    return float(rr.mean()), float(cc.mean())


def normalise(volume: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    lo, hi = lo_hi
    scale = max(hi - lo, 1e-6)
    return np.clip((volume - lo) / scale, 0.0, 1.0) * 2.0 - 1.0


def crop_resample(images: np.ndarray, masks: np.ndarray, centre: tuple[float, float],
                  spacing_hw: tuple[float, float], image_size: int, fov_mm: float = FOV_MM) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop a fov_mm square around ``centre`` (padding -1 outside the volume) and resample to image_size.

    Implemented as one affine grid sample per volume, so anisotropic pixels become square in the output.
    """
    z, h, w = images.shape
    # normalised coordinates (align_corners=False): pixel i of n has centre (2i + 1) / n - 1
    half_rows = fov_mm / 2 / spacing_hw[0]
    half_cols = fov_mm / 2 / spacing_hw[1]
    ys = torch.linspace(-1, 1, image_size) * (image_size - 1) / image_size  # output pixel centres
    rows = centre[0] + ys * half_rows
    cols = centre[1] + ys * half_cols
    gy = (2 * rows + 1) / h - 1
    gx = (2 * cols + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).unsqueeze(0).expand(z, -1, -1, -1)
    img = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    # antialias: blur before sampling when shrinking by more than 1.5x
    shrink = min(2 * half_rows / image_size, 2 * half_cols / image_size)
    if shrink > 1.5:
        k = int(round(shrink)) | 1
        img = F.avg_pool2d(F.pad(img, (k // 2,) * 4, mode="replicate"), k, stride=1)
    # pad with -1 (the darkest normalised value, like air) rather than 0, which would frame the scan in mid-grey
    out_img = F.grid_sample(img + 1, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    msk = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).unsqueeze(1)
    out_msk = F.grid_sample(msk, grid.float(), mode="nearest", padding_mode="zeros", align_corners=False)
    return out_img, out_msk.squeeze(1).round().long()


def volumes_to_table(volumes: Iterable[PatientVolume], image_size: int, source: str = "",
                     fov_mm: float = FOV_MM, skip_empty: bool = True) -> SliceTable:
    """Slice every patient's ED and ES volumes into a SliceTable (empty slices skipped)."""
    tables: list[SliceTable] = []
    for vol in volumes:
        phases = [p for p in ("ED", "ES") if p in vol.images]
        if not phases:
            continue
        ref_mask = vol.masks["ED" if "ED" in vol.masks else phases[0]]
        centre = heart_centre(ref_mask)
        stacked = np.concatenate([vol.images[p].ravel() for p in phases])
        if not np.isfinite(stacked).all():
            raise DataError(f"{vol.info.get('file', vol.patient)}: image contains NaN or infinite values")
        lo_hi = tuple(np.percentile(stacked, PERCENTILES))
        for phase in phases:
            img, msk = crop_resample(normalise(vol.images[phase], lo_hi), vol.masks[phase], centre,
                                     vol.spacing_hwz[:2], image_size, fov_mm)
            keep = np.arange(img.shape[0])
            if skip_empty:
                keep = np.flatnonzero(msk.flatten(1).amax(1).numpy() > 0)
            if keep.size == 0:
                continue
            n = keep.size
            t = torch.from_numpy(keep)
            tables.append(SliceTable(img[t].clamp(-1, 1), msk[t], [vol.patient] * n, [vol.vendor] * n,
                                     [vol.pathology] * n, [phase] * n, keep, source))
    if not tables:
        raise DataError(f"{source or 'data set'}: no labelled slices found")
    return SliceTable.concat(tables, source=source)
