"""A generator with a known answer for the privacy filter of ``cmraudit release`` (tests/test_release.py).

``near-copy`` stores every training slice it is shown (like ``verbatim`` in validity_generators.py) and returns
them lightly disguised: shifted by 2 px (edge-padded, not wrapped), gamma 1.3 on the [0, 1] intensity scale, and
blurred with a small Gaussian (σ = 0.5 px). Each of its images is a near copy of one training patient's slice, so
the release filter must remove (nearly) all of them. The honest counterpart is ``fresh-phantom`` from
validity_generators.py (phantom patients of another seed: never a member).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from validity_generators import Verbatim

from cmraudit.hookspecs import hookimpl

SHIFT = 2
GAMMA = 1.3
BLUR_SIGMA = 0.5


def disguise(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] → shifted by SHIFT px down and right, gamma GAMMA, Gaussian blur BLUR_SIGMA."""
    shifted = F.pad(images, (SHIFT, 0, SHIFT, 0), mode="replicate")[..., :images.shape[-2], :images.shape[-1]]
    unit = ((shifted + 1) / 2).clamp(0, 1) ** GAMMA
    x = torch.arange(-1, 2, dtype=images.dtype)
    k1 = torch.exp(-x ** 2 / (2 * BLUR_SIGMA ** 2))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :])[None, None]
    blurred = F.conv2d(F.pad(unit, (1, 1, 1, 1), mode="replicate"), kernel)
    return (blurred * 2 - 1).clamp(-1, 1)


class NearCopy(Verbatim):
    """``verbatim``'s memory of training slices, returned disguised."""

    name = "near-copy"

    def sample(self, masks, vendor, pathology, generator=None):
        return disguise(super().sample(masks, vendor, pathology, generator))


class ReleasePlugins:
    @hookimpl
    def cmraudit_register_generators(self, register):
        register(NearCopy)
