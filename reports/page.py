"""What every report section renders with: the ``Report`` (results, run folder, real data, cached files) and the
helpers that turn numbers and images into escaped HTML.

Sections (``sections``, ``galleries`` and any plugin's) import from here; ``html`` assembles the page. Plugin- and
user-supplied strings only ever reach the page through autoescaped templates.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from cmraudit.errors import RunError
from cmraudit.run.folder import load_samples, load_scores

from . import figures


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("cmraudit.reports", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["num"] = fmt
    return env


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: None → "–", inf → "∞", else ``digits`` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, np.floating, np.integer)):
        v = float(value)
        if math.isinf(v):
            return "∞"
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{fmt(value[0], digits)}, {fmt(value[1], digits)}]"
    return str(value)


@dataclass
class Cell:
    """A table cell: text (escaped when rendered) and an optional CSS class (ok / fail / muted)."""

    text: Any
    cls: str = ""


@dataclass
class Report:
    """What a ReportSection's ``render(report)`` receives: the results, the run folder and rendering helpers."""

    run_dir: Path
    results: dict[str, Any]
    redact: bool = False
    policy: Any = None
    rules: list[Any] = field(default_factory=list)
    #: model -> the gate's verdict on it: pass, fail or inconclusive (inconclusive rules shown as such)
    verdicts: dict[str, str] = field(default_factory=dict)
    config_text: str = ""
    table: Any = None  # the real SliceTable, when available
    split: Any = None
    #: per-report memo of loaded files and derived arrays, shared by the sections
    cache: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------- data access
    @property
    def models(self) -> dict[str, dict[str, Any]]:
        return self.results.get("models") or {}

    def scores(self, model: str, attack: str) -> Any:
        """The AttackResult saved for (model, attack), or None when the file is absent or unreadable."""
        entry = (self.models.get(model, {}).get("attacks") or {}).get(attack) or {}
        if entry.get("status") != "ok" or not entry.get("scores"):
            return None
        key = f"scores:{model}:{attack}"
        if key not in self.cache:
            try:
                self.cache[key] = load_scores(self.run_dir / entry["scores"])
            except (OSError, ValueError, KeyError):
                self.cache[key] = None
        return self.cache[key]

    def samples(self, model: str) -> Any:
        entry = self.models.get(model, {}).get("samples") or {}
        if not entry.get("path"):
            return None
        key = f"samples:{model}"
        if key not in self.cache:
            try:
                self.cache[key] = load_samples(self.run_dir / entry["path"], model)
            except RunError:
                self.cache[key] = None
        return self.cache[key]

    def real(self, role: str) -> Any:
        """The real slices of one split role (members, nonmembers, ...), or None without the data."""
        if self.table is None or self.split is None:
            return None
        key = f"real:{role}"
        if key not in self.cache:
            self.cache[key] = self.table.select_patients(getattr(self.split, role))
        return self.cache[key]

    # ------------------------------------------------------------------------------------------- rendering
    def render(self, template: str, **context: Any) -> Markup:
        return Markup(environment().get_template(template).render(report=self, **context))

    def part(self, macro: str, *args: Any, **kwargs: Any) -> Markup:
        """A macro of parts.html: table(headers, rows), figures(items), note(text), pre(text)."""
        return Markup(getattr(environment().get_template("parts.html").module, macro)(*args, **kwargs))

    def note(self, text: str) -> Markup:
        return self.part("note", text)

    def real_tiles(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Real patient images for display: the images themselves, or their label masks when redacted."""
        return figures.masks_rgb(masks) if self.redact else figures.to_rgb(images)

    def paired_synthetic_tiles(self, images: np.ndarray) -> np.ndarray:
        """Synthetic images shown beside a named patient (possible copies): blurred when redacted."""
        rgb = figures.to_rgb(images)
        return figures.blur_rgb(rgb) if self.redact else rgb


def ok_models(report: Report) -> list[str]:
    """The models whose every stage finished."""
    return [m for m, e in report.models.items() if e.get("status") == "ok"]
