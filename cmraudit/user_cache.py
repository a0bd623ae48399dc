"""The per-user cache: work that depends only on public inputs and settings, shared by every run of one user.

Three things are cached, all free of audited patients: the generated phantom tables (``phantom:N,seed=S`` at one
image size), the public pretraining of DP models (trained on ``dp_pretrain`` data only, before any member is
seen) and the noise multipliers calibrated for a privacy budget (a function of ε, δ, the sample rate and the step
count only). Anything that saw an audited patient stays in its run folder; real data (ACDC, M&Ms) is never copied here.

Where: ``$CMRAUDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/cmraudit``, else ``~/.cache/cmraudit``; set
``CMRAUDIT_CACHE_DIR=off`` to disable it. Keys are fingerprints of everything that determines the entry, including
the source code that produces it, so a changed phantom or generator never reads a stale entry. Entries are built
under a temporary name and renamed into place: an interrupted or concurrent run never leaves half an entry, and an
unreadable entry is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

OFF = ("off", "none", "0", "false", "no")


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off."""
    setting = os.environ.get("CMRAUDIT_CACHE_DIR", "").strip()
    if setting.lower() in OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "cmraudit"


def fingerprint(*parts: Any, sources: Iterable[Path | str] = ()) -> str:
    """A key for ``parts`` (JSON-able settings) and the content of the ``sources`` files that compute the entry."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in sources:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:24]


def entry_path(kind: str, key: str) -> Path | None:
    """Where the entry ``key`` of ``kind`` lives (a file or a folder, whatever its writer stores), or None when
    caching is off. The entry may not exist yet."""
    root = cache_root()
    return None if root is None else root / kind / key


def store_folder(kind: str, key: str, folder: Path) -> None:
    """Copy ``folder`` into the cache as the entry ``key`` (atomically; an existing entry is kept)."""
    target = entry_path(kind, key)
    if target is None or target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=target.parent))
    try:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
        os.replace(tmp, target)
    except OSError:  # a concurrent run stored it first, or the disk is full: the cache is an optimisation only
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_folder(kind: str, key: str, into: Path) -> bool:
    """Copy the cached folder ``key`` to ``into`` (which must not exist yet); False when there is none."""
    source = entry_path(kind, key)
    if source is None or not source.is_dir() or into.exists():
        return False
    into.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{into.name}.tmp-", dir=into.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        os.replace(tmp, into)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def read_json(kind: str, key: str) -> Any:
    """The JSON entry ``key`` of ``kind``, or None when there is none (or it is unreadable, or caching is off)."""
    path = entry_path(kind, f"{key}.json")
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(kind: str, key: str, value: Any) -> None:
    """Store ``value`` as the JSON entry ``key`` of ``kind`` (atomically; a failure to write is ignored)."""
    from .io import atomic_write_text

    path = entry_path(kind, f"{key}.json")
    if path is None:
        return
    try:
        atomic_write_text(path, json.dumps(value))
    except OSError:
        pass  # a read-only home must not fail the run
