"""``example-unet``: a mask-conditioned U-Net that predicts a per-pixel Gaussian (mean and standard deviation).

The network (Ronneberger et al., "U-Net", MICCAI 2015) reads the one-hot mask and a vendor + pathology embedding
and outputs, for every pixel, the mean and log standard deviation of its intensity. It is trained by maximum
likelihood — the heteroscedastic Gaussian negative log-likelihood of Kendall & Gal, "What Uncertainties Do We Need
in Bayesian Deep Learning for Computer Vision?", NeurIPS 2017, Eq. 5 — and samples by drawing every pixel from
its predicted Gaussian. It is a deliberately small generative model: sharp where the anatomy determines the
intensity, noisy where it does not, and fast enough for the smoke profile on a CPU.

Opacus-compatible by construction: GroupNorm instead of BatchNorm, SiLU without ``inplace``, no in-place tensor
operations, and every operation per example.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmraudit import Batch, Conditioning, Generator, PluginError, StepRunner


@dataclass
class UNetConfig:
    base_channels: int = 16
    label_dim: int = 8
    lr: float = 2e-3
    #: bounds of the predicted log standard deviation, in units of the [-1, 1] intensity range
    min_log_std: float = -4.0
    max_log_std: float = 0.0
    #: multiplies the predicted standard deviation when sampling (1 = the fitted model)
    temperature: float = 1.0


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class _Block(nn.Module):
    """conv-norm-SiLU twice; the label embedding is added after the first convolution, as a per-channel bias."""

    def __init__(self, c_in: int, c_out: int, label_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = _norm(c_out)
        self.label = nn.Linear(label_dim, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x))) + self.label(emb)[:, :, None, None]
        return F.silu(self.norm2(self.conv2(h)))


class ConditionalUNet(nn.Module):
    """Two-level U-Net: (B, n_labels, H, W) one-hot mask + labels → (B, 2, H, W) mean logit and log-std logit."""

    def __init__(self, conditioning: Conditioning, base_channels: int, label_dim: int) -> None:
        super().__init__()
        c = base_channels
        self.vendor = nn.Embedding(conditioning.n_vendors, label_dim)
        self.pathology = nn.Embedding(conditioning.n_pathologies, label_dim)
        self.enc1 = _Block(conditioning.n_labels, c, label_dim)
        self.enc2 = _Block(c, 2 * c, label_dim)
        self.mid = _Block(2 * c, 4 * c, label_dim)
        self.dec2 = _Block(4 * c + 2 * c, 2 * c, label_dim)
        self.dec1 = _Block(2 * c + c, c, label_dim)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, onehot: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor) -> torch.Tensor:
        emb = self.vendor(vendor) + self.pathology(pathology)
        h1 = self.enc1(onehot, emb)
        h2 = self.enc2(F.avg_pool2d(h1, 2), emb)
        m = self.mid(F.avg_pool2d(h2, 2), emb)
        d2 = self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0, mode="nearest"), h2], dim=1), emb)
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), h1], dim=1), emb)
        return self.head(d1)


class ExampleUNetGenerator(Generator):
    """Mask-, vendor- and pathology-conditioned per-pixel Gaussian U-Net (see the module docstring)."""

    name = "example-unet"
    family = "regression"
    description = "conditional U-Net predicting a per-pixel Gaussian (example third-party plugin)"
    Config = UNetConfig

    @classmethod
    def profile_config(cls, profile: str) -> dict:
        return {"smoke": {"base_channels": 8, "label_dim": 4},
                "quick": {"base_channels": 16},
                "standard": {"base_channels": 32, "lr": 1e-3}}.get(profile, {})

    def __init__(self, config: UNetConfig, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        if conditioning.image_size % 4:
            raise PluginError(f"generator {self.name!r}: image size must be a multiple of 4 (two 2x poolings), "
                              f"got {conditioning.image_size}")
        self.nets = {"unet": ConditionalUNet(conditioning, config.base_channels, config.label_dim)}

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"unet": torch.optim.Adam(self.nets["unet"].parameters(), lr=self.config.lr)}

    def _gaussian(self, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor):
        """Per-pixel mean in (-1, 1) and log-std in [min_log_std, max_log_std], each (B, 1, H, W), float32."""
        onehot = F.one_hot(masks.long().clamp(0, self.conditioning.n_labels - 1), self.conditioning.n_labels)
        out = self.nets["unet"](onehot.permute(0, 3, 1, 2).float(), vendor.long(), pathology.long()).float()
        mean = torch.tanh(out[:, :1])
        lo, hi = self.config.min_log_std, self.config.max_log_std
        log_std = lo + (hi - lo) * torch.sigmoid(out[:, 1:])
        return mean, log_std

    def _nll(self, batch: Batch) -> torch.Tensor:
        """Per-example Gaussian negative log-likelihood, averaged over pixels (Kendall & Gal 2017, Eq. 5)."""
        mean, log_std = self._gaussian(batch.masks, batch.vendor, batch.pathology)
        z = (batch.images.float() - mean) * torch.exp(-log_std)
        return (0.5 * z.pow(2) + log_std + 0.5 * math.log(2 * math.pi)).flatten(1).mean(dim=1)

    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        batch = batch.to(runner.device)
        with runner.autocast():
            loss = self._nll(batch).mean()
        runner.optimize("unet", loss)
        return {"nll": float(loss.detach())}

    @torch.no_grad()
    def sample(self, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_std = self._gaussian(masks, vendor.to(masks.device), pathology.to(masks.device))
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return torch.clamp(mean + self.config.temperature * torch.exp(log_std) * noise, -1.0, 1.0)

    @torch.no_grad()
    def membership_signal(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``neg_nll``: minus the example's NLL — the loss signal of Yeom et al., CSF 2018 (higher = better fit)."""
        return {"neg_nll": -self._nll(batch)}
