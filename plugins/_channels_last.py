"""Two slow paths of torch's CPU kernels that MONAI's DiffusionModelUNet hits in the channels-last (NHWC) layout,
which cmraudit uses for UNet inference on the CPU (``_unet._fast_cpu_inference``), worked around.

* Adding the timestep embedding, a (B, C, 1, 1) tensor, to a channels-last (B, C, H, W) activation takes a
  non-vectorised broadcast loop: 3.6 ms for a bf16 (64, 16, 64, 64) map, against 1.1 ms for materialising the
  embedding in the activation's own shape and layout and adding that. The resnet block below does the latter: the
  same values added, so bitwise the same sums.
* GroupNorm over a small channels-last map runs ~16x slower than over the same map in NCHW (bf16 (64, 32, 16, 16):
  1.95 against 0.12 ms; from 32x32 up the two are about even). Under ``torch.no_grad`` the block normalises maps of
  at most ``SMALL_MAP`` pixels in NCHW and hands back channels-last. The two kernels sum in different orders, so an
  output can differ by one bf16 rounding step; the NCHW kernel's result for an image does not depend on how many
  images share its batch, which the channels-last kernel's does (it splits large batches differently).

A quick-profile UNet forward pass at batch 64 in bf16 takes 2.06 instead of 2.33 ms per image with both
(``benchmarks/bench_unet_layout.py``). Training runs in NCHW, where neither path is taken: the block then computes
exactly MONAI's forward, bit for bit, and its GroupNorm modules keep their own calls (and so Opacus' hooks).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

#: largest map (H x W pixels) normalised in NCHW; at 32 x 32 and above channels-last GroupNorm is as fast
SMALL_MAP = 16 * 16


def _channels_last_only(x: torch.Tensor) -> bool:
    """Laid out channels-last and not also contiguous (a 1x1 map or one channel is both)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def group_norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, through NCHW for a small channels-last map when no gradient is taken."""
    if torch.is_grad_enabled() or not _channels_last_only(x) or x.shape[-2] * x.shape[-1] > SMALL_MAP:
        return norm(x)
    out = nn.functional.group_norm(x.contiguous(), norm.num_groups, norm.weight, norm.bias, norm.eps)
    return out.contiguous(memory_format=torch.channels_last)


class ResnetBlock(DiffusionUNetResnetBlock):
    """MONAI's 2-D ``DiffusionUNetResnetBlock`` with the same parameters and arithmetic, minus the two slow paths."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.nonlinearity(group_norm(self.norm1, x))
        if self.upsample is not None:
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        temb = self.time_emb_proj(self.nonlinearity(emb))[:, :, None, None]
        if _channels_last_only(h):
            temb = temb.expand(h.shape).contiguous(memory_format=torch.channels_last)
        h = h + temb
        h = self.conv2(self.nonlinearity(group_norm(self.norm2, h)))
        return self.skip_connection(x) + h


def use_layout_aware_blocks(unet: nn.Module) -> nn.Module:
    """Make every 2-D resnet block of ``unet`` a ``ResnetBlock`` (in place; parameters and state dict unchanged)."""
    for module in unet.modules():
        if type(module) is DiffusionUNetResnetBlock and module.spatial_dims == 2:
            module.__class__ = ResnetBlock
    return unet
