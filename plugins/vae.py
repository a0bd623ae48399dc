"""A conditional convolutional VAE: mask + vendor/pathology in, image out.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes"; conditional form p(x | z, c), q(z | x, c) as in Sohn,
Lee & Yan 2015 ("Learning Structured Output Representation using Deep Conditional Generative Models"). The decoder
receives the mask at every resolution (resized one-hot concatenated before each convolution), so the anatomy comes
from the stencil and z carries what the stencil does not fix (texture, intensity, surroundings).

Likelihood: Gaussian with a fixed standard deviation ``recon_sigma``, so the negative ELBO per pixel is
``||x - mu(z)||^2 / (2 sigma^2 D) + KL / D`` up to a constant. KL warm-up (Bowman et al. 2016; Sonderby et al. 2016):
the KL weight ramps linearly from 0 to ``kl_weight`` over ``kl_warmup_steps``; the step counter is a buffer of the
network, so it is saved and restored with the weights on resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmraudit.api import Batch, Conditioning, Generator, StepRunner
from cmraudit.errors import ConfigError
from cmraudit.hookspecs import hookimpl

from ._conditioning import Condition, LabelEmbedding, network_device, resize_onehot, seeded_normal


@dataclass
class VAEConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # encoder widths, one stride-2 stage each (decoder mirrors them)
    latent_dim: int = 64
    norm_groups: int = 8
    lr: float = 1e-3
    recon_sigma: float = 0.1
    kl_weight: float = 1.0
    kl_warmup_steps: int = 200
    sample_batch: int = 128


def kl_beta(weight: float, warmup_steps: int, steps: int) -> float:
    """The KL weight after ``steps`` updates: ramped linearly from 0 over ``warmup_steps`` (Bowman et al. 2016,
    "Generating Sentences from a Continuous Space"), so the decoder learns before the posterior is pulled to the
    prior."""
    ramp = min(1.0, steps / warmup_steps) if warmup_steps > 0 else 1.0
    return weight * ramp


def _conv_block(c_in: int, c_out: int, groups: int, stride: int = 1) -> nn.Sequential:
    """Conv -> GroupNorm -> SiLU: GroupNorm rather than BatchNorm so per-example gradients exist (Opacus)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU())


class ConditionalVAE(nn.Module):
    def __init__(self, config: VAEConfig, conditioning: Conditioning) -> None:
        super().__init__()
        n_stages, labels = len(config.channels), conditioning.n_labels
        if conditioning.image_size % 2 ** n_stages:
            raise ConfigError(f"vae: image size {conditioning.image_size} is not divisible by 2**{n_stages}")
        self.base = conditioning.image_size // 2 ** n_stages
        widths = list(config.channels)
        flat = widths[-1] * self.base ** 2
        g = config.norm_groups

        self.encoder = nn.Sequential(*[_conv_block(c_in, c_out, g, stride=2)
                                       for c_in, c_out in zip([1 + labels, *widths[:-1]], widths)])
        self.label_embedding = LabelEmbedding(conditioning, config.latent_dim)
        self.to_posterior = nn.Linear(flat + config.latent_dim, 2 * config.latent_dim)
        self.from_latent = nn.Linear(2 * config.latent_dim, flat)
        up_widths = widths[::-1]
        self.decoder = nn.ModuleList(_conv_block(c_in + labels, c_out, g)
                                     for c_in, c_out in zip(up_widths, [*up_widths[1:], up_widths[-1]]))
        self.to_image = nn.Conv2d(up_widths[-1] + labels, 1, 3, padding=1)
        self.register_buffer("steps_trained", torch.zeros((), dtype=torch.long))

    def encode(self, x: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(torch.cat([x, cond.onehot], dim=1)).flatten(1)
        mu, logvar = self.to_posterior(torch.cat([h, self.label_embedding(cond.labels)], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, cond: Condition) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, self.label_embedding(cond.labels)], dim=1))
        h = h.view(z.shape[0], -1, self.base, self.base)
        for block in self.decoder:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, resize_onehot(cond.onehot, h.shape[-1])], dim=1))
        return torch.tanh(self.to_image(torch.cat([h, cond.onehot], dim=1)))

    def forward(self, x: torch.Tensor, onehot: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction with the reparameterisation z = mu + sigma * eps; returns (x_hat, mu, logvar)."""
        cond = Condition(onehot, labels)
        mu, logvar = self.encode(x, cond)
        return self.decode(mu + torch.exp(0.5 * logvar) * eps, cond), mu, logvar


def _per_example_terms(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                       sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel Gaussian negative log-likelihood and per-pixel KL(q(z|x) || N(0, I)), each (B,)."""
    pixels = x[0].numel()
    squared_error = ((x - x_hat.float()) ** 2).flatten(1).sum(1)
    nll = squared_error / (2 * sigma ** 2) + 0.5 * pixels * math.log(2 * math.pi * sigma ** 2)
    kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).sum(1)
    return nll / pixels, kl / pixels


class VAEGenerator(Generator):
    """Conditional convolutional VAE (Kingma & Welling 2014) with KL warm-up."""

    name = "vae"
    family = "vae"
    description = "conditional convolutional VAE (mask + vendor/pathology), KL warm-up"
    Config = VAEConfig

    def __init__(self, config: VAEConfig, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        self.nets = {"vae": ConditionalVAE(config, conditioning)}

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return {
            "smoke": dict(channels=(8, 16), latent_dim=8, norm_groups=4, kl_warmup_steps=2),
            # beta = 0.5 (Higgins et al. 2017, "beta-VAE", here beta < 1 to favour reconstruction) and a 64-d
            # latent: on the default phantom FD 0.58 -> 0.45, coverage 0.48 -> 0.58, TSTR Dice 0.845 -> 0.854 against
            # beta = 1 with 32 dimensions, at the same cost per step (only the two Linear layers grow)
            "quick": dict(channels=(16, 32, 64), latent_dim=64, kl_weight=0.5, kl_warmup_steps=150),
            "standard": dict(channels=(64, 128, 256, 256), latent_dim=128, norm_groups=16, lr=3e-4,
                             kl_warmup_steps=2000),
        }.get(profile, {})

    @classmethod
    def train_overrides(cls, profile: str) -> dict[str, Any]:
        # a quick step costs about a quarter of a UNet step: 400 steps stay under the UNets' ~35 s
        return {"quick": {"steps": 400}}.get(profile, {})

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"vae": torch.optim.Adam(self.nets["vae"].parameters(), lr=self.config.lr, foreach=True)}

    def _kl_beta(self, steps: int) -> float:
        return kl_beta(self.config.kl_weight, self.config.kl_warmup_steps, steps)

    def _module(self) -> ConditionalVAE:
        net = self.nets["vae"]
        return getattr(net, "_module", net)  # under DP the training loop wraps it in an Opacus GradSampleModule

    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        batch = batch.to(runner.device)
        cond = Condition.build(batch.masks, batch.vendor, batch.pathology, self.conditioning)
        counter = self._module().steps_trained
        beta = self._kl_beta(int(counter))
        eps = torch.randn(len(batch), self.config.latent_dim, device=batch.images.device)
        with runner.autocast():
            x_hat, mu, logvar = self.nets["vae"](batch.images, cond.onehot, cond.labels, eps)
        nll, kl = _per_example_terms(batch.images, x_hat, mu, logvar, self.config.recon_sigma)
        loss = (nll + beta * kl).mean()
        runner.optimize("vae", loss)
        if runner.completes_step:  # the passes of one accumulated step share one count
            counter += 1
        return {"loss": float(loss.detach()), "nll": float(nll.detach().mean()), "kl": float(kl.detach().mean()),
                "kl_weight": beta}

    @torch.no_grad()
    def sample(self, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        vae = self._module()
        device = network_device(vae)
        cond = Condition.build(masks, vendor, pathology, self.conditioning, device)
        z = seeded_normal((len(cond), self.config.latent_dim), generator, device)
        step = self.config.sample_batch
        out = [vae.decode(z[i:i + step], cond.chunk(i, i + step)) for i in range(0, len(cond), step)]
        return torch.cat(out).float().clamp(-1.0, 1.0).to(masks.device)

    @torch.no_grad()
    def membership_signal(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The per-pixel ELBO (one posterior sample, seeded) and the reconstruction log-likelihood at the posterior
        mean: both higher for examples the model fits better (Hilprecht et al. 2019, "Monte Carlo and
        Reconstruction Membership Inference Attacks against Generative Models")."""
        vae = self._module()
        device = network_device(vae)
        batch = batch.to(device)
        cond = Condition.build(batch.masks, batch.vendor, batch.pathology, self.conditioning)
        eps = seeded_normal((len(batch), self.config.latent_dim), generator, device)
        x_hat, mu, logvar = vae(batch.images, cond.onehot, cond.labels, eps)
        nll, kl = _per_example_terms(batch.images, x_hat, mu, logvar, self.config.recon_sigma)
        mean_nll, _ = _per_example_terms(batch.images, vae.decode(mu, cond), mu, logvar, self.config.recon_sigma)
        return {"elbo": -(nll + kl), "neg_recon": -mean_nll}


@hookimpl
def cmraudit_register_generators(register) -> None:
    register(VAEGenerator)
