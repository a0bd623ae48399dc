"""Batched surface distances against MONAI's HausdorffDistanceMetric: random and structured masks, empty masks,
single pixels, non-unit and anisotropic spacing, and the other percentiles / metrics MONAI offers."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from cmraudit.measure.segmenter import dice_hd95
from cmraudit.measure.surface_distance import hausdorff_distance, hd95, label_edges, mask_edges

N_CLASSES = 4
CLASSES = [1, 2, 3]


def monai_hd(pred: torch.Tensor, target: torch.Tensor, spacing=None, **options) -> torch.Tensor:
    from monai.metrics import HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    p = one_hot(pred.unsqueeze(1).long(), N_CLASSES)
    t = one_hot(target.unsqueeze(1).long(), N_CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty structure
        return HausdorffDistanceMetric(include_background=False, reduction="none", **options)(p, t, spacing=spacing)


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    # NaN where MONAI has NaN, the same infinities, and finite values within 1e-6
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours.isinf(), theirs.isinf())
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6, equal_nan=True)


def random_labels(gen: torch.Generator, n: int, h: int, w: int, fill: float) -> torch.Tensor:
    labels = torch.randint(1, N_CLASSES, (n, h, w), generator=gen)
    labels[torch.rand(n, h, w, generator=gen) > fill] = 0
    return labels


def disc(size: int, cy: float, cx: float, r: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def heart(size: int, shift: tuple[float, float] = (0, 0), grow: float = 0.0) -> torch.Tensor:
    """An LV blood pool (3) inside a myocardial ring (2), an RV crescent (1) beside it."""
    c = size / 2 + shift[0], size / 2 + shift[1]
    m = torch.zeros(size, size, dtype=torch.long)
    m[disc(size, c[0], c[1] - size / 5, size / 4 + grow) & ~disc(size, c[0], c[1], size / 4 + 2)] = 1
    m[disc(size, c[0], c[1], size / 5 + grow)] = 2
    m[disc(size, c[0], c[1], size / 8 + grow)] = 3
    return m


def structured(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (prediction, reference) of the cases a segmentation evaluation meets, one per slice."""
    cases = []
    ref = heart(size)
    cases.append((ref, ref))  # perfect
    cases.append((heart(size, shift=(1, -2)), ref))  # shifted
    cases.append((heart(size, grow=1.5), ref))  # too large
    empty = torch.zeros(size, size, dtype=torch.long)
    cases.append((empty, ref))  # empty prediction
    cases.append((ref, empty))  # empty reference
    cases.append((empty, empty))  # both empty
    pixel, other = empty.clone(), empty.clone()
    pixel[5, 7] = 3
    other[20, 30] = 3
    cases.append((pixel, other))  # single pixels
    cases.append((pixel, ref))  # a single pixel against a disc
    border = empty.clone()
    border[:, :4] = 2  # touching the image border: border pixels are surface
    border[0, :] = 1
    cases.append((border, ref))
    stray = heart(size).clone()
    stray[2, 2] = stray[29, 3] = 3  # outliers: the 95th percentile and the maximum differ
    cases.append((stray, ref))
    ring = torch.zeros(size, size, dtype=torch.long)
    ring[disc(size, 16, 16, 10) & ~disc(size, 16, 16, 6)] = 2  # a hole: inner and outer surface
    cases.append((ring, heart(size)))
    return torch.stack([p for p, _ in cases]), torch.stack([t for _, t in cases])


@pytest.mark.parametrize("spacing", [None, 1.0, 0.7, 2.5, (0.6, 1.9)])
def test_hd95_equals_monai_on_structured_masks(spacing):
    pred, target = structured()
    assert_same(hd95(pred, target, CLASSES, spacing=spacing), monai_hd(pred, target, spacing, percentile=95))


@pytest.mark.parametrize("seed, fill, spacing", [(0, 0.1, 1.0), (1, 0.4, 1.25), (2, 0.9, (0.5, 2.0)), (3, 0.02, 3.0)])
def test_hd95_equals_monai_on_random_masks(seed, fill, spacing):
    gen = torch.Generator().manual_seed(seed)
    pred, target = random_labels(gen, 8, 19, 27, fill), random_labels(gen, 8, 19, 27, fill)
    pred[0], target[1] = 0, 0  # whole slices empty on one side
    assert_same(hd95(pred, target, CLASSES, spacing=spacing), monai_hd(pred, target, spacing, percentile=95))


@pytest.mark.parametrize("options", [
    {"percentile": None}, {"percentile": 0}, {"percentile": 50}, {"percentile": 100},
    {"percentile": 95, "directed": True},
    {"percentile": 95, "distance_metric": "chessboard"}, {"percentile": None, "distance_metric": "taxicab"},
])
def test_other_options_equal_monai(options):
    # the maximum makes one-sided empty structures infinite (the percentile makes them NaN): both must agree
    gen = torch.Generator().manual_seed(5)
    pred, target = structured()
    rnd_p, rnd_t = random_labels(gen, 4, 32, 32, 0.3), random_labels(gen, 4, 32, 32, 0.3)
    pred, target = torch.cat([pred, rnd_p]), torch.cat([target, rnd_t])
    assert_same(hausdorff_distance(pred, target, CLASSES, spacing=1.4, **options),
                monai_hd(pred, target, 1.4, **options))


def test_large_surfaces_are_split_into_chunks(monkeypatch):
    import cmraudit.measure.surface_distance as sd

    monkeypatch.setattr(sd, "_CHUNK_ELEMENTS", 1000)  # a chunk per pair or two, some larger than the limit
    gen = torch.Generator().manual_seed(7)
    pred, target = random_labels(gen, 6, 40, 40, 0.5), random_labels(gen, 6, 40, 40, 0.5)
    assert_same(hd95(pred, target, CLASSES, spacing=0.9), monai_hd(pred, target, 0.9, percentile=95))


def test_hand_computed_value_and_class_order():
    # two 3x3 squares 4 columns apart: the surface is the 8 pixels around the centre; the far column of one square
    # is 4 px from the near column of the other, the largest nearest-surface distance either way
    pred = torch.zeros(1, 12, 16, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[0, 4:7, 2:5] = 2
    target[0, 4:7, 6:9] = 2
    hd = hausdorff_distance(pred, target, [2, 1], spacing=0.5)
    assert hd[0, 0].item() == pytest.approx(4 * 0.5) and math.isnan(hd[0, 1].item())


def test_edges_are_the_erosion_surface():
    gen = torch.Generator().manual_seed(3)
    labels = random_labels(gen, 5, 17, 23, 0.6)
    labels[0] = heart(32)[:17, :23]
    edges = label_edges(labels)
    for c in CLASSES:
        mask = (labels == c).numpy()
        for i in range(len(mask)):
            # scipy's default erosion (3x3 cross, zero beyond the border), as MONAI's get_mask_edges
            expected = binary_erosion(mask[i]) ^ mask[i]
            assert np.array_equal((edges[i] & (labels[i] == c)).numpy(), expected)
            assert np.array_equal(mask_edges(torch.from_numpy(mask[i])).numpy(), expected)


def test_dice_hd95_keeps_its_empty_structure_rules():
    pred, target = structured()
    dice, hd = dice_hd95(pred, target, pixel_mm=1.5)
    expected = monai_hd(pred, target, 1.5, percentile=95).double().numpy()
    present = np.stack([(target == c).flatten(1).any(1).numpy() for c in CLASSES], 1)
    predicted = np.stack([(pred == c).flatten(1).any(1).numpy() for c in CLASSES], 1)
    expected = np.where(present & ~predicted, 1.5 * math.hypot(32, 32), expected)
    expected = np.where(present, expected, np.nan)
    np.testing.assert_allclose(hd, expected, rtol=1e-6, atol=1e-6)
    assert dice.shape == hd.shape == (len(pred), 3)


def test_no_slices_and_bad_input():
    empty = torch.zeros(0, 8, 8, dtype=torch.long)
    assert hd95(empty, empty, CLASSES).shape == (0, 3)
    with pytest.raises(ValueError):
        hd95(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9), CLASSES)
    with pytest.raises(ValueError):
        hausdorff_distance(empty, empty, CLASSES, distance_metric="cosine")
