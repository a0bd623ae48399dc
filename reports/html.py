"""report.html: one self-contained file rendered from jinja2 templates (autoescape on, no external URL).

Sections are plugins: every class registered through ``cmraudit_register_report_sections`` renders a fragment in
``order``; the built-in ones live in ``cmraudit.reports.sections``. A section that raises is replaced by a note
naming it, so one broken plugin never costs the whole report. Plugin- and user-supplied strings (model, attack,
metric and section names, errors, config values) only ever reach the page through autoescaped templates.

``redact=True`` writes a report without real patient pixels: real images are replaced by their label masks and
synthetic images shown next to a named training patient (memorisation and replay pairs) are blurred beyond
recognition. The default report says prominently that it contains patient data.
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

from cmraudit import results as R
from cmraudit.hookspecs import hookimpl

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
    verdicts: dict[str, bool] = field(default_factory=dict)
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
            from cmraudit.stats import load_scores

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
            from cmraudit.errors import RunError
            from cmraudit.stages import load_samples

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


def load_real_data(run_dir: Path) -> tuple[Any, Any]:
    """(table, split) of a run folder, read again from its config; (None, None) when the data is unavailable."""
    from cmraudit.data.sources import open_source
    from cmraudit.data.splits import load_split
    from cmraudit.errors import CmrauditError
    from cmraudit.runconfig import merge_layers, read_toml

    try:
        config = merge_layers([("config.toml", read_toml(run_dir / "config.toml"))])
        return open_source(config.data).load(int(config.image_size)), load_split(run_dir / "split.json")
    except (CmrauditError, OSError):
        return None, None


def render_sections(report: Report) -> list[dict[str, Any]]:
    from cmraudit.registry import registered

    classes = sorted(registered("report_sections").items(), key=lambda kv: (getattr(kv[1], "order", 100), kv[0]))
    out = []
    for i, (name, cls) in enumerate(classes):
        title = getattr(cls, "title", "") or name
        try:
            html = Markup(cls().render(report))
        except Exception as exc:  # a broken section costs itself, not the report
            html = report.note(f"This section could not be rendered: {type(exc).__name__}: {exc}")
        out.append({"id": f"section-{i}", "name": name, "title": title, "html": html})
    return out


def write_report(run_dir: Path | str, path: Path | str | None = None, *, redact: bool = False, policy: Any = None,
                 table: Any = None, split: Any = None) -> Path:
    """Render report.html for a run folder (its results.json, score and sample files) and write it atomically."""
    from cmraudit.data.splits import load_split
    from cmraudit.gate import evaluate, load_policy, model_verdicts
    from cmraudit.io import atomic_write_text

    run_dir = Path(run_dir)
    doc = R.load(run_dir)
    policy = policy if policy is not None and not isinstance(policy, (str, Path)) else load_policy(policy)
    if table is None:
        table, split = load_real_data(run_dir)
    elif split is None and (run_dir / "split.json").exists():
        split = load_split(run_dir / "split.json")
    rules = evaluate(doc, policy)
    config_path = run_dir / "config.toml"
    report = Report(run_dir, doc, redact, policy, rules, model_verdicts(rules),
                    config_path.read_text() if config_path.exists() else "", table, split)
    sections = render_sections(report)
    html = environment().get_template("report.html").render(report=report, sections=sections, doc=doc)
    target = Path(path) if path else run_dir / "report.html"
    atomic_write_text(target, html)
    return target


@hookimpl
def cmraudit_register_report_sections(register) -> None:
    from . import sections

    for cls in sections.built_in():
        register(cls)


__all__ = ["Report", "Cell", "write_report", "fmt"]
