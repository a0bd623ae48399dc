"""Conditioning shared by every built-in generator: mask one-hot maps, vendor/pathology embeddings, and the
label/mask dropout that classifier-free guidance needs.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance") trains one network both
conditionally and unconditionally by replacing the condition with a learned "null" token for a random fraction of
the examples, then extrapolates at sampling time: ``out = out_uncond + w * (out_cond - out_uncond)``.

Here the null vendor and null pathology are an extra embedding row each, and a dropped mask is an all-zero one-hot
map (a real one-hot map always has exactly one channel set per pixel, so zeros cannot be mistaken for a stencil).
Every operation is per example, so Opacus' per-sample gradients stay per example.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmraudit.api import Conditioning


def mask_onehot(masks: torch.Tensor, n_labels: int) -> torch.Tensor:
    """(B, H, W) int64 label map -> (B, n_labels, H, W) float one-hot map in {0, 1}."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got {tuple(masks.shape)}")
    onehot = F.one_hot(masks.long().clamp(0, n_labels - 1), n_labels).permute(0, 3, 1, 2)
    # contiguous: Opacus 1.6's per-sample conv gradients (hooks mode) are silently wrong for the channels-last
    # strides that permute leaves, and .float() keeps those strides
    return onehot.float().contiguous()


def resize_onehot(onehot: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour resize of a one-hot map (keeps it one-hot, as SPADE does for its segmentation input)."""
    if onehot.shape[-1] == size:
        return onehot
    return F.interpolate(onehot, size=(size, size), mode="nearest")


def pack_labels(vendor: torch.Tensor, pathology: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) -> (B, 2) int64, the form LabelEmbedding takes (one tensor, so it can pass as MONAI class_labels)."""
    return torch.stack([vendor.long(), pathology.long()], dim=1)


class LabelEmbedding(nn.Module):
    """Sum of a vendor and a pathology embedding, each with one extra row: the null token for guidance.

    Two factorised tables rather than one joint (vendor x pathology) table, so a vendor seen with one pathology
    shares what it learned with the other pathologies: small cohorts rarely cover every combination.
    """

    def __init__(self, conditioning: Conditioning, dim: int) -> None:
        super().__init__()
        self.n_vendors = conditioning.n_vendors
        self.n_pathologies = conditioning.n_pathologies
        self.vendor = nn.Embedding(self.n_vendors + 1, dim)
        self.pathology = nn.Embedding(self.n_pathologies + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.vendor(labels[:, 0]) + self.pathology(labels[:, 1])


@dataclass
class Condition:
    """One batch's conditioning: mask one-hot (B, L, H, W) and packed labels (B, 2)."""

    onehot: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def build(cls, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor,
              conditioning: Conditioning, device: torch.device | str | None = None) -> "Condition":
        device = device if device is not None else masks.device
        return cls(mask_onehot(masks.to(device), conditioning.n_labels), pack_labels(vendor, pathology).to(device))

    def null(self, conditioning: Conditioning, drop_mask: bool = True) -> "Condition":
        """The unconditional counterpart: null labels, and a zero mask map when ``drop_mask``."""
        b = self.labels.shape[0]
        labels = torch.tensor([[conditioning.n_vendors, conditioning.n_pathologies]], device=self.labels.device)
        onehot = torch.zeros_like(self.onehot) if drop_mask else self.onehot
        return Condition(onehot, labels.expand(b, 2).clone())

    def dropped(self, conditioning: Conditioning, p_labels: float, p_mask: float) -> "Condition":
        """Training-time dropout for guidance: each example independently loses its labels with probability
        ``p_labels`` and its mask with probability ``p_mask`` (uses the global RNG, seeded by the training loop)."""
        if p_labels <= 0 and p_mask <= 0:
            return self
        b, device = self.labels.shape[0], self.labels.device
        null = self.null(conditioning)
        drop_labels = (torch.rand(b, device=device) < p_labels)[:, None]
        drop_mask = (torch.rand(b, device=device) < p_mask)[:, None, None, None]
        return Condition(torch.where(drop_mask, null.onehot, self.onehot),
                         torch.where(drop_labels, null.labels, self.labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def chunk(self, start: int, stop: int) -> "Condition":
        return Condition(self.onehot[start:stop], self.labels[start:stop])


def guided(predict, x: torch.Tensor, t: torch.Tensor, cond: Condition, uncond: Condition | None,
           scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): ``u + scale * (c - u)``; one pass when scale == 1.

    ``predict(x, t, condition)`` is the network call. The conditional and unconditional passes run as one batch.
    """
    if uncond is None or scale == 1.0:
        return predict(x, t, cond)
    both = Condition(torch.cat([cond.onehot, uncond.onehot]), torch.cat([cond.labels, uncond.labels]))
    out_cond, out_uncond = predict(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
    return out_uncond + scale * (out_cond - out_uncond)


def network_device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def seeded_normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the torch.Generator's own device, so a seed gives the same numbers on CPU
    and GPU runs, then moved to the network's device."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)
