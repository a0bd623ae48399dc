"""Tiny mask-conditioned generators for the training-loop tests (import-safe from a subprocess).

``TinyDenoiser``: one conv net (GroupNorm, SiLU) that maps noise + one-hot mask + label embeddings to an image;
trained as a one-level denoiser, sampled in one pass, with an EMA copy. ``TinyPair``: a two-network adversarial
pair where both networks see private data, for DP accounting with two releases per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmraudit.api import Batch, Conditioning, Generator, StepRunner
from cmraudit.data.types import SliceTable


@dataclass
class TinyConfig:
    channels: int = 8
    lr: float = 2e-3
    noise: float = 0.5


class TinyNet(nn.Module):
    def __init__(self, cond: Conditioning, in_channels: int, channels: int, norm: str = "group") -> None:
        super().__init__()
        self.vendor = nn.Embedding(cond.n_vendors, channels)
        self.pathology = nn.Embedding(cond.n_pathologies, channels)
        self.inp = nn.Conv2d(in_channels + cond.n_labels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(4, channels) if norm == "group" else nn.BatchNorm2d(channels)
        self.act = nn.SiLU()
        self.mid = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        self.n_labels = cond.n_labels

    def forward(self, x: torch.Tensor, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor):
        onehot = F.one_hot(masks, self.n_labels).permute(0, 3, 1, 2).to(x.dtype)
        h = self.inp(torch.cat([x, onehot], 1))
        h = h + (self.vendor(vendor) + self.pathology(pathology))[:, :, None, None]
        h = self.act(self.norm(h))
        return self.out(self.act(self.mid(h)))


class TinyDenoiser(Generator):
    name = "tiny-denoiser"
    family = "test"
    Config = TinyConfig

    def __init__(self, config: TinyConfig, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        self.nets["net"] = TinyNet(conditioning, 1, config.channels)

    @classmethod
    def train_overrides(cls, profile: str) -> dict:
        return {"steps": 6} if profile == "smoke" else {}

    def ema_networks(self) -> tuple[str, ...]:
        return ("net",)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.Adam(self.nets["net"].parameters(), lr=self.config.lr)}

    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        noisy = batch.images + self.config.noise * torch.randn_like(batch.images)
        with runner.autocast():
            pred = self.nets["net"](noisy, batch.masks, batch.vendor, batch.pathology)
        loss = F.mse_loss(pred.float(), batch.images)
        runner.optimize("net", loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, masks, vendor, pathology, generator=None) -> torch.Tensor:
        device = next(self.nets["net"].parameters()).device
        noise = torch.randn((len(masks), 1, *masks.shape[-2:]), generator=generator).to(device)
        out = self.nets["net"](self.config.noise * noise, masks.to(device), vendor.to(device), pathology.to(device))
        return out.clamp(-1, 1)


class TinyPair(TinyDenoiser):
    """Generator "g" conditioned on the batch's masks and critic "d" on real+fake rows: both are private."""

    name = "tiny-pair"

    def __init__(self, config: TinyConfig, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        self.nets["d"] = TinyNet(conditioning, 1, config.channels)
        self.nets["g"] = self.nets.pop("net")

    def ema_networks(self) -> tuple[str, ...]:
        return ()

    def make_optimizers(self):
        return {n: torch.optim.Adam(self.nets[n].parameters(), lr=self.config.lr) for n in ("g", "d")}

    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        g, d = self.nets["g"], self.nets["d"]
        args = (batch.masks, batch.vendor, batch.pathology)
        z = torch.randn_like(batch.images)
        fake = g(z, *args)
        both = torch.cat([batch.images, fake.detach()])
        scores = d(both, *(torch.cat([a, a]) for a in args)).mean((1, 2, 3))
        n = len(batch)
        d_loss = F.softplus(-scores[:n]).mean() + F.softplus(scores[n:]).mean()
        runner.optimize("d", d_loss)
        # the critic is frozen while the generator's loss flows through it; under DP its Opacus hooks are paused
        d.requires_grad_(False)
        pausable = hasattr(d, "disable_hooks")
        if pausable:
            d.disable_hooks()
        g_loss = F.softplus(-d(fake, *args).mean((1, 2, 3))).mean()
        runner.optimize("g", g_loss)
        if pausable:
            d.enable_hooks()
        d.requires_grad_(True)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    @torch.no_grad()
    def sample(self, masks, vendor, pathology, generator=None) -> torch.Tensor:
        device = next(self.nets["g"].parameters()).device
        z = torch.randn((len(masks), 1, *masks.shape[-2:]), generator=generator).to(device)
        return torch.tanh(self.nets["g"](z, masks.to(device), vendor.to(device), pathology.to(device)))


class TinyBatchNorm(TinyDenoiser):
    """Not trainable with DP: BatchNorm mixes examples and an in-place ReLU breaks Opacus' hooks."""

    name = "tiny-batchnorm"

    def __init__(self, config: TinyConfig, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        self.nets["net"] = TinyNet(conditioning, 1, config.channels, norm="batch")
        self.nets["net"].act = nn.ReLU(inplace=True)


def tiny_table(n_patients: int = 6, slices: int = 3, size: int = 16, seed: int = 0) -> SliceTable:
    """Blob phantoms: each patient's slices share a random disc (label 3) and ring (label 2) on a dark field."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks, patients, vendors, pathologies = [], [], [], [], []
    for p in range(n_patients):
        cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
        for s in range(slices):
            r = size * (0.25 - 0.04 * s) + rng.normal(0, 0.3)
            dist = np.hypot(yy - cy, xx - cx)
            mask = np.where(dist < r, 3, np.where(dist < r + 2, 2, 0))
            image = np.select([mask == 3, mask == 2], [0.8, -0.2], -0.9) + rng.normal(0, 0.05, mask.shape)
            images.append(np.clip(image, -1, 1))
            masks.append(mask)
            patients.append(f"P{p:03d}")
            vendors.append("AB"[p % 2])
            pathologies.append(("NOR", "DCM", "HCM")[p % 3])
    n = len(images)
    return SliceTable(torch.tensor(np.stack(images)[:, None], dtype=torch.float32),
                      torch.tensor(np.stack(masks), dtype=torch.long), np.array(patients), np.array(vendors),
                      np.array(pathologies), np.array(["ED"] * n), np.tile(np.arange(slices), n_patients), "tiny")


def build(cls: type[TinyDenoiser] = TinyDenoiser, size: int = 16, seed: int = 0, **config) -> TinyDenoiser:
    torch.manual_seed(seed)
    return cls(TinyConfig(**config), Conditioning(image_size=size))
