"""Rich rendering for the run commands: live training progress, the end-of-run summary and the gate table."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .. import results as R


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"[{_fmt(v[0], 2)}, {_fmt(v[1], 2)}]"
    return str(v)


def console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when the output is a file or a CI log."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=160)


class ProgressView:
    """A ProgressEvent sink: one progress bar per model while it trains, one line per finished step otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[logs]}"),
                                 console=console, transient=False)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> "ProgressView":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Any) -> None:
        label = f"{event.stage} {event.model}" if event.model else event.stage
        if event.stage == "train" and event.state in ("start", "update") and event.model:
            task = self.tasks.get(event.model)
            if task is None:
                task = self.tasks[event.model] = self.progress.add_task(f"train {escape(event.model)}",
                                                                        total=event.total, logs="")
            logs = " ".join(f"{k} {v:.3g}" for k, v in list(event.logs.items())[:3] if isinstance(v, (int, float)))
            self.progress.update(task, completed=event.step or 0, total=event.total, logs=escape(logs))
            return
        if event.state == "update":
            return
        style = {"failed": "red", "skipped": "dim", "done": "green"}.get(event.state, "")
        text = f"{label}: {event.state}" + (f" — {event.message}" if event.message else "")
        self.progress.console.print(escape(text), style=style or None)


_VERDICT_STYLE = {"pass": "[green]pass[/green]", "fail": "[red]FAIL[/red]",
                  "inconclusive": "[yellow]inconclusive[/yellow]"}


def summary_table(doc: dict[str, Any] | None) -> Table:
    """Model × headline privacy, fidelity and utility numbers."""
    table = Table(title="cmraudit results")
    table.add_column("model", no_wrap=True)
    for col in ("status", "verdict", "ε", "worst MIA AUC", "95% CI", "TPR@1%FPR", "FD", "coverage", "mask Dice",
                "TSTR Dice"):
        table.add_column(col)
    for model, entry in ((doc or {}).get("models") or {}).items():
        h = R.headline(entry)
        trained = entry.get("training") is not None
        eps = h["epsilon"] if h["epsilon"] is not None or not trained else math.inf
        status = entry.get("status", "")
        verdict = (entry.get("verdict") or {}).get("outcome")
        table.add_row(escape(model), f"[red]{status}[/red]" if status == "failed" else status,
                      _VERDICT_STYLE.get(verdict, "–") if verdict else "–", _fmt(eps),
                      _fmt(h["auc"]), _fmt(h["auc_ci"]), _fmt(h["tpr_at_1pct"]), _fmt(h["fd"]),
                      _fmt(R.metric_values(entry).get("coverage", {}).get("value")), _fmt(h["mask_dice"]),
                      _fmt(h["tstr_dice"]))
    return table


def gate_table(rules: list[Any], source: str) -> Table:
    table = Table(title=f"cmraudit gate ({escape(source)})")
    for col in ("model", "rule", "value", "threshold", "verdict", "reason"):
        table.add_column(col)
    for r in rules:
        table.add_row(escape(r.model), escape(r.rule), _fmt(r.value), _fmt(r.threshold),
                      _VERDICT_STYLE.get(r.verdict, escape(r.verdict)), escape(r.reason))
    return table
