"""The training recipes' building blocks: the GAN's feature-matching loss and EMA, diffusion's Min-SNR weights."""
from __future__ import annotations

import pytest
import torch

from cmraudit.api import Conditioning
from cmraudit.registry import registered
from cmraudit.testing.tiny import tiny_table, train_steps


def build(name: str, profile: str = "smoke", **overrides):
    cls = registered("generators")[name]
    torch.manual_seed(0)
    return cls(cls.make_config(profile, overrides), Conditioning(16))


def test_feature_matching_is_the_mean_l1_over_layers():
    from cmraudit.plugins.gan import feature_matching_loss

    real = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 2, 2)]
    assert feature_matching_loss([r.clone() for r in real], real) == 0
    fake = [torch.full((2, 3, 4, 4), 2.0), torch.full((2, 5, 2, 2), 4.0)]
    assert feature_matching_loss(fake, real).item() == pytest.approx((2.0 + 4.0) / 2)


def test_discriminator_features_come_with_the_same_logits():
    gan = build("gan")
    d = gan.nets["discriminator"]
    image, onehot = torch.randn(3, 1, 16, 16), torch.rand(3, 4, 16, 16)
    labels = torch.zeros(3, 2, dtype=torch.long)
    logits, features = d(image, onehot, labels, with_features=True)
    assert torch.equal(logits, d(image, onehot, labels))
    assert len(features) == gan.config.discriminator_layers + 1 and all(f.shape[0] == 3 for f in features)


@pytest.mark.parametrize("weight", [0.0, 10.0])
def test_gan_step_logs_feature_matching_and_moves_the_generator(weight):
    gan = build("gan", feature_matching=weight)
    before = [p.detach().clone() for p in gan.nets["generator"].parameters()]
    logs = train_steps(gan, tiny_table(n_patients=4, slices_per_patient=2, image_size=16, seed=1), 2, batch_size=4)
    assert all(step["loss_fm"] > 0 for step in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, gan.nets["generator"].parameters()))


def test_gan_samples_from_the_generator_ema_unless_told_not_to():
    assert build("gan").ema_networks() == ("generator",)
    assert build("gan", ema=False).ema_networks() == ()


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_min_snr_weights_follow_hang_et_al(prediction_type):
    gen = build("diffusion", min_snr_gamma=5.0, prediction_type=prediction_type)
    t = torch.tensor([0.0, 100.0, 500.0, 999.0])
    abar = gen.schedule.alphas_cumprod[t.long()]
    snr = abar / (1 - abar)
    expected = snr.clamp(max=5.0) / (snr if prediction_type == "epsilon" else snr + 1)
    weights = gen.loss_weights(t)
    assert torch.allclose(weights, expected.float())
    # the nearly-clean timesteps are down-weighted, the clamp leaves the noisiest ones alone
    assert weights[0] < weights[2]
    assert torch.equal(build("diffusion").loss_weights(t), torch.ones(4))
