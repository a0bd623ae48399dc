"""Surface distances between 2-D label maps, for a whole batch of slices at once.

The Hausdorff distance between two point sets A and B is max(h(A, B), h(B, A)) with the directed distance
h(A, B) = max over a in A of the distance from a to its nearest point of B (Huttenlocher et al. 1993, "Comparing
images using the Hausdorff distance", IEEE TPAMI 15(9)). Segmentation challenges replace the maximum by the 95th
percentile to be robust to a few outlying pixels: HD95, as scored in the ACDC challenge (Bernard et al. 2018, "Deep
learning techniques for automatic MRI cardiac multi-structures segmentation and diagnosis", IEEE TMI 37(11)).

``hausdorff_distance`` returns what ``monai.metrics.HausdorffDistanceMetric(include_background=False,
reduction="none")`` returns for the one-hot encodings of the same label maps on the CPU, value for value:

- the surface of a mask is its pixels with a 4-neighbour outside the mask, the image border counting as outside
  (a binary erosion by the 3x3 cross, as ``monai.metrics.utils.get_mask_edges``);
- the distance of a surface pixel is to the nearest surface pixel of the other mask: Euclidean over pixel indices
  scaled by ``spacing`` (computed in float64 with the same operations as MONAI's KD-tree query, then rounded to
  float32), or the chessboard / taxicab distance in pixels (spacing ignored, as MONAI's chamfer transform);
- each direction is reduced by ``torch.quantile`` (linear interpolation) at ``percentile`` / 100, or by the maximum
  when ``percentile`` is None or 0; the larger direction is the distance, NaN as soon as one direction is NaN;
- when both masks are empty the distance is NaN; when exactly one is empty, MONAI measures a vector of infinities
  as long as the other mask's surface, whose percentile is NaN (torch interpolates inf - inf) and whose maximum is
  infinity. The same reduction is applied here to the same vector.

MONAI loops over slices and classes in Python (a crop, a scipy erosion and a KD-tree per pair); here the surfaces
of all slices and classes come from one pass over the label maps, and the distances from padded pairwise distance
matrices, a chunk of pairs at a time (64 x 64 slices have at most a few hundred surface pixels per structure).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

#: float64 elements of one chunk's pairwise-distance matrix: two such arrays (4 MiB) stay in cache
_CHUNK_ELEMENTS = 1 << 18


def mask_edges(masks: torch.Tensor) -> torch.Tensor:
    """Surface pixels of binary masks (..., H, W): in the mask with a 4-neighbour outside it or off the image."""
    m = torch.as_tensor(masks).bool()
    padded = torch.nn.functional.pad(m, (1, 1, 1, 1), value=False)
    eroded = m & padded[..., :-2, 1:-1] & padded[..., 2:, 1:-1] & padded[..., 1:-1, :-2] & padded[..., 1:-1, 2:]
    return m & ~eroded


def label_edges(labels: torch.Tensor) -> torch.Tensor:
    """Pixels of label maps (..., H, W) with a 4-neighbour of another label or on the image border.

    A pixel of label c is on the surface of the mask ``labels == c`` exactly when it is one of these, so the
    surfaces of every class come from this one map: ``label_edges(labels) & (labels == c)`` is
    ``mask_edges(labels == c)``.
    """
    lab = torch.as_tensor(labels)
    edge = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
    vertical = lab[..., 1:, :] != lab[..., :-1, :]
    horizontal = lab[..., :, 1:] != lab[..., :, :-1]
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 0, :] = edge[..., -1, :] = True
    edge[..., :, 0] = edge[..., :, -1] = True
    return edge


def hd95(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, classes: Sequence[int],
         spacing: float | Sequence[float] | None = None) -> torch.Tensor:
    """95th-percentile Hausdorff distance per slice and class (N, len(classes)); see ``hausdorff_distance``."""
    return hausdorff_distance(pred, target, classes, percentile=95, spacing=spacing)


def hausdorff_distance(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, classes: Sequence[int],
                       percentile: float | None = None, spacing: float | Sequence[float] | None = None,
                       distance_metric: str = "euclidean", directed: bool = False) -> torch.Tensor:
    """Hausdorff distance (or its ``percentile``) between the masks of each class in label maps (N, H, W).

    Returns a float32 tensor (N, len(classes)) equal to MONAI's ``HausdorffDistanceMetric(include_background=False,
    distance_metric=..., percentile=..., directed=..., reduction="none")`` applied to the one-hot encodings, with
    ``spacing`` a number or one number per axis (row, column) as MONAI's; NaN / inf where MONAI gives them (see the
    module docstring). ``directed`` keeps the prediction-to-reference direction only.
    """
    if distance_metric not in ("euclidean", "chessboard", "taxicab"):
        raise ValueError(f"distance_metric {distance_metric!r} is not implemented")
    if percentile and not 0 <= percentile <= 100:
        raise ValueError(f"percentile should be a value between 0 and 100, got {percentile}")
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes should be distinct, got {classes}")
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred and target should be label maps of the same shape (N, H, W), got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    target = target.to(pred.device)
    n, h, w = pred.shape
    pairs = n * len(classes)  # pair = slice * len(classes) + class index
    surface_p, count_p = _surface_pixels(pred, classes)
    surface_g, count_g = _surface_pixels(target, classes)
    out = torch.full((pairs,), float("nan"), dtype=torch.float32, device=pred.device)

    # one mask empty, the other not: MONAI's distances are a vector of inf as long as the non-empty surface
    one_empty = torch.nonzero((count_p == 0) != (count_g == 0)).flatten()
    if len(one_empty):
        lengths = (count_p + count_g)[one_empty]
        for length in torch.unique(lengths).tolist():
            inf = torch.full((1, length), float("inf"), dtype=torch.float32, device=pred.device)
            out[one_empty[lengths == length]] = _reduce(inf, percentile)[0]

    both = torch.nonzero((count_p > 0) & (count_g > 0)).flatten()
    if len(both) == 0:
        return out.view(n, len(classes))
    scale = _scale(spacing, distance_metric)
    # padding lies further from every surface pixel than any two surface pixels are from each other
    pad = 4.0 * max(h, w) * float(scale.abs().max()) + 1.0
    rows_p, cols_p = _padded(surface_p, count_p, both, scale, pad)
    rows_g, cols_g = _padded(surface_g, count_g, both, scale, pad)
    cp, cg = count_p[both].tolist(), count_g[both].tolist()
    # pairs in order of surface size, cut into chunks whose padded distance matrices stay small
    order = sorted(range(len(both)), key=lambda i: max(cp[i], cg[i]))
    start = 0
    while start < len(order):
        stop, a, b = start, 0, 0
        while stop < len(order):
            a2, b2 = max(a, cp[order[stop]]), max(b, cg[order[stop]])
            if stop > start and (stop - start + 1) * a2 * b2 > _CHUNK_ELEMENTS:
                break
            a, b, stop = a2, b2, stop + 1
        chunk = torch.as_tensor(order[start:stop], device=pred.device)
        out[both[chunk]] = _chunk_distance(rows_p[chunk, :a], cols_p[chunk, :a], count_p[both[chunk]],
                                           rows_g[chunk, :b], cols_g[chunk, :b], count_g[both[chunk]],
                                           percentile, distance_metric, directed)
        start = stop
    return out.view(n, len(classes))


def _surface_pixels(labels: torch.Tensor, classes: list[int]
                    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Surface pixels of each (slice, class) pair as (pair, row, column) sorted by pair, and the count per pair."""
    slice_, row, col = torch.nonzero(label_edges(labels), as_tuple=True)
    label = labels[slice_, row, col]
    index = torch.full_like(slice_, -1)
    for i, c in enumerate(classes):
        index[label == c] = i
    kept = index >= 0  # surface pixels of a class not asked for (background) are dropped
    pair = slice_[kept] * len(classes) + index[kept]
    order = torch.argsort(pair, stable=True)
    pair, row, col = pair[order], row[kept][order], col[kept][order]
    return (pair, row, col), torch.bincount(pair, minlength=len(labels) * len(classes))


def _scale(spacing: float | Sequence[float] | None, distance_metric: str) -> torch.Tensor:
    if distance_metric != "euclidean" or spacing is None:
        return torch.ones(2, dtype=torch.float64)
    s = torch.as_tensor(np.asarray(spacing, dtype=np.float64))
    if s.ndim == 0:
        return s.expand(2)
    if s.shape != (2,):
        raise ValueError(f"spacing should be a number or one number per axis (2), got {spacing}")
    return s


def _padded(surface: tuple[torch.Tensor, torch.Tensor, torch.Tensor], counts: torch.Tensor, keep: torch.Tensor,
            scale: torch.Tensor, pad: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates (len(keep), max count) in float64 of the kept pairs' surface pixels, index times
    spacing as MONAI scales them before measuring; ``pad`` after each pair's last pixel."""
    pair, row, col = surface
    position = torch.full((len(counts),), -1, dtype=torch.long, device=pair.device)
    position[keep] = torch.arange(len(keep), device=pair.device)
    rank = torch.arange(len(pair), device=pair.device) - (torch.cumsum(counts, 0) - counts)[pair]
    slot, kept = position[pair], position[pair] >= 0
    width = int(counts[keep].max())
    scale = scale.to(pair.device)
    rows = torch.full((len(keep), width), pad, dtype=torch.float64, device=pair.device)
    cols = torch.full((len(keep), width), pad, dtype=torch.float64, device=pair.device)
    rows[slot[kept], rank[kept]] = row[kept].double() * scale[0]
    cols[slot[kept], rank[kept]] = col[kept].double() * scale[1]
    return rows, cols


def _chunk_distance(rows_p: torch.Tensor, cols_p: torch.Tensor, count_p: torch.Tensor, rows_g: torch.Tensor,
                    cols_g: torch.Tensor, count_g: torch.Tensor, percentile: float | None, distance_metric: str,
                    directed: bool) -> torch.Tensor:
    dist = rows_p[:, :, None] - rows_g[:, None, :]
    other = cols_p[:, :, None] - cols_g[:, None, :]
    if distance_metric == "euclidean":
        # squared distance summed as a KD-tree sums it (d0 * d0 + d1 * d1), so its square root rounds the same
        dist.mul_(dist).add_(other.mul_(other))
    elif distance_metric == "chessboard":
        torch.maximum(dist.abs_(), other.abs_(), out=dist)
    else:
        dist.abs_().add_(other.abs_())
    finish = torch.sqrt if distance_metric == "euclidean" else (lambda x: x)
    nan = torch.tensor(float("nan"), dtype=torch.float32, device=dist.device)
    # nearest reference surface pixel of each predicted one; padding becomes NaN, which the reduction skips
    slots_p = torch.arange(dist.shape[1], device=dist.device)
    to_g = torch.where(slots_p < count_p[:, None], finish(dist.amin(2)).float(), nan)
    result = _reduce(to_g, percentile)
    if not directed:
        slots_g = torch.arange(dist.shape[2], device=dist.device)
        to_p = torch.where(slots_g < count_g[:, None], finish(dist.amin(1)).float(), nan)
        result = torch.maximum(result, _reduce(to_p, percentile))  # NaN-propagating, as torch.max over both
    return result


def _reduce(values: torch.Tensor, percentile: float | None) -> torch.Tensor:
    """Per row of NaN-padded float32 distances: ``torch.quantile`` at percentile / 100 or the maximum."""
    if not percentile:
        return torch.where(values.isnan(), float("-inf"), values).amax(1)
    # nanquantile over the padded row computes the same rank and interpolation as quantile over the unpadded one
    return torch.nanquantile(values, percentile / 100, dim=1)
