"""cmraudit's in-domain encoder: image features learned from the real members' cardiac slices only.

Inception weights (FID) cannot be downloaded offline, and ImageNet features mean little for cardiac MRI. Like the
medical-imaging papers that swap in a domain network, cmraudit uses the encoder half of a segmentation UNet
trained to segment the members' slices (cmraudit.measure.segmenter, the same network that scores mask consistency and
TRTR). A slice's feature vector is the spatial mean of every encoder level's activations (after batch norm and
PReLU), from full-resolution edges and texture to the bottleneck's anatomy: D = sum(channels).

Numbers computed on these features are "FD on cmraudit's in-domain encoder" — never FID: they depend on the run's
members and seed, and compare models within one run, not across papers. The encoder is deterministic from the seed
and cached per run and data set under a fingerprint (member patients, pixel content, image size, seed, recipe).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..training.device import inference_autocast
from .segmenter import SegmenterConfig, context_config, fingerprint, real_segmenter

if TYPE_CHECKING:
    from ..api import AuditContext

__all__ = ["ENCODER_SOURCE", "Encoder", "encoder_blocks", "fingerprint", "get_encoder"]


def encoder_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The down-sampling blocks of a MONAI ``UNet``, top to bottom, ending with the bottleneck.

    MONAI nests the UNet as Sequential(down, SkipConnection(Sequential(down, ..., up)), up); each SkipConnection
    feeds its input unchanged to the inner block, so running the ``down`` blocks in order reproduces the encoder.
    """
    from monai.networks.layers import SkipConnection

    blocks: list[torch.nn.Module] = []
    node = unet.model
    while isinstance(node, torch.nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        blocks.append(node[0])
        node = node[1].submodule
    blocks.append(node)
    return blocks


class Encoder:
    """``features(images)`` maps (N, 1, H, W) images in [-1, 1] to (N, D) float32 feature vectors (on the CPU)."""

    def __init__(self, unet: torch.nn.Module, key: str = "") -> None:
        self.unet = unet.eval()
        self.blocks = encoder_blocks(unet)
        self.key = key  # fingerprint of the data and recipe it was trained with

    @property
    def dim(self) -> int:
        with torch.no_grad():
            size = 2 ** (len(self.blocks) + 1)
            return int(self.features(torch.zeros(1, 1, size, size)).shape[1])

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
        device = next(self.unet.parameters()).device
        out = []
        with inference_autocast(device):  # bf16 where the CPU has bf16 matrix units (cmraudit.training.device)
            for start in range(0, len(images), batch_size):
                # channels-last input: with the segmenter's channels-last weights, 1.4x faster than NCHW in bf16
                x = images[start:start + batch_size].to(device, torch.float32).contiguous(
                    memory_format=torch.channels_last)
                pooled = []
                for block in self.blocks:
                    x = block(x)
                    pooled.append(x.float().mean(dim=(-2, -1)))
                out.append(torch.cat(pooled, dim=1).cpu())
        if not out:
            return torch.zeros((0, self.dim))
        return torch.cat(out)


#: ``ctx.cache`` key of another context whose encoder this one uses (set by the run for its canary audit)
ENCODER_SOURCE = "encoder_source"


def get_encoder(ctx: "AuditContext", config: SegmenterConfig | None = None) -> Encoder:
    """The run's in-domain encoder, trained on ``ctx.members``, or the encoder of the context held in
    ``ctx.cache[ENCODER_SOURCE]`` (once per run: memoised in ``ctx.cache["encoder"]``
    and saved under ``cmraudit.measure.segmenter.cache_dir(ctx)``). ``config`` overrides the profile's recipe."""
    if "encoder" in ctx.cache:
        return ctx.cache["encoder"]
    if ENCODER_SOURCE in ctx.cache:  # e.g. the canary audit: the real audit's encoder, which saw no canary
        ctx.cache["encoder"] = get_encoder(ctx.cache[ENCODER_SOURCE], config)
        return ctx.cache["encoder"]
    config = config or context_config(ctx)
    unet = real_segmenter(ctx, "members", config=config)
    encoder = Encoder(unet, key=fingerprint(ctx.members, ctx.seed, config, role="members", exclude_vendor=None))
    ctx.cache["encoder"] = encoder
    return encoder
