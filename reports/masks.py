"""The report's view of two-stage generation (``mask_source = "generated"``): each mask model's label maps beside
real ones with the same labels, the images each model painted on them, and the masks' anatomical plausibility.

Every image model of one DP budget paints on the same generated masks, in the same order, so one row shows the same
generated stencils under every model."""
from __future__ import annotations

from typing import Any

import numpy as np

from cmraudit.api import ReportSection
from cmraudit.data.types import PATHOLOGIES
from cmraudit.errors import RunError
from cmraudit.run.folder import load_masks

from . import figures
from .galleries import gallery_rows
from .page import fmt, ok_models

TILES = 4
PLAUSIBILITY_METRIC = "mask-plausibility"


class GeneratedMaskSection(ReportSection):
    name = "generated-masks"
    title = "Generated masks (two-stage generation)"
    order = 55

    def render(self, report) -> str:
        mask_models = {name: entry for name, entry in (report.results.get("mask_models") or {}).items()}
        if not mask_models:
            return ""  # the run conditioned on real masks: nothing to show
        parts = []
        for name, entry in mask_models.items():
            if entry.get("status") != "ok" or not (entry.get("masks") or {}).get("path"):
                parts.append(report.note(f"Mask model {name}: {entry.get('error') or 'not finished'}."))
                continue
            try:
                generated = load_masks(report.run_dir / entry["masks"]["path"], name)
            except RunError as exc:
                parts.append(report.note(str(exc)))
                continue
            painters = [m for m in ok_models(report)
                        if (report.models[m].get("samples") or {}).get("mask_model") == name]
            eps = entry.get("dp_epsilon_target")
            privacy = f"DP ε {fmt(eps)}" if eps else "no DP"
            parts.append(report.note(
                f"{name} ({entry['generator']}, {privacy}): {len(generated)} label maps drawn for the labels of the "
                f"{entry['masks'].get('labels_from', 'reference')} patients; painted by "
                f"{', '.join(painters) or 'no model yet'}."))
            parts.append(_gallery(report, generated, painters))
            table = _plausibility_table(report, painters)
            if table is not None:
                parts.append(table)
        return "".join(str(p) for p in parts)


def _gallery(report, generated, painters: list[str]) -> Any:
    """Rows by pathology: real members' masks, the generated masks, each painter's images on those masks."""
    real = report.real("members")
    samples = {m: report.samples(m) for m in painters}
    headers = ["pathology", "real masks (members)", "generated masks", *painters]
    rows = []
    for pathology in PATHOLOGIES:
        picked = gallery_rows(generated, generated.pathologies == pathology, TILES)
        if not len(picked):
            continue
        cells: list[Any] = [pathology]
        found = gallery_rows(real, real.pathologies == pathology, TILES) if real is not None else []
        cells.append(_img(figures.masks_rgb(real.masks[found].numpy())) if len(found) else "—")
        cells.append(_img(figures.masks_rgb(generated.masks[picked].numpy())))
        for model in painters:
            table = samples.get(model)
            ok = table is not None and len(table) == len(generated)
            cells.append(_img(figures.to_rgb(table.images[picked].numpy())) if ok else "—")
        rows.append(cells)
    if not rows:
        return report.note("No generated masks to show.")
    return report.part("table", headers, rows)


def _img(tiles: np.ndarray) -> Any:
    from markupsafe import Markup

    return Markup('<img src="{}" alt="masks">').format(figures.grid_uri(tiles, ncols=2))


def _plausibility_table(report, painters: list[str]) -> Any:
    """The mask-plausibility metric (identical for every painter of one mask model: same masks), generated vs real."""
    for model in painters:
        entry = (report.models[model].get("metrics") or {}).get(PLAUSIBILITY_METRIC) or {}
        if entry.get("status") != "ok":
            continue
        rows = []
        for key, value in (entry.get("values") or {}).items():
            details = value.get("details") or {}
            rows.append([key, fmt(value.get("value")), fmt(details.get("real_vs_real")),
                         details.get("description", "")])
        return report.part("table", ["check", "generated masks", "real masks", "what it measures"], rows)
    return None
