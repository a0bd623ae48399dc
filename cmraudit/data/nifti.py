"""Safe NIfTI reading for the dataset loaders: every failure is one ``DataError`` line naming the file.

nibabel reads lazily, so a truncated or corrupt ``.nii.gz`` only fails when the voxels are read, with whatever
zlib, gzip or numpy error happened to surface first. The helpers here read eagerly and turn all of those into a
``DataError`` that names the file, and they check what a loader must not pass on silently: NaNs in an image,
non-integer or out-of-range labels in a mask, and an image whose shape differs from its mask.

Axis convention (shared with ``cmraudit.data.export``): a 3-D NIfTI array indexed ``[i, j, k]`` becomes a
``(Z, H, W)`` volume with H = i, W = j and Z = k, so ``spacing_hwz`` is the header's first three zooms.
"""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

# ACDC label set; M&Ms uses the same values in another order (remapped by the M&Ms loader).
MAX_LABEL = 3


class DataWarning(UserWarning):
    """A patient or file skipped while the rest of a data set loads; the CLI prints each as one line."""


def warn_skipped(collected: list[str], message: str) -> None:
    """Record a skipped patient on the source's list and through ``warnings`` (library code never prints)."""
    collected.append(message)
    warnings.warn(message, DataWarning, stacklevel=2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists."""
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _from_bytes(raw: bytes):
    """A NIfTI-1 or NIfTI-2 image from the bytes of an uncompressed single file."""
    import nibabel as nib

    header_size = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
    if header_size not in (348, 540):  # NIfTI-1 and NIfTI-2 headers, either byte order
        header_size = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
    cls = nib.Nifti2Image if header_size == 540 else nib.Nifti1Image
    return cls.from_bytes(raw)


def read_nifti(path: Path | str) -> tuple[np.ndarray, tuple[float, ...]]:
    """The voxel array (scaling applied, float64 or the stored integer type) and the header zooms."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.name.lower().endswith(".gz"):
            # decompress the whole stream ourselves: gzip then checks the CRC and length trailer, which a lazy
            # reader stops short of, so a file truncated after its voxel data still counts as truncated
            img = _from_bytes(gzip.decompress(path.read_bytes()))
        else:
            img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)  # forces the full read
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:  # zlib.error, EOFError, gzip.BadGzipFile, ImageFileError, ValueError, ...
        raise DataError(f"{path}: cannot read NIfTI ({_first_line(exc)})") from None
    if data.ndim < 3:
        raise DataError(f"{path}: expected a 3-D or 4-D volume, got shape {data.shape}")
    return data, zooms


def as_image(data: np.ndarray, path: Path | str) -> np.ndarray:
    """float32 intensities; NaN or infinite voxels are an error (they would poison percentile normalisation)."""
    if not np.issubdtype(data.dtype, np.number):
        raise DataError(f"{path}: image has non-numeric voxel type {data.dtype}")
    image = np.asarray(data, dtype=np.float32)
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"{path}: image contains {bad} NaN or infinite voxels")
    return image


def as_labels(data: np.ndarray, path: Path | str, max_label: int = MAX_LABEL) -> np.ndarray:
    """int64 labels in 0..max_label; fractional or unexpected values are an error, never silently cast."""
    if not np.issubdtype(data.dtype, np.number):
        raise DataError(f"{path}: mask has non-numeric voxel type {data.dtype}")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: mask contains NaN or infinite values")
    labels = np.rint(data).astype(np.int64)
    if not np.allclose(labels, data, atol=1e-3):
        raise DataError(f"{path}: mask has non-integer labels (is this an image rather than a segmentation?)")
    unexpected = sorted(set(np.unique(labels).tolist()) - set(range(max_label + 1)))
    if unexpected:
        shown = ", ".join(str(v) for v in unexpected[:5])
        raise DataError(f"{path}: mask has labels {shown} outside 0-{max_label}")
    return labels


def to_zhw(volume: np.ndarray) -> np.ndarray:
    """NIfTI ``[i, j, k]`` -> ``(Z, H, W)`` (see the module docstring)."""
    return np.ascontiguousarray(np.transpose(volume, (2, 0, 1)))


def check_same_shape(image: np.ndarray, mask: np.ndarray, image_path: Path | str, mask_path: Path | str) -> None:
    if image.shape != mask.shape:
        raise DataError(f"{mask_path}: mask shape {tuple(mask.shape)} differs from image shape "
                        f"{tuple(image.shape)} of {Path(image_path).name}")


def read_raw_pair(image_path: Path, mask_path: Path, ndim: int, axes: str
                  ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """An image and its mask as stored, both ``ndim``-D (``axes`` names them for the error) and of one shape."""
    raw_image, zooms = read_nifti(image_path)
    raw_mask, _ = read_nifti(mask_path)
    for path, raw in ((image_path, raw_image), (mask_path, raw_mask)):
        if raw.ndim != ndim:
            raise DataError(f"{path}: expected a {ndim}-D ({axes}) volume, got shape {raw.shape}")
    check_same_shape(raw_image, raw_mask, image_path, mask_path)
    return raw_image, raw_mask, zooms


def read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A 3-D image and its label mask as ``(Z, H, W)`` arrays, plus (H, W, Z) spacing in millimetres."""
    raw_image, raw_mask, zooms = read_raw_pair(image_path, mask_path, 3, "X, Y, Z")
    image = as_image(raw_image, image_path)
    labels = as_labels(raw_mask, mask_path)
    return to_zhw(image), to_zhw(labels), spacing_hwz(zooms, image_path)


def spacing_hwz(zooms: tuple[float, ...], path: Path | str) -> tuple[float, float, float]:
    spacing = tuple(float(z) for z in zooms[:3])
    if len(spacing) < 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise DataError(f"{path}: invalid voxel spacing {zooms[:3]} in the header")
    return spacing  # type: ignore[return-value]
