"""The denoiser view of diffusion and flow (forward_noise / predict_x0_and_noise) that SecMI and PIA rely on."""
from __future__ import annotations

import pytest
import torch

from cmraudit.api import Batch, Conditioning
from cmraudit.registry import get


@pytest.fixture(params=["diffusion", "flow"])
def generator(request):
    cls = get("generators", request.param)
    torch.manual_seed(0)
    return cls(cls.make_config("smoke"), Conditioning(image_size=16)).eval()


def _batch(n: int = 3) -> Batch:
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    masks[:, 4:12, 4:12] = 2
    masks[:, 6:10, 6:10] = 3
    return Batch(torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, masks, torch.zeros(n, dtype=torch.long),
                 torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("level", [0.0, 0.1, 0.5, 0.9])
def test_estimates_recompose_the_noisy_image(generator, level):
    """Whatever the network predicts, a * x0_hat + b * noise_hat must give back the input (an exact identity)."""
    batch = _batch()
    x = generator.forward_noise(batch.images, level, torch.randn_like(batch.images))
    x0_hat, noise_hat = generator.predict_x0_and_noise(x, level, batch)
    torch.testing.assert_close(generator.forward_noise(x0_hat, level, noise_hat), x, atol=1e-4, rtol=1e-4)


def test_forward_noise_spans_data_to_noise(generator):
    batch = _batch()
    noise = torch.randn_like(batch.images)
    a0, b0, _ = generator.level_coefficients(0.0)
    a1, b1, _ = generator.level_coefficients(1.0)
    assert a0 > 0.99 and b0 < 0.1 and a1 < 0.1 and b1 > 0.99
    assert (generator.forward_noise(batch.images, 0.5, noise) - batch.images).abs().mean() > 0.1


@pytest.mark.parametrize("attack", ["secmi", "pia"])
def test_secmi_and_pia_apply(generator, attack):
    assert get("attacks", attack)().applies_to(generator) is None


def test_diffusion_and_flow_are_denoiser_views(generator):
    from cmraudit import DenoiserView

    assert isinstance(generator, DenoiserView)


@pytest.mark.parametrize("name", ["gan", "vae"])
def test_other_families_are_not_and_secmi_says_why(name):
    from cmraudit import DenoiserView

    cls = get("generators", name)
    gen = cls(cls.make_config("smoke"), Conditioning(image_size=16))
    assert not isinstance(gen, DenoiserView)
    reason = get("attacks", "secmi")().applies_to(gen)
    assert "DenoiserView" in reason and "forward_noise, predict_x0_and_noise" in reason
