"""Checkpoint files of a training run: atomic saves, safe loads, every random number generator's state.

A checkpoint (``checkpoints/step_00000100.pt``) holds plain state dicts, numbers, strings and tensors only, so it
loads with ``torch.load(weights_only=True)``: opening a run folder never executes code from it.
"""
from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import RunError
from ..io import atomic_open

FORMAT = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first (temp files of an interrupted save are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; keep the newest ``keep`` checkpoints."""
    path = checkpoint_path(ckpt_dir, step)
    with atomic_open(path, "wb") as fh:
        torch.save({"format": FORMAT, "step": step, **state}, fh)
    for _, old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in Path(ckpt_dir).glob(".step_*.tmp"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise RunError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunError(f"{path}: not a cmraudit checkpoint of format {FORMAT}")
    return state


def latest_checkpoint(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``ckpt_dir``, or None for a fresh run."""
    found = list_checkpoints(ckpt_dir)
    return (found[-1][1], load_checkpoint(found[-1][1])) if found else None


# --------------------------------------------------------------------------------------------------- RNG states
def rng_state(sampler: torch.Generator) -> dict[str, Any]:
    """Every generator a training step draws from: batch sampler, torch (CPU, CUDA, MPS), numpy, random."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "sampler": sampler.get_state(), "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "random": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], sampler: torch.Generator) -> None:
    sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def seed_everything(seed: int, sampler: torch.Generator) -> None:
    """Seed a fresh run: the batch sampler gets its own stream so model code cannot shift which batches are drawn."""
    sampler.manual_seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build networks inside this block: their random initialisation comes from torch's global RNG seeded with
    ``seed``, and the caller's global RNG state is restored afterwards.

    ``train`` seeds its draws only once the networks exist, and torch seeds its global RNG differently in every
    process, so without this the initial weights (and everything after them) differ between two runs of one
    command.
    """
    with torch.random.fork_rng(devices=[]):  # networks are built on the CPU, then moved
        torch.manual_seed(seed)
        yield
