"""What a training folder already holds, read once (by rank 0 in a distributed run) before ``train`` starts.

``train`` (``cmraudit.training.loop``) resumes a folder only with the settings that made it: its identity (the
generator, its config, the loop's and DP settings) is compared with the saved one first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..api import Generator
from ..errors import RunError
from .checkpoint import latest_checkpoint, load_checkpoint
from .distributed import World
from .step_runner import unwrap


def plain(value: Any) -> Any:
    """JSON-like plain data (tuples as lists, other objects as strings): loadable with weights_only=True."""
    return json.loads(json.dumps(value, default=str))


def check_identity(where: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    diffs = [k for k in current if plain(saved.get(k)) != current[k]]
    if diffs:
        raise RunError(f"{where}: holds a run with different {', '.join(diffs)} settings; "
                       "resume it with the same settings or train into a new folder")


def existing(out_dir: Path, identity: dict, generator: Generator, ranks: World | None) -> tuple[str, Any, Any]:
    """What ``out_dir`` holds, read by rank 0 and handed to every rank: ("finished", summary, final checkpoint),
    ("resume", checkpoint path, checkpoint) or ("fresh", None, initial weights). An error is raised on every rank."""
    if ranks is None:
        return _read_existing(out_dir, identity, generator)
    return ranks.from_main(lambda: _read_existing(out_dir, identity, generator))


def _read_existing(out_dir: Path, identity: dict, generator: Generator) -> tuple[str, Any, Any]:
    if (out_dir / "training.json").is_file():
        summary = read_summary(out_dir)
        check_identity(out_dir / "training.json", summary.get("identity", {}), identity)
        return "finished", summary, load_checkpoint(out_dir / summary["checkpoint"])
    saved = latest_checkpoint(out_dir / "checkpoints")
    if saved:
        check_identity(saved[0], saved[1]["identity"], identity)
        return "resume", saved[0], saved[1]
    return "fresh", None, {n: unwrap(generator.nets[n]).state_dict() for n in generator.nets}


def read_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "training.json"
    if not path.is_file():
        raise RunError(f"{out_dir}: training has not finished (no training.json); run the same train command again "
                       "to resume it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
