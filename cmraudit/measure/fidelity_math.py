"""Distances between a real and a synthetic set: feature-space (FD, KID, PRDC) and image-space statistics.

All functions take plain arrays / tensors and return floats, so each can be checked against a closed form.
Feature-space numbers are meant for cmraudit's in-domain encoder (cmraudit.measure.features): "FD" here is the Fréchet
distance on that encoder's features, not the Inception-based FID, and is only comparable within one run.
"""
from __future__ import annotations

import math

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------- feature space
def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2) (Dowson & Landau 1982):

        |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)

    The trace term uses the eigenvalues of the symmetric PSD matrix cov1^1/2 cov2 cov1^1/2 (symmetric ``eigh``),
    which stays real and stable where ``scipy.linalg.sqrtm`` of the non-symmetric cov1 cov2 (as in Heusel et al.'s
    FID code and MONAI's FIDMetric) does not.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    root1 = _psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)
    return max(fd, 0.0)


def feature_frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + coef0)^degree (Bińkowski et al. 2018, eq. 1 / KID).

    Diagonal terms k(x_i, x_i) are left out of the within-set means, which is what makes the estimate unbiased
    (it can be slightly negative when both sets come from one distribution).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n, d = len(x), len(y), x.shape[1]
    if m < 2 or n < 2:
        raise ValueError("unbiased MMD needs at least two samples per set")
    kxx = (x @ x.T / d + coef0) ** degree
    kyy = (y @ y.T / d + coef0) ** degree
    kxy = (x @ y.T / d + coef0) ** degree
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, n_subsets: int = 50, subset_size: int = 100,
                              seed: int = 0) -> tuple[float, tuple[float, float], float]:
    """KID on the in-domain features: mean unbiased polynomial MMD^2 over random subsets (Bińkowski et al. 2018).

    Returns (mean, (2.5%, 97.5%) percentiles of the subset estimates, standard deviation of the subset estimates).
    Subsets are drawn without replacement within a subset; ``subset_size`` shrinks to the smaller set's size.
    """
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(real), len(fake))
    values = np.array([polynomial_mmd2_unbiased(real[rng.choice(len(real), size, replace=False)],
                                                fake[rng.choice(len(fake), size, replace=False)])
                       for _ in range(n_subsets)])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(values.mean()), (float(lo), float(hi)), float(values.std())


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, real_groups: np.ndarray | None = None,
         fake_groups: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k-nearest-neighbour balls.

    precision: share of fakes inside some real ball; recall: share of reals inside some fake ball; density: mean
    number of real balls holding a fake, divided by k; coverage: share of real balls holding at least one fake.
    A sample's ball radius is the distance to its k-th nearest neighbour in its own set (itself excluded). With
    ``*_groups`` (patient ids) neighbours come from other groups only: slices of one patient are not independent
    samples, and their own near-duplicates would shrink every ball to the patient's cluster.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    real_radius = _kth_neighbour_distance(real, k, real_groups)
    fake_radius = _kth_neighbour_distance(fake, k, fake_groups)
    d = _pairwise_distances(real, fake)  # (n_real, n_fake)
    inside_real = d <= real_radius[:, None]
    return {"precision": float(inside_real.any(axis=0).mean()),
            "recall": float((d <= fake_radius[None, :]).any(axis=1).mean()),
            "density": float(inside_real.sum() / (k * len(fake))),
            "coverage": float((d.min(axis=1) <= real_radius).mean())}


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(sq, 0, None))


def _kth_neighbour_distance(x: np.ndarray, k: int, groups: np.ndarray | None = None) -> np.ndarray:
    d = _pairwise_distances(x, x)
    if groups is None:
        np.fill_diagonal(d, np.inf)  # a point is not its own neighbour
    else:
        groups = np.asarray(groups)
        d[groups[:, None] == groups[None, :]] = np.inf  # nor is any slice of its own patient
    if (np.isfinite(d).sum(axis=1) < k).any():
        raise ValueError(f"PRDC with k={k} needs at least {k} neighbours per sample (outside its own group)")
    return np.partition(d, k - 1, axis=1)[:, k - 1]


# ---------------------------------------------------------------------------------------------- image space
def wasserstein_1d(a: np.ndarray, b: np.ndarray, n_quantiles: int = 512) -> float:
    """W1 between two 1-D samples: the mean absolute difference of their quantile functions.

    Exact for equal-size samples when n_quantiles covers every order statistic; with the midpoint quantile grid it
    is the standard discretisation of the integral of |F_a^-1 - F_b^-1| over (0, 1).
    """
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    q = (np.arange(n_quantiles) + 0.5) / n_quantiles
    return float(np.abs(np.quantile(a, q) - np.quantile(b, q)).mean())


def structure_intensity_w1(real_images: torch.Tensor, real_masks: torch.Tensor, fake_images: torch.Tensor,
                           fake_masks: torch.Tensor, label: int) -> float:
    """W1 between the intensities of all pixels labelled ``label`` in each set (its own masks for each set)."""
    a = real_images[:, 0][real_masks == label].double().numpy()
    b = fake_images[:, 0][fake_masks == label].double().numpy()
    return wasserstein_1d(a, b)


def radial_power_spectrum(images: torch.Tensor) -> np.ndarray:
    """Mean log10 power per integer radial frequency (0 .. H/2) over a set of (N, 1, H, W) images.

    Durall et al. 2020 showed that generated images' spectra deviate at high frequencies (up-sampling artefacts);
    blur removes high frequencies and noise adds them, so the curve catches all three.
    """
    x = images[:, 0].double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)  # drop the DC term's dependence on brightness
    power = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(-2, -1)).mean(0).numpy()
    h, w = power.shape
    yy, xx = np.indices((h, w))
    radius = np.hypot(yy - h // 2, xx - w // 2).round().astype(int)
    keep = radius <= min(h, w) // 2
    sums = np.bincount(radius[keep], weights=power[keep])
    counts = np.bincount(radius[keep])
    return np.log10(sums / np.maximum(counts, 1) + 1e-12)


def spectrum_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Mean absolute difference of the radial log-power spectra (decades of power) over frequencies 1 .. H/2."""
    a, b = radial_power_spectrum(real), radial_power_spectrum(fake)
    return float(np.abs(a[1:] - b[1:]).mean())


def fine_texture_power_ratio(real: torch.Tensor, fake: torch.Tensor, lowest: float = 0.25) -> float:
    """Power of ``fake`` over that of ``real`` at radial frequencies from ``lowest`` to 0.5 cycles per pixel (by
    default the upper half of the radial frequencies): above 1 the synthetic images are grainier or noisier than
    the real ones, below 1 smoother (Durall et al. 2020; Dzanic et al. 2020, "Fourier spectrum discrepancies in
    deep network generated images"). Power is averaged over images, then summed over frequencies, so the ratio
    reads as a share of the real images' fine-scale energy."""
    a, b = radial_power_spectrum(real), radial_power_spectrum(fake)
    first = int(np.ceil(lowest * real.shape[-1]))
    return float((10 ** b[first:]).sum() / (10 ** a[first:]).sum())


# ---------------------------------------------------------------------------------------------- diversity
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003


def ms_ssim_settings(image_size: int) -> tuple[int, tuple[float, ...]]:
    """(Gaussian kernel size, scale weights) that fit an image of this size.

    MS-SSIM halves the image between scales; the coarsest scale must stay larger than the kernel. The standard
    5 scales with an 11-pixel kernel need > 160 px (MONAI's defaults); smaller images get fewer scales (the first
    weights of Wang et al., renormalised) and a smaller kernel, preferring scales over kernel size.
    """
    for scales in range(5, 0, -1):
        coarsest = image_size // 2 ** (scales - 1)
        # MONAI checks size // (scales - 1)^2 > kernel - 1, which differs from 2^(scales-1) for 4 scales: meet both
        monai_coarsest = image_size // max(1, scales - 1) ** 2
        for kernel in (11, 7, 5):
            # at least a 4 x 4 map of SSIM values at the coarsest scale (valid convolution)
            if monai_coarsest > kernel - 1 and coarsest >= kernel + 3:
                w = np.array(MS_SSIM_WEIGHTS[:scales])
                return kernel, tuple(float(v) for v in w / w.sum())
    return 3, (1.0,)


def _pairs(n: int, n_pairs: int, rng: np.random.Generator, groups: np.ndarray | None,
           strata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Random index pairs (i, j), i != j, from different ``groups`` and the same ``strata`` where both are given."""
    groups = np.arange(n) if groups is None else np.asarray(groups)
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    members = {s: np.flatnonzero(strata == s) for s in set(strata.tolist())}
    first, second = [], []
    for i in rng.integers(0, n, n_pairs * 4):
        pool = members[strata[i]]
        partners = pool[groups[pool] != groups[i]]
        if len(partners):
            first.append(i)
            second.append(rng.choice(partners))
        if len(first) == n_pairs:
            break
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)


def mean_pairwise_ms_ssim(images: torch.Tensor, n_pairs: int = 256, seed: int = 0, groups: np.ndarray | None = None,
                          strata: np.ndarray | None = None) -> tuple[float, float]:
    """Mean MS-SSIM over random pairs of distinct images of one set (low = diverse), and its standard error.

    Odena et al. 2017 used mean pairwise MS-SSIM among samples of one class to detect mode collapse. Pairs can be
    restricted to different ``groups`` (patient ids: one patient's slices look alike, which would make the number
    depend on how many patients a set holds) within one of the ``strata`` (vendors: contrast differs by scanner,
    which would make it depend on the vendor mix) — so that two real sets of different make-up read alike.
    """
    from monai.metrics.regression import compute_ms_ssim

    if len(images) < 2:
        raise ValueError("diversity needs at least two images")
    rng = np.random.default_rng(seed)
    i, j = _pairs(len(images), n_pairs, rng, groups, strata)
    if len(i) < n_pairs // 4:  # too few same-stratum partners (a vendor with one patient): drop the strata
        i, j = _pairs(len(images), n_pairs, rng, groups, None)
    if len(i) < 2:
        raise ValueError("diversity needs at least two pairs of images from different groups")
    kernel, weights = ms_ssim_settings(int(images.shape[-1]))
    # shift to [0, 2] so every pixel is non-negative, as MS-SSIM's luminance term assumes; data range 2
    a, b = images[torch.from_numpy(i)].float() + 1, images[torch.from_numpy(j)].float() + 1
    values = compute_ms_ssim(a, b, spatial_dims=2, data_range=2.0, kernel_size=kernel, kernel_sigma=1.5 * kernel / 11,
                             weights=weights).flatten().double().numpy()
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
