"""A mask-conditioned GAN: SPADE generator, PatchGAN discriminator with a projection head, hinge loss.

* Generator: SPADE (Park et al. 2019, "Semantic Image Synthesis with Spatially-Adaptive Normalization"): the mask's
  one-hot map modulates every normalised feature map, ``norm(h) * (1 + gamma(mask)) + beta(mask)`` (eq. 1), with a
  parameter-free GroupNorm instead of BatchNorm so that Opacus can compute per-example gradients. A latent z plus
  the vendor/pathology embedding seeds the coarsest feature map.
* Discriminator: MONAI's PatchDiscriminator (the pix2pix PatchGAN, Isola et al. 2017) with instance norm, fed
  ``cat(image, mask one-hot)``, plus a projection term for vendor/pathology at every patch (Miyato & Koyama 2018,
  "cGANs with Projection Discriminator"): ``logit = f(phi) + <embed(y), phi>``.
* Loss: hinge (Lim & Ye 2017; Miyato et al. 2018) or non-saturating (Goodfellow et al. 2014), plus SPADE's
  discriminator feature-matching loss (Wang et al. 2018, "High-Resolution Image Synthesis and Semantic Manipulation
  with Conditional GANs" (pix2pixHD), eq. 4; Park et al. 2019, sec. 3 and appendix): the L1 distance between the
  discriminator's intermediate features of the fake and of the real image drawn with the same mask, weight 10.
* Optimisation: SPADE's two time-scale update rule (Heusel et al. 2017, TTUR): Adam with betas (0, 0.9),
  lr 1e-4 for the generator and 4e-4 for the discriminator; samples come from an exponential moving average of the
  generator's weights (Karras et al. 2018, "Progressive Growing of GANs"; Yazici et al. 2019, "The Unusual
  Effectiveness of Averaging in GAN Training").
* Membership signal: the discriminator's logit on an example, LOGAN's white-box attack (Hayes et al. 2019,
  "LOGAN: Membership Inference Attacks Against Generative Models").

Both networks are private (see ``private_networks``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmraudit.api import Batch, Conditioning, Generator, StepRunner
from cmraudit.errors import ConfigError
from cmraudit.hookspecs import hookimpl

from ._conditioning import Condition, LabelEmbedding, network_device, resize_onehot, seeded_normal

LOSSES = ("hinge", "nonsaturating")


@dataclass
class GANConfig:
    generator_channels: tuple[int, ...] = (128, 64, 32)  # one x2 upsampling stage each, coarsest first
    spade_hidden: int = 32
    z_dim: int = 64
    norm_groups: int = 8
    discriminator_channels: int = 32
    discriminator_layers: int = 3
    loss: str = "hinge"
    #: weight of the discriminator feature-matching loss (pix2pixHD eq. 4, lambda = 10 as in SPADE); 0 = off
    feature_matching: float = 10.0
    #: sample from the EMA of the generator's weights (decay: the training loop's ema_decay)
    ema: bool = True
    lr_generator: float = 1e-4
    lr_discriminator: float = 4e-4
    betas: tuple[float, ...] = (0.0, 0.9)
    sample_batch: int = 128


class SpadeNorm(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019, eq. 1) with a parameter-free GroupNorm."""

    def __init__(self, channels: int, n_labels: int, hidden: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(n_labels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        s = self.shared(resize_onehot(onehot, h.shape[-1]).to(h.dtype))
        return self.norm(h) * (1 + self.gamma(s)) + self.beta(s)


class SpadeGenerator(nn.Module):
    def __init__(self, config: GANConfig, conditioning: Conditioning) -> None:
        super().__init__()
        stages = len(config.generator_channels)
        if conditioning.image_size % 2 ** stages:
            raise ConfigError(f"gan: image size {conditioning.image_size} is not divisible by 2**{stages}")
        self.base = conditioning.image_size // 2 ** stages
        widths = list(config.generator_channels)
        self.label_embedding = LabelEmbedding(conditioning, config.z_dim)
        self.from_latent = nn.Linear(2 * config.z_dim, widths[0] * self.base ** 2)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1)
                                   for c_in, c_out in zip(widths, [*widths[1:], widths[-1]]))
        self.norms = nn.ModuleList(SpadeNorm(c, conditioning.n_labels, config.spade_hidden, config.norm_groups)
                                   for c in [*widths[1:], widths[-1]])
        self.to_image = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, self.label_embedding(labels)], dim=1))
        h = h.view(z.shape[0], -1, self.base, self.base)
        for conv, norm in zip(self.convs, self.norms):
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = F.leaky_relu(norm(h, onehot), 0.2)
        return torch.tanh(self.to_image(h))


class ProjectionPatchDiscriminator(nn.Module):
    """MONAI PatchDiscriminator on ``cat(image, mask one-hot)`` plus a per-patch label projection term."""

    def __init__(self, config: GANConfig, conditioning: Conditioning) -> None:
        super().__init__()
        from monai.networks.nets import PatchDiscriminator

        self.patch = PatchDiscriminator(
            spatial_dims=2, channels=config.discriminator_channels, in_channels=1 + conditioning.n_labels,
            num_layers_d=config.discriminator_layers, norm=("INSTANCE", {"affine": True}),
            last_conv_kernel_size=3,  # keeps the logit map the size of the feature map the projection uses
        )
        features = config.discriminator_channels * 2 ** config.discriminator_layers
        self.projection = LabelEmbedding(conditioning, features)

    def forward(self, image: torch.Tensor, onehot: torch.Tensor, labels: torch.Tensor, with_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logit map (B, 1, h, w): one real/fake logit per patch; with ``with_features`` also the intermediate
        feature maps (for the feature-matching loss)."""
        *hidden, features, logits = self.patch(torch.cat([image, onehot.to(image.dtype)], dim=1))
        embedding = self.projection(labels).to(features.dtype)
        logits = logits + (embedding[:, :, None, None] * features).sum(dim=1, keepdim=True)
        return (logits, [*hidden, features]) if with_features else logits


@contextlib.contextmanager
def frozen(net: nn.Module) -> Iterator[None]:
    """No gradients for ``net`` while another network's loss back-propagates through it.

    Under DP ``net`` may be an Opacus GradSampleModule, whose backward hooks fire even for frozen parameters and
    would then look for activations they never captured; pausing its hooks (``disable_hooks``) avoids that and
    skips computing per-sample gradients nobody uses.
    """
    net.requires_grad_(False)
    pausable = hasattr(net, "disable_hooks") and hasattr(net, "enable_hooks")
    if pausable:
        net.disable_hooks()
    try:
        yield
    finally:
        if pausable:
            net.enable_hooks()
        net.requires_grad_(True)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        per_patch = F.relu(1.0 - real) + F.relu(1.0 + fake)
    else:
        per_patch = F.softplus(-real) + F.softplus(fake)
    return per_patch.float().mean()


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    return (-fake if kind == "hinge" else F.softplus(-fake)).float().mean()


def feature_matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD eq. 4: mean over discriminator layers of the L1 distance between fake and real features."""
    return sum(F.l1_loss(f.float(), r.float()) for f, r in zip(fake, real)) / len(fake)


class GANGenerator(Generator):
    """Mask-conditioned SPADE GAN with a projection PatchGAN discriminator."""

    name = "gan"
    family = "gan"
    description = "SPADE generator + projection PatchGAN discriminator (MONAI), hinge loss"
    Config = GANConfig

    def __init__(self, config: GANConfig, conditioning: Conditioning) -> None:
        if config.loss not in LOSSES:
            raise ConfigError(f"gan.loss: {config.loss!r} is not one of {', '.join(LOSSES)}")
        super().__init__(config, conditioning)
        self.nets = {"generator": SpadeGenerator(config, conditioning),
                     "discriminator": ProjectionPatchDiscriminator(config, conditioning)}

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return {
            "smoke": dict(generator_channels=(16, 8), spade_hidden=8, z_dim=8, norm_groups=4,
                          discriminator_channels=8, discriminator_layers=2),
            "quick": dict(generator_channels=(64, 32, 16), spade_hidden=16, z_dim=32, norm_groups=8,
                          discriminator_channels=16, discriminator_layers=3),
            "standard": dict(generator_channels=(256, 128, 64, 32), spade_hidden=64, z_dim=128, norm_groups=16,
                             discriminator_channels=64, discriminator_layers=3),
        }.get(profile, {})

    @classmethod
    def train_overrides(cls, profile: str) -> dict[str, Any]:
        # a quick step (two small networks) costs about half a UNet step: 300 steps ~ the UNets' 150 (~35 s). With
        # SPADE's recipe (TTUR, feature matching, generator EMA) these 300 steps reach FD 0.41, coverage 0.54 on the
        # default phantom (FD 4.6, coverage 0 before: mode collapse) for the same CPU time per step
        return {"quick": {"steps": 300}}.get(profile, {})

    def private_networks(self) -> tuple[str, ...]:
        """Both networks. The discriminator sees real images. The generator is conditioned on the real (private)
        masks and labels of the batch, so its update is a function of private data too; Opacus' DCGAN example
        leaves the generator non-private only because there the generator sees nothing but noise."""
        return ("generator", "discriminator")

    def ema_networks(self) -> tuple[str, ...]:
        return ("generator",) if self.config.ema else ()

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = tuple(self.config.betas)
        return {"generator": torch.optim.Adam(self.nets["generator"].parameters(), self.config.lr_generator,
                                              betas=betas, foreach=True),
                "discriminator": torch.optim.Adam(self.nets["discriminator"].parameters(),
                                                  self.config.lr_discriminator, betas=betas, foreach=True)}

    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        batch = batch.to(runner.device)
        g, d = self.nets["generator"], self.nets["discriminator"]
        cond = Condition.build(batch.masks, batch.vendor, batch.pathology, self.conditioning)
        n = len(batch)

        # One generator pass per step, as in the DCGAN recipe (Radford et al. 2016; PyTorch's DCGAN example): the
        # discriminator learns on its detached output, then the generator's loss goes through the updated
        # discriminator on the same images. The generator is the same network in both phases (it is updated only
        # at the end), so this is the two-pass recipe with one draw of z instead of two; 300 quick-profile steps took
        # 17.1 s instead of 19.2 s.
        with runner.autocast():
            fake = g(torch.randn(n, self.config.z_dim, device=runner.device), cond.onehot, cond.labels)
        # Discriminator: real and fake go through separate forward passes and one backward, so under DP each
        # example's gradient (its real image plus the fake drawn from its mask) is clipped as one unit.
        with runner.autocast():
            real_logits, real_features = d(batch.images, cond.onehot, cond.labels, with_features=True)
            fake_logits = d(fake.detach(), cond.onehot, cond.labels)
        loss_d = discriminator_loss(real_logits, fake_logits, self.config.loss)
        runner.optimize("discriminator", loss_d)
        # the real image's features for feature matching, taken from the pass above rather than a second one
        # through the updated discriminator: one discriminator step apart, and a third of the step's cost saved
        real_features = [f.detach() for f in real_features]

        with frozen(d):
            with runner.autocast():
                fake_logits_g, fake_features = d(fake, cond.onehot, cond.labels, with_features=True)
                loss_adv = generator_loss(fake_logits_g, self.config.loss)
                loss_fm = feature_matching_loss(fake_features, real_features)
                loss_g = loss_adv + self.config.feature_matching * loss_fm
            runner.optimize("generator", loss_g)
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_adv.detach()),
                "loss_fm": float(loss_fm.detach()),
                "d_real": float(real_logits.detach().float().mean()),
                "d_fake": float(fake_logits.detach().float().mean())}

    @torch.no_grad()
    def sample(self, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        g = self.nets["generator"]
        device = network_device(g)
        cond = Condition.build(masks, vendor, pathology, self.conditioning, device)
        z = seeded_normal((len(cond), self.config.z_dim), generator, device)
        out = []
        for i in range(0, len(cond), self.config.sample_batch):
            part = cond.chunk(i, i + self.config.sample_batch)
            out.append(g(z[i:i + self.config.sample_batch], part.onehot, part.labels))
        return torch.cat(out).float().clamp(-1.0, 1.0).to(masks.device)

    @torch.no_grad()
    def membership_signal(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """LOGAN white-box (Hayes et al. 2019): the discriminator's mean patch logit; it scores overfit training
        examples as more "real"."""
        d = self.nets["discriminator"]
        batch = batch.to(network_device(d))
        cond = Condition.build(batch.masks, batch.vendor, batch.pathology, self.conditioning)
        return {"disc_logit": d(batch.images, cond.onehot, cond.labels).float().flatten(1).mean(dim=1)}


@hookimpl
def cmraudit_register_generators(register) -> None:
    register(GANGenerator)
