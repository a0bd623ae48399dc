"""report.html: one self-contained file rendered from jinja2 templates (autoescape on, no external URL).

Sections are plugins: every class registered through ``cmraudit_register_report_sections`` renders a fragment in
``order``; the built-in ones live in ``sections`` (text and tables) and ``galleries`` (pictures). A section that raises is replaced by a note
naming it, so one broken plugin never costs the whole report. Plugin- and user-supplied strings (model, attack,
metric and section names, errors, config values) only ever reach the page through autoescaped templates.

``redact=True`` writes a report without real patient pixels: real images are replaced by their label masks and
synthetic images shown next to a named training patient (memorisation and replay pairs) are blurred beyond
recognition. The default report says prominently that it contains patient data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from markupsafe import Markup

from cmraudit import results as R
from cmraudit.gate import evaluate, load_policy, model_outcomes
from cmraudit.hookspecs import hookimpl
from cmraudit.io import atomic_write_text
from cmraudit.registry import registered
from cmraudit.run.folder import RunFolder

from .galleries import DcrSection, GallerySection, MemorisationSection, ReplaySection, RocSection
from .masks import GeneratedMaskSection
from .page import Cell, Report, environment, fmt
from .sections import ComparisonSection, ConfigSection, PrivacySection, SummarySection, VerdictSection


class ReportSource(Protocol):
    """What a report is written from: a finished run folder (``RunFolder``) or a live ``AuditRun``, whose data is
    already loaded."""

    out: Path

    def real_data(self) -> tuple[Any, Any]: ...

    def config_text(self) -> str: ...


def render_sections(report: Report) -> list[dict[str, Any]]:
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


def write_report(run: ReportSource | Path | str, path: Path | str | None = None, *, redact: bool = False,
                 policy: Any = None) -> Path:
    """Render report.html for a run (its results.json, score and sample files, and its real data when it can be
    loaded: sections that need it degrade to a note otherwise) and write it atomically."""
    run = RunFolder(run) if isinstance(run, (str, Path)) else run
    doc = R.load(run.out)
    policy = policy if policy is not None and not isinstance(policy, (str, Path)) else load_policy(policy)
    table, split = run.real_data()
    rules = evaluate(doc, policy)
    report = Report(run.out, doc, redact, policy, rules, model_outcomes(rules), run.config_text(), table, split)
    sections = render_sections(report)
    html = environment().get_template("report.html").render(report=report, sections=sections, doc=doc)
    target = Path(path) if path else run.out / "report.html"
    atomic_write_text(target, html)
    return target


BUILT_IN_SECTIONS = (SummarySection, VerdictSection, ComparisonSection, RocSection, DcrSection, GallerySection,
                     GeneratedMaskSection, MemorisationSection, ReplaySection, PrivacySection, ConfigSection)


@hookimpl
def cmraudit_register_report_sections(register) -> None:
    for cls in BUILT_IN_SECTIONS:
        register(cls)


__all__ = ["Report", "Cell", "write_report", "fmt"]
