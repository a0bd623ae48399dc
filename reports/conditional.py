"""Report section: conditional fidelity — vendor and pathology Classification Accuracy Score per model.

Reads the ``conditional`` metric's values from results.json (``cmraudit.attacks.conditional``): per model, the
synthetic accuracy of each real-trained label classifier beside its accuracy on real test slices, then the recall
per class. A classifier that cannot tell the classes apart on real data is shown as such, not as a verdict.
"""
from __future__ import annotations

from typing import Any

from markupsafe import Markup

from cmraudit.api import ReportSection
from cmraudit.hookspecs import hookimpl

from .page import Cell, fmt

METRIC = "conditional"
LABELS = ("vendor", "pathology")


def _values(entry: dict[str, Any]) -> dict[str, Any] | None:
    metric = (entry.get("metrics") or {}).get(METRIC) or {}
    return metric.get("values") if metric.get("status") == "ok" else None


def _pair(values: dict[str, Any], label: str, stat: str) -> tuple[Cell, Cell]:
    """(synthetic cell, real cell) for one label and statistic; muted when the classifier is at chance."""
    v = values.get(f"{label}_{stat}")
    if not v:
        return Cell("–", "muted"), Cell("–", "muted")
    d = v.get("details") or {}
    syn = f"{fmt(v.get('value'))} {fmt(v.get('ci'))}" if v.get("ci") else fmt(v.get("value"))
    real = f"{fmt(d.get('real'))} {fmt(d.get('real_ci'))}" if d.get("real_ci") else fmt(d.get("real"))
    if not d.get("informative", True):
        return Cell(f"{syn} (not judged: classifier at chance on real data)", "muted"), Cell(real, "muted")
    return Cell(syn), Cell(real)


class ConditionalSection(ReportSection):
    name = "conditional"
    title = "Conditional fidelity: are vendor and pathology labels visible in the images?"
    order = 45

    def render(self, report) -> str:
        rows, class_rows, chance = [], [], {}
        for model, entry in report.models.items():
            values = _values(entry)
            if not values:
                continue
            row: list[Any] = [model]
            for label in LABELS:
                for stat in ("accuracy", "balanced_accuracy"):
                    row.extend(_pair(values, label, stat))
                v = values.get(f"{label}_accuracy")
                if v:
                    d = v.get("details") or {}
                    chance[label] = d.get("chance")
                    real_classes = (d.get("real_test") or {}).get("per_class") or {}
                    for cls, s in sorted((d.get("per_class") or {}).items()):
                        class_rows.append([model, label, cls, fmt(s.get("recall")), fmt(s.get("n")),
                                           fmt((real_classes.get(cls) or {}).get("recall"))])
            rows.append(row)
        if not rows:
            return report.note("No model has conditional-fidelity values (metric 'conditional' not run or skipped).")
        headers = ["model"] + [f"{label} {stat} {side}" for label in LABELS for stat in ("acc", "bal. acc")
                               for side in ("synthetic", "real")]
        intro = report.note(
            "Classifiers trained on real member slices (Classification Accuracy Score, Ravuri & Vinyals 2019) read "
            "each synthetic image's vendor and pathology; 'synthetic' is their accuracy against the labels the "
            "image was conditioned on, 'real' on real held-out test slices (the ceiling). Chance: "
            + ", ".join(f"{label} {fmt(c)}" for label, c in chance.items())
            + ". A model that ignores its vendor label scores near chance on vendor. Pathology follows the "
              "conditioning mask's anatomy, so it mostly checks that the images show that anatomy.")
        per_class = report.part("table", ["model", "label", "class", "synthetic recall", "synthetic n",
                                          "real recall"], class_rows)
        return Markup("").join([intro, report.part("table", headers, rows),
                                Markup("<details><summary>Recall per class</summary>"), per_class,
                                Markup("</details>")])


@hookimpl
def cmraudit_register_report_sections(register) -> None:
    register(ConditionalSection)
