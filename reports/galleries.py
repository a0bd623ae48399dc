"""The picture sections of report.html: ROC curves, distance histograms, galleries and image pairs.

Real patient pixels go through ``Report.real_tiles`` and paired synthetic images through
``Report.paired_synthetic_tiles``, which apply the redaction of a ``--redact`` report.
"""
from __future__ import annotations

import numpy as np

from cmraudit.api import ReportSection
from cmraudit.data.types import PATHOLOGIES, VENDORS

from . import figures
from .page import fmt, ok_models

GALLERY_TILES = 4  # per cell, as a 2 x 2 grid
PAIRS_SHOWN = 6


class RocSection(ReportSection):
    name = "roc"
    title = "ROC and log-ROC per model"
    order = 30

    def render(self, report) -> str:
        from cmraudit.stats import roc_curve

        items = []
        for model in ok_models(report):
            curves = []
            for attack, entry in (report.models[model].get("attacks") or {}).items():
                result = report.scores(model, attack) if entry.get("kind", "mia") == "mia" else None
                if result is not None:
                    fpr, tpr, _ = roc_curve(result.member_scores, result.nonmember_scores)
                    curves.append((f"{attack} (AUC {fmt(entry.get('auc'))})", fpr, tpr))
            if curves:
                items.append({"caption": model, "uri": figures.roc_uri(curves, model)})
        if not items:
            return report.note("No membership-inference scores to plot.")
        return report.part("figures", items)


class DcrSection(ReportSection):
    name = "dcr"
    title = "Distance to closest record: members vs non-members"
    order = 40

    def render(self, report) -> str:
        items = []
        for model in ok_models(report):
            found = _memorization_arrays(report, model, "dcr_train_")
            if found is not None:
                attack, arrays = found
                for space in ("pixel", "encoder"):
                    if f"dcr_train_{space}" in arrays and f"dcr_holdout_{space}" in arrays:
                        items.append({"caption": f"{model} · {attack}: for each synthetic image, the distance to the "
                                                 f"nearest member vs the nearest non-member ({space} space)",
                                      "uri": figures.histogram_uri(
                                          arrays[f"dcr_train_{space}"], arrays[f"dcr_holdout_{space}"],
                                          f"{model} ({space})", "distance to closest record",
                                          ("to nearest member", "to nearest non-member"))})
                continue
            d = closest_synthetic(report, model)
            if d is not None:
                items.append({"caption": f"{model}: for each real slice, the pixel-space distance (l2 / √(HW)) to its "
                                         f"nearest synthetic image (no memorisation attack ran)",
                              "uri": figures.histogram_uri(d["member_dcr"], d["nonmember_dcr"], model,
                                                           "distance to closest synthetic",
                                                           ("members", "non-members"))})
        if not items:
            return report.note("Needs a memorisation attack's distances, or the real data and each model's samples; "
                               "none was available.")
        return report.render("dcr.html", figures=report.part("figures", items))


def _memorization_arrays(report, model: str, prefix: str) -> tuple[str, dict[str, np.ndarray]] | None:
    """(attack name, saved arrays) of the model's first memorisation attack that saved an array named ``prefix``...
    (image attacks save distances and pairs; the mask attack saves other arrays)."""
    for attack, entry in (report.models[model].get("attacks") or {}).items():
        if entry.get("kind") == "memorization":
            result = report.scores(model, attack)
            if result is not None and any(name.startswith(prefix) for name in result.arrays):
                return attack, result.arrays
    return None


class GallerySection(ReportSection):
    name = "gallery"
    title = "Real and synthetic images by vendor and pathology"
    order = 50

    def render(self, report) -> str:
        synthetic = {m: report.samples(m) for m in ok_models(report)}
        synthetic = {m: t for m, t in synthetic.items() if t is not None and len(t)}
        if not synthetic:
            return report.note("No synthetic samples to show.")
        # real: members first (what the models learned from), else any real slice with the label
        pools = [t for t in (report.real("members"), report.table) if t is not None]
        rows = []
        for column, label, values in (("vendors", "vendor", VENDORS), ("pathologies", "pathology", PATHOLOGIES)):
            for value in values:
                cells = {m: _tiles_uri(figures.to_rgb(t.images[_first(t, column, value)].numpy()))
                         for m, t in synthetic.items() if len(_first(t, column, value))}
                if not cells:
                    continue
                real_uri = None
                for pool in pools:
                    found = _first(pool, column, value)
                    if len(found):
                        real_uri = _tiles_uri(report.real_tiles(pool.images[found].numpy(), pool.masks[found].numpy()))
                        break
                rows.append({"label": f"{label} {value}", "real": real_uri,
                             "models": [cells.get(m) for m in synthetic]})
        return report.render("gallery.html", models=list(synthetic), rows=rows,
                             texture=[_texture(report, m) for m in synthetic])


def _texture(report, model: str) -> str | None:
    """The fidelity metric's fine-texture power ratio (synthetic over real) as the gallery's last row reads it."""
    from cmraudit import results as R

    value = R.metric_values(report.models[model]).get("fine_texture_gap")
    ratio = ((value or {}).get("details") or {}).get("ratio")
    if ratio is None:
        return None
    return f"{fmt(ratio, 2)}× ({'grainier' if ratio > 1 else 'smoother'})"


def _first(table, column: str, value: str) -> np.ndarray:
    return gallery_rows(table, getattr(table, column) == value)


def gallery_rows(table, selected: np.ndarray, n: int = GALLERY_TILES) -> np.ndarray:
    """Up to ``n`` of the ``selected`` rows, one per patient (its mid-ventricular slice, ED first), so a gallery cell
    shows several patients rather than neighbouring slices of one; rows of one patient fill in when fewer exist."""
    rows = np.flatnonzero(selected)
    if len(rows) <= n:
        return rows
    picked = []
    for patient in dict.fromkeys(table.patients[rows].tolist()):  # in table order
        own = rows[table.patients[rows] == patient]
        ed = own[table.phases[own] == "ED"]
        own = ed if len(ed) else own
        own = own[np.argsort(table.slice_index[own], kind="stable")]
        picked.append(int(own[len(own) // 2]))
        if len(picked) == n:
            return np.asarray(picked)
    rest = [r for r in rows.tolist() if r not in set(picked)]
    return np.asarray(picked + rest[:n - len(picked)])


def _tiles_uri(tiles: np.ndarray) -> str:
    return figures.grid_uri(tiles, ncols=2)


class MemorisationSection(ReportSection):
    name = "memorisation"
    title = "Closest training / synthetic pairs"
    order = 60

    def render(self, report) -> str:
        blocks = []
        members = report.real("members")
        for model in ok_models(report):
            found = _memorization_arrays(report, model, "pairs_train")
            if found is not None and len(found[1]["pairs_train"]):
                attack, arrays = found
                pairs = (report.models[model]["attacks"][attack].get("details") or {}).get("pairs") or []
                rows = arrays.get("pairs_train_index")
                masks = members.masks[rows[:PAIRS_SHOWN]].numpy() if members is not None and rows is not None else None
                real = arrays["pairs_train"][:PAIRS_SHOWN, None].astype(np.float32)
                synthetic = arrays["pairs_synthetic"][:PAIRS_SHOWN, None].astype(np.float32)
                labels = [(p.get("train_patient", "?"), f"{fmt(p.get('near_copy_distance'))}, ratio "
                                                        f"{fmt(p.get('ratio'))}") for p in pairs[:PAIRS_SHOWN]]
                source = f"{model} · {attack} (lowest nearest/second-nearest ratio first)"
            else:
                d = closest_synthetic(report, model)
                if d is None:
                    continue
                order = np.argsort(d["member_dcr"])[:PAIRS_SHOWN]
                real, masks = members.images[order].numpy(), members.masks[order].numpy()
                synthetic = report.samples(model).images[d["member_nn"][order]].numpy()
                labels = [(str(members.patients[i]), fmt(d["member_dcr"][i])) for i in order]
                source = f"{model} (pixel space; no memorisation attack ran)"
            blocks.append({"model": source, "uri": figures.grid_uri(_pair_tiles(report, real, masks, synthetic), 2),
                           "pairs": labels})
        if not blocks:
            return report.note("Needs a memorisation attack's pairs, or the real data and each model's samples; "
                               "none was available.")
        return report.render("pairs.html", blocks=blocks, left="training slice", right="nearest synthetic image",
                             intro="The synthetic images closest to a training slice. Near-identical pairs mean the "
                                   "model reproduces a patient.")


def _pair_tiles(report, real: np.ndarray, masks: np.ndarray | None, synthetic: np.ndarray) -> np.ndarray:
    """Interleaved (real, synthetic) tiles; redaction shows masks (or, without them, a heavy blur) for real slices."""
    if report.redact and masks is None:
        real_tiles = figures.blur_rgb(figures.to_rgb(real))
    else:
        real_tiles = report.real_tiles(real, masks)
    tiles = np.stack([real_tiles, report.paired_synthetic_tiles(synthetic)], 1)
    return tiles.reshape(-1, *tiles.shape[2:])


class ReplaySection(ReportSection):
    name = "replay"
    title = "Stencil replay: a member's own mask in, the member's image out?"
    order = 70

    def render(self, report) -> str:
        blocks = []
        for model in ok_models(report):
            for attack, entry in (report.models[model].get("attacks") or {}).items():
                result = report.scores(model, attack) if entry.get("kind") == "replay" else None
                arrays = getattr(result, "arrays", None) or {}
                if "pairs_real" not in arrays or "pairs_output" not in arrays or not len(arrays["pairs_real"]):
                    continue
                real = arrays["pairs_real"][:PAIRS_SHOWN, None].astype(np.float32)
                masks = arrays["pairs_mask"][:PAIRS_SHOWN].astype(np.int64) if "pairs_mask" in arrays else None
                output = arrays["pairs_output"][:PAIRS_SHOWN, None].astype(np.float32)
                pairs = (entry.get("details") or {}).get("pairs") or []
                blocks.append({"model": f"{model} · {attack}", "uri": figures.grid_uri(_pair_tiles(report, real, masks, output), 2),
                               "pairs": [(p.get("patient", "?"), fmt(p.get("pixel_distance"))) for p in pairs[:PAIRS_SHOWN]]})
        if not blocks:
            return report.note("No replay attack saved image pairs for any model.")
        return report.render("pairs.html", blocks=blocks, left="member's real slice", right="generated from its mask",
                             intro="Each member's own mask was given to the generator; a match means the mask alone "
                                   "replays the patient.")


def closest_synthetic(report, model: str) -> dict[str, np.ndarray] | None:
    """For every member and non-member slice: the pixel distance to, and index of, its nearest synthetic image.

    The fallback when no memorisation attack saved its distances. Exact search as one matrix product per role
    (|a - b|² = |a|² + |b|² - 2ab); the report's sets are small (hundreds of slices). Memoised per report."""
    key = f"dcr:{model}"
    if key in report.cache:
        return report.cache[key]
    synthetic, members, nonmembers = report.samples(model), report.real("members"), report.real("nonmembers")
    if synthetic is None or members is None or not len(members) or not len(nonmembers) or not len(synthetic):
        report.cache[key] = None
        return None
    syn = synthetic.images.flatten(1).double()
    out: dict[str, np.ndarray] = {}
    for role, table in (("member", members), ("nonmember", nonmembers)):
        real = table.images.flatten(1).double()
        d2 = (real.pow(2).sum(1, keepdim=True) + syn.pow(2).sum(1) - 2 * real @ syn.T).clamp_min(0)
        dist, idx = d2.min(1)
        out[f"{role}_dcr"] = (dist.sqrt() / np.sqrt(syn.shape[1])).numpy()
        out[f"{role}_nn"] = idx.numpy()
    report.cache[key] = out
    return out
