"""Device and mixed-precision choice for training and sampling.

Auto-selection prefers CUDA, then Apple MPS, then the CPU; ``--device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``)
overrides it. Automatic mixed precision (AMP) is used on CUDA only: bf16 where the GPU supports it (no loss scaling
needed, same exponent range as fp32), else fp16 with a GradScaler. CPU and MPS train in fp32: CPU autocast is slower
than fp32 for convolutions on most machines, and MPS autocast support still varies between torch releases.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..errors import ConfigError


def select_device(requested: str | None = None) -> torch.device:
    """The device to train on: ``requested`` when given (and present), else cuda > mps > cpu."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device: cannot use {requested!r} ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not _mps_available():
        raise ConfigError(f"--device {requested}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {requested}: expected cpu, cuda[:N] or mps")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def amp_dtype(device: torch.device, enabled: bool = True, private: bool = False) -> torch.dtype | None:
    """The autocast dtype for training on ``device``, or None for full fp32.

    ``private``: a DP run never uses fp16. fp16 needs loss scaling, and a scaled loss scales every per-example
    gradient, so clipping would act on the wrong norms and a skipped (overflowed) step would depend on the data.
    bf16 needs no scaler and is used for DP runs where the GPU has it.
    """
    if not enabled or device.type != "cuda":
        return None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None if private else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """An autocast context for the forward pass, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(device: torch.device) -> str:
    """A human-readable device name for training.json and results.json."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return device.type
