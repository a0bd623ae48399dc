"""``example-section``: a report.html section summarising what this plugin measured, one row per model.

``render`` returns an HTML fragment that cmraudit inserts as it is, so every string that comes from the run (model
names, generator names, error messages) is escaped here with ``html.escape``.
"""
from __future__ import annotations

import html
import math
from typing import Any

from cmraudit import ReportSection

from .attack import CalibratedNearestNeighbourAttack
from .metric import StructureIntensityError

METRIC_VALUE = "structure_intensity_error"


def _num(value: Any) -> str:
    return "–" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.3g}"


def _interval(ci: Any) -> str:
    return f" [{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def _cell(entry: dict[str, Any] | None, value: Any, ci: Any) -> str:
    """A finished entry's number with its interval, or its status (skipped / failed / not run)."""
    if not entry:
        return "not run"
    if entry.get("status") != "ok":
        reason = entry.get("error") or entry.get("reason") or ""
        return html.escape(f"{entry.get('status', '?')}{': ' + str(reason) if reason else ''}")
    return html.escape(_num(value) + _interval(ci))


class ExampleSection(ReportSection):
    name = "example-section"
    title = "Example plugin: structure intensities and nearest-neighbour attack"
    order = 900  # after the built-in sections

    def render(self, report: Any) -> str:
        results = getattr(report, "results", report)
        models = results.get("models") or {}
        rows = []
        for model, entry in models.items():
            metric = (entry.get("metrics") or {}).get(StructureIntensityError.name)
            value = ((metric or {}).get("values") or {}).get(METRIC_VALUE) or {}
            attack = (entry.get("attacks") or {}).get(CalibratedNearestNeighbourAttack.name)
            rows.append(f"<tr><td>{html.escape(str(model))}</td><td>{html.escape(str(entry.get('generator', '')))}"
                        f"</td><td>{_cell(metric, value.get('value'), value.get('ci'))}</td>"
                        f"<td>{_cell(attack, (attack or {}).get('auc'), (attack or {}).get('auc_ci'))}</td></tr>")
        body = "".join(rows) or '<tr><td colspan="4">no models in this run</td></tr>'
        return ('<div class="example-section" data-plugin="cmraudit-example-plugin">'
                "<p>Mean absolute difference between synthetic and real mean intensity inside RV, MYO and LV "
                "(lower is better, [-1, 1] scale), and the AUC of a calibrated nearest-neighbour membership "
                "attack (0.5 = no leakage), each with a 95 % patient-bootstrap interval.</p>"
                "<table><thead><tr><th>model</th><th>generator</th><th>structure intensity error</th>"
                f"<th>nearest-neighbour attack AUC</th></tr></thead><tbody>{body}</tbody></table></div>")
