"""What a run tells the outside world while it works: progress events, and one-line errors naming a plugin.

The library never prints: stages emit ``ProgressEvent``s to a ``Progress`` callback (the CLI's display, a
notebook's logger, or nothing), and a plugin's crash becomes one line naming the plugin at fault.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class ProgressEvent:
    """What the run is doing, for the CLI's progress display (the library never prints)."""

    stage: str
    model: str | None = None
    state: str = "start"  # start | update | done | skipped | failed
    message: str = ""
    step: int | None = None
    total: int | None = None
    logs: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default Progress: events go nowhere."""


def safe_name(name: str) -> str:
    """A file name for a model or plugin name: itself when harmless, else a cleaned form plus a short hash (so
    ``a/b`` and ``a_b`` stay distinct and no name can climb out of the run folder)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._+-]+', '_', name).strip('._')[:40]}-{digest}"


def describe_error(exc: BaseException, what: str) -> str:
    """One line naming the plugin at fault: ``generator 'gan' (cmraudit.plugins.gan): ValueError: ...``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{what}: {type(exc).__name__}{': ' + text if text else ''}"


def plugin_label(kind: str, name: str, cls: type) -> str:
    """``attack 'loss' (cmraudit.attacks.membership)``: who to blame."""
    return f"{kind} {name!r} ({cls.__module__})"
