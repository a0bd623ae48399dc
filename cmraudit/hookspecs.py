"""Every hook a cmraudit plugin can implement: the plugin author's contract.

Each ``register_*`` hook receives a ``register`` callback (as in llm and tox): call ``register(cls)`` once per
class you add. The class's ``name`` attribute is the name users type (``--generator NAME``); pass
``register(cls, name="other")`` to override it. A name registered by two plugins is an error naming both.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("cmraudit")
hookimpl = pluggy.HookimplMarker("cmraudit")

Register = Callable[..., None]


@hookspec
def cmraudit_register_generators(register: Register) -> None:
    """Register Generator subclasses (mask-, vendor- and pathology-conditioned image generators)."""


@hookspec
def cmraudit_register_mask_generators(register: Register) -> None:
    """Register MaskGenerator subclasses (label-map generators for two-stage generation: masks, then images)."""


@hookspec
def cmraudit_register_attacks(register: Register) -> None:
    """Register Attack subclasses (membership inference, memorisation, re-identification)."""


@hookspec
def cmraudit_register_metrics(register: Register) -> None:
    """Register Metric subclasses (fidelity and utility)."""


@hookspec
def cmraudit_register_datasets(register: Register) -> None:
    """Register DatasetSource subclasses, addressed on the command line as ``SCHEME`` or ``SCHEME:ARG``."""


@hookspec
def cmraudit_register_report_sections(register: Register) -> None:
    """Register ReportSection subclasses, rendered into report.html in ``order``."""


@hookspec
def cmraudit_register_commands(app: Any) -> None:
    """Add sub-commands to the ``cmraudit`` typer app (``app.command()(func)`` or ``app.add_typer``)."""
