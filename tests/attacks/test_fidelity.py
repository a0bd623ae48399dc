"""Fidelity: known answers for FD, KID and PRDC, and a wiring check on phantom data."""
from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F

from cmraudit.api import AuditContext
from cmraudit.data.sources import open_source
from cmraudit.data.splits import make_split
from cmraudit.measure.fidelity_math import (
    feature_frechet_distance,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise_ms_ssim,
    ms_ssim_settings,
    polynomial_mmd2_unbiased,
    prdc,
    radial_power_spectrum,
    spectrum_distance,
    wasserstein_1d,
)

fidelity = importlib.import_module("cmraudit.attacks.fidelity")


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ------------------------------------------------------------------------------------------------ Fréchet distance
def test_fd_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert feature_frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_matches_closed_form_for_commuting_gaussians():
    # diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # one dimension: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance(np.array([0.5]), np.array([[4.0]]), np.array([2.0]), np.array([[1.0]])) == \
        pytest.approx(1.5 ** 2 + 1.0, rel=1e-12)


def test_fd_matches_sqrtm_reference_for_general_covariances():
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-8)
    # symmetric in its arguments, and fine with a singular covariance (rank-deficient features)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-8)
    singular = np.diag([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert np.isfinite(frechet_distance(mu1, singular, mu2, s2))


def test_fd_of_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4000, 3)), rng.normal(1.0, 2.0, size=(4000, 3))
    assert feature_frechet_distance(x, y) == pytest.approx(3 * 1.0 + 3 * (2.0 - 1.0) ** 2, rel=0.05)


# ------------------------------------------------------------------------------------------------ KID
def test_mmd_matches_a_direct_double_sum():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 4)), rng.normal(0.5, 1.0, size=(9, 4))
    def k(a, b):
        return (a @ b / 4 + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert polynomial_mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(4)
    # unbiased: over many independent small draws from one distribution the mean estimate is ~0 (a biased V-statistic
    # would sit clearly above 0 at this sample size)
    draws = np.array([polynomial_mmd2_unbiased(rng.normal(size=(20, 8)), rng.normal(size=(20, 8)))
                      for _ in range(300)])
    assert abs(draws.mean()) < 3 * draws.std() / np.sqrt(len(draws))
    same, (lo, hi), _ = kernel_inception_distance(rng.normal(size=(300, 8)), rng.normal(size=(300, 8)), 30, 100)
    shifted, (lo2, _), _ = kernel_inception_distance(rng.normal(size=(300, 8)), rng.normal(0.5, 1, size=(300, 8)),
                                                     30, 100)
    assert lo <= same <= hi and abs(same) < 0.02
    assert shifted > 10 * abs(same) and lo2 > 0


# ------------------------------------------------------------------------------------------------ PRDC
def test_prdc_identical_sets():
    x = np.random.default_rng(5).normal(size=(50, 3))
    out = prdc(x, x, k=5)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    # every real ball holds its own centre plus its k neighbours: density = (k + 1) / k
    assert out["density"] == pytest.approx(6 / 5)


def test_prdc_disjoint_sets():
    x = np.random.default_rng(6).normal(size=(40, 3))
    assert prdc(x, x + 100.0, k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_hand_computed_configuration():
    real = np.arange(10, dtype=float)[:, None]        # k=1: every real ball has radius 1
    fake = np.array([[0.5], [0.9], [20.0], [20.5]])  # k=1 fake radii: 0.4, 0.4, 0.5, 0.5
    out = prdc(real, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 4)  # 0.5 and 0.9 lie in real balls, 20 and 20.5 do not
    assert out["density"] == pytest.approx(4 / 4)    # 0.5 and 0.9 each lie in the balls of 0 and 1
    assert out["coverage"] == pytest.approx(2 / 10)  # the balls of 0 and 1 hold a fake
    assert out["recall"] == pytest.approx(1 / 10)    # only the real 1 lies in a fake ball (0.9's, radius 0.4)


# ------------------------------------------------------------------------------------------------ image statistics
def test_wasserstein_1d_known_shift_and_scipy_agreement():
    rng = np.random.default_rng(7)
    a = rng.normal(size=5000)
    assert wasserstein_1d(a, a + 0.3) == pytest.approx(0.3, abs=1e-9)
    b = rng.exponential(size=5000)
    assert wasserstein_1d(a, b, n_quantiles=5000) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=0.01)


def test_power_spectrum_sees_blur_and_noise():
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert spectrum_distance(x, x) == 0.0
    assert radial_power_spectrum(blurred)[-1] < radial_power_spectrum(x)[-1] - 0.5


def test_fine_texture_ratio_tells_grain_from_blur():
    """Smooth anatomy-like images: added pixel noise raises the fine-scale power ratio above 1, blur lowers it
    below 1, the same images give exactly 1, and a tenth of the noise moves it far less than the full noise."""
    from cmraudit.measure.fidelity_math import fine_texture_power_ratio

    torch.manual_seed(0)
    coarse = F.interpolate(torch.rand(16, 1, 8, 8) * 2 - 1, size=(64, 64), mode="bilinear", align_corners=False)
    real = coarse + 0.05 * torch.randn_like(coarse)
    grainy = coarse + 0.2 * torch.randn_like(coarse)
    slightly = coarse + 0.06 * torch.randn_like(coarse)
    blurred = F.avg_pool2d(F.pad(real, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert fine_texture_power_ratio(real, real) == pytest.approx(1.0)
    assert fine_texture_power_ratio(real, grainy) > 4
    assert fine_texture_power_ratio(real, blurred) < 0.7
    assert 1.0 < fine_texture_power_ratio(real, slightly) < 2.0


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_ms_ssim_settings_fit_the_image(size):
    kernel, weights = ms_ssim_settings(size)
    assert size // 2 ** (len(weights) - 1) >= kernel + 3 and sum(weights) == pytest.approx(1.0)
    assert len(weights) >= 3
    same = torch.rand(1, 1, size, size).expand(4, 1, size, size)
    assert mean_pairwise_ms_ssim(same, n_pairs=4)[0] == pytest.approx(1.0, abs=1e-4)
    noise = torch.rand(6, 1, size, size) * 2 - 1
    assert mean_pairwise_ms_ssim(noise, n_pairs=8)[0] < 0.3


# ------------------------------------------------------------------------------------------------ wiring on phantom
def _blur(x: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Binomial 5x5 blur, applied twice (a Gaussian of sigma ~1.4 px)."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :]) / 256
    for _ in range(passes):
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k[None, None])
    return x


def _noise(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)


@pytest.fixture(scope="module")
def phantom_fidelity(tmp_path_factory):
    """Fidelity of three "synthetic" sets made from the non-members' real slices: as they are, blurred, noisy.

    60 patients: with fewer, the non-members and the targets are so few that the real-vs-real gap of a marginal
    statistic (LV intensity histogram, diversity) is sampling noise of the size of what blur changes.
    """
    table = open_source("phantom:60").load(32)
    split = make_split(table, seed=0)
    real = table.select_patients(split.nonmembers)
    shared: dict = {}  # one run's memo, as every model's audit context holds it
    options = {"cache_dir": str(tmp_path_factory.mktemp("cache")), "segmenter": {"steps": 60}}
    out = {}
    for name, corrupt in (("real", lambda x: x), ("blur", _blur), ("noise", _noise)):
        ctx = AuditContext(model=name, generator=None, data=table, split=split, options=options, shared=shared,
                           synthetic=dataclasses.replace(real, images=corrupt(real.images)), profile="smoke")
        out[name] = fidelity.Fidelity().compute(ctx)
    # the real-vs-real baseline reads real slices only: computed for the first model, read by the others
    out["baselines_computed"] = sum(key[0] == "fidelity-baseline" for key in shared)
    return out


def test_the_real_vs_real_baseline_is_computed_once_per_run(phantom_fidelity):
    assert phantom_fidelity["baselines_computed"] == 1
    baselines = {name: {k: v.details["real_vs_real"] for k, v in phantom_fidelity[name].items()}
                 for name in ("real", "blur", "noise")}
    assert baselines["real"] == baselines["blur"] == baselines["noise"]


def test_every_value_has_a_direction_and_a_real_vs_real_baseline(phantom_fidelity):
    values = phantom_fidelity["real"]
    assert set(values) == set(fidelity.VALUES)
    for name, v in values.items():
        assert v.direction == fidelity.VALUES[name][0] and np.isfinite(v.value)
        # the "synthetic" set here is the real counterpart itself, so it scores exactly the baseline
        assert v.details["real_vs_real"] == pytest.approx(v.value), name
        assert v.details["baseline_source"] == "conditioning slices" and v.details["target"] == "test+reference"


@pytest.mark.parametrize("corruption", ["blur", "noise"])
def test_real_vs_real_beats_corrupted_real_on_every_metric(phantom_fidelity, corruption):
    for name, v in phantom_fidelity[corruption].items():
        baseline = v.details["real_vs_real"]
        worse = v.value < baseline if v.direction == "higher" else v.value > baseline
        assert worse, f"{name}: {corruption} {v.value:.4f} vs real {baseline:.4f} ({v.direction} is better)"


def test_prdc_neighbourhoods_can_skip_a_samples_own_patient():
    # two patients of two near-identical slices each: within-patient neighbours would give balls of radius 0.1
    real = np.array([[0.0], [0.1], [5.0], [5.1]])
    fake = np.array([[2.0], [2.1], [9.0], [12.0]])
    assert prdc(real, fake, k=1)["precision"] == 0.0
    # across patients the k=1 radii are 5.0, 4.9, 4.9, 5.0: 2.0, 2.1 and 9.0 fall inside a ball, 12.0 does not
    grouped = prdc(real, fake, k=1, real_groups=np.array(["a", "a", "b", "b"]),
                   fake_groups=np.array(["c", "c", "d", "d"]))
    assert grouped["precision"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="neighbours"):
        prdc(real, fake, k=3, real_groups=np.array(["a", "a", "b", "b"]))
