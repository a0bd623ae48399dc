"""What the filter cost: the fidelity and utility metrics again, on the images the filter kept.

The metrics are the registered plugins the audit ran, each called through ``cmraudit.run.audit_stage.run_metric`` on
an ``AuditContext`` built as the audit stage builds it (the run's data, split, profile, seed, device, options and
model folder) with ``synthetic`` = the kept subset, so "before" (results.json) and "after" differ only in the
synthetic set. Real-data models the metrics train (encoder, segmenters) come from the run's cache.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..api import AuditContext
from ..registry import registered
from ..run.audit_stage import run_metric
from ..run.builders import load_generator

if TYPE_CHECKING:
    from ..data.types import SliceTable
    from ..run.audit_run import AuditRun

CATEGORIES = ("fidelity", "utility")


def audited_metrics(entry: dict[str, Any]) -> list[str]:
    """The model's fidelity and utility metrics that the audit ran successfully."""
    return [name for name, m in (entry.get("metrics") or {}).items()
            if m.get("category") in CATEGORIES and m.get("status") == "ok"]


def remeasure(run: "AuditRun", model: str, entry: dict[str, Any], kept: "SliceTable",
              progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """metric -> its results.json-style entry measured on ``kept`` (``ok``, ``skipped`` or ``failed``)."""
    try:  # the metrics judge applicability by the generator; one whose plugin is gone is judged without it
        generator = load_generator(run.folder.model_dir(model), run.device)
    except Exception:  # noqa: BLE001
        generator = None
    ctx = AuditContext(model=model, generator=generator, data=run.table, split=run.split, synthetic=kept,
                       profile=run.config.profile, seed=run.config.seed, device=run.device,
                       workdir=run.folder.model_dir(model), options=run.config.options)
    available = registered("metrics")
    out: dict[str, dict[str, Any]] = {}
    for name in audited_metrics(entry):
        category = entry["metrics"][name]["category"]
        if name not in available:
            out[name] = {"status": "skipped", "category": category, "reason": "metric plugin not installed now"}
        elif len(kept) == 0:
            out[name] = {"status": "skipped", "category": category, "reason": "the filter kept no image"}
        else:
            if progress:
                progress(f"re-measuring {name} on the {len(kept)} kept images")
            out[name] = run_metric(ctx, name)
    return out


def before_after(entry: dict[str, Any], after: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One row per metric value: metric, category, value name, direction, before (results.json) and after."""
    rows = []
    for name, metric in (entry.get("metrics") or {}).items():
        if metric.get("category") not in CATEGORIES:
            continue
        again = (after or {}).get(name) or {}
        for key, value in (metric.get("values") or {}).items():
            row = {"metric": name, "category": metric["category"], "value": key,
                   "direction": value.get("direction"), "before": value.get("value")}
            if after is not None:
                row["after"] = ((again.get("values") or {}).get(key) or {}).get("value")
                if again.get("status") != "ok":
                    row["after_note"] = again.get("reason") or again.get("error") or "not re-measured"
            rows.append(row)
    return rows
