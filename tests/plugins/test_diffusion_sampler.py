"""Known-answer test for the diffusion sampler plumbing, and the shared conditioning helpers.

For data x0 ~ N(mu, s^2) per pixel and x_t = a x0 + b eps (a^2 = abar_t, b^2 = 1 - abar_t), the exact noise
prediction is E[eps | x_t] = b (x_t - a mu) / (a^2 s^2 + b^2) (and v = a eps - b x0 follows). Fed through
DiffusionGenerator.sample (DDIM or DPM-Solver++, few steps, eps or v) it must reproduce mu per label.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from cmraudit.plugins._conditioning import Condition, guided, mask_onehot
from cmraudit.plugins.diffusion import DiffusionGenerator

from cmraudit.api import Conditioning
from cmraudit.errors import ConfigError


class AnalyticPrediction(nn.Module):
    """The exact eps (or v = a eps - b x0) prediction for per-pixel Gaussian data N(mu[label], s^2)."""

    def __init__(self, alphas_cumprod: torch.Tensor, mu_per_label: torch.Tensor, s: float, target: str) -> None:
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.clone())
        self.mu = nn.Parameter(mu_per_label.clone(), requires_grad=False)
        self.s, self.target = s, target

    def forward(self, x, model_time, onehot, labels):
        abar = self.abar[model_time.round().long()].view(-1, 1, 1, 1)
        a, b = abar.sqrt(), (1 - abar).sqrt()
        mu = torch.einsum("blhw,l->bhw", onehot, self.mu)[:, None]
        eps = b * (x - a * mu) / (abar * self.s ** 2 + b ** 2)
        return eps if self.target == "epsilon" else a * eps - b * (x - b * eps) / a


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_sampler_reproduces_an_analytic_target(sampler, prediction_type):
    overrides = {"sampler": sampler, "sample_steps": 10, "prediction_type": prediction_type}
    gen = DiffusionGenerator(DiffusionGenerator.make_config("smoke", overrides), Conditioning(image_size=16))
    mu = torch.tensor([-0.7, 0.5, -0.1, 0.8])
    gen.nets["unet"] = AnalyticPrediction(gen.schedule.alphas_cumprod, mu, 0.05, prediction_type)
    masks = torch.randint(0, 4, (6, 16, 16), generator=torch.Generator().manual_seed(1))
    zeros = torch.zeros(6, dtype=torch.long)
    images = gen.sample(masks, zeros, zeros, generator=torch.Generator().manual_seed(2))
    for label in range(4):
        assert abs(float(images[:, 0][masks == label].mean()) - float(mu[label])) < 0.01
    assert float((images[:, 0] - mu[masks]).std()) < 0.1


def test_onehot_is_contiguous_and_exact():
    masks = torch.randint(0, 4, (2, 8, 8))
    onehot = mask_onehot(masks, 4)
    assert onehot.is_contiguous()  # Opacus' per-sample conv gradients are wrong for permuted strides
    assert torch.equal(onehot.argmax(1), masks) and torch.equal(onehot.sum(1), torch.ones(2, 8, 8))


def test_guidance_dropout_replaces_whole_conditions_with_null_tokens():
    conditioning = Conditioning(image_size=8)
    cond = Condition.build(torch.randint(0, 4, (5, 8, 8)), torch.arange(5) % 4, torch.arange(5) % 6, conditioning)
    assert cond.dropped(conditioning, 0.0, 0.0) is cond
    null = cond.dropped(conditioning, 1.0, 1.0)
    assert (null.labels == torch.tensor([4, 6])).all() and not null.onehot.any()
    labels_only = cond.dropped(conditioning, 1.0, 0.0)
    assert torch.equal(labels_only.onehot, cond.onehot) and (labels_only.labels == torch.tensor([4, 6])).all()


def test_guidance_extrapolates_from_the_unconditional_prediction():
    conditioning = Conditioning(image_size=4)
    masks = torch.ones(3, 4, 4, dtype=torch.long)
    cond = Condition.build(masks, torch.full((3,), 2), torch.full((3,), 1), conditioning)
    calls = []

    def predict(x, t, c):  # "prediction" = the vendor index, so conditional 2.0 and unconditional (null) 4.0
        calls.append(len(x))
        return c.labels[:, :1, None, None].float().expand_as(x)

    x, t = torch.zeros(3, 1, 4, 4), torch.zeros(3)
    out = guided(predict, x, t, cond, cond.null(conditioning), scale=3.0)
    assert torch.allclose(out, torch.full_like(x, 4.0 + 3.0 * (2.0 - 4.0))) and calls == [6]
    assert torch.equal(guided(predict, x, t, cond, cond.null(conditioning), scale=1.0), torch.full_like(x, 2.0))


def test_guided_sampling_runs_and_needs_condition_dropout():
    gen = DiffusionGenerator(DiffusionGenerator.make_config("smoke", {"guidance_scale": 2.0, "mask_dropout": 0.1}),
                             Conditioning(image_size=16))
    masks, zeros = torch.zeros(2, 16, 16, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    a = gen.sample(masks, zeros, zeros, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, gen.sample(masks, zeros, zeros, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ConfigError, match="unconditional"):
        DiffusionGenerator(DiffusionGenerator.make_config("smoke", {"guidance_scale": 2.0, "label_dropout": 0.0}),
                           Conditioning(image_size=16))
