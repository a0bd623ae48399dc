"""What is in a SliceTable: summary statistics (``cmraudit data inspect``) and a preview grid (``data preview``)."""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from .types import LABELS, SliceTable

# overlay colours per label (RGBA): RV blue, MYO green, LV red, as in most ACDC figures
OVERLAY = {1: (0.2, 0.45, 1.0, 0.45), 2: (0.2, 0.85, 0.3, 0.45), 3: (1.0, 0.25, 0.2, 0.45)}


def _counts(values: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def summarize(table: SliceTable) -> dict:
    """Patients, slices, vendors and pathologies (patients per value), label pixel fractions, size, intensities.

    Label fractions are over all pixels of all slices, so two sources with the same anatomy and field of view
    (e.g. the phantom and its ACDC export) agree up to resampling.
    """
    labels = table.patient_labels()
    per_patient = np.array([len(rows) for rows in table.patient_rows().values()])
    mask_counts = np.bincount(table.masks.reshape(-1).numpy(), minlength=len(LABELS))
    images = table.images.reshape(-1).double().numpy()
    q = np.percentile(images, [1, 50, 99])
    return {
        "source": table.source,
        "patients": len(labels),
        "slices": len(table),
        "slices_per_patient": {"min": int(per_patient.min()), "mean": round(float(per_patient.mean()), 2),
                               "max": int(per_patient.max())},
        "image_size": table.image_size,
        "vendors": _counts([v for v, _ in labels.values()]),
        "pathologies": _counts([d for _, d in labels.values()]),
        "phases": _counts(table.phases.tolist()),
        "label_fractions": {name: round(float(mask_counts[i]) / max(int(mask_counts.sum()), 1), 5)
                            for i, name in LABELS.items()},
        "intensity": {"min": round(float(images.min()), 4), "max": round(float(images.max()), 4), "mean": round(float(images.mean()), 4),
                      "std": round(float(images.std()), 4), "p01": round(float(q[0]), 4),
                      "p50": round(float(q[1]), 4), "p99": round(float(q[2]), 4)},
    }


def preview_rows(table: SliceTable, n: int) -> list[int]:
    """Up to ``n`` rows spread over patients: each patient's mid-ventricular ED slice first, then ES, then more."""
    order: dict[str, list[int]] = {}
    for patient, rows in table.patient_rows().items():
        z = table.slice_index[rows]
        middle = float(np.median(z))
        key = [(abs(float(zi) - middle), table.phases[i] != "ED") for i, zi in zip(rows, z)]
        order[patient] = [int(rows[k]) for k in sorted(range(len(rows)), key=key.__getitem__)]
    picks: list[int] = []
    # round r takes each patient's r-th row, so the first round shows one slice of every patient
    for r in range(max(len(rows) for rows in order.values())):
        for rows in order.values():
            if r < len(rows) and len(picks) < n:
                picks.append(int(rows[r]))
    return picks


def preview_png(table: SliceTable, path: Path | str, n: int = 16, columns: int | None = None) -> Path:
    """A grid of ``n`` slices (grey image, mask overlay, title patient/vendor/pathology/phase) written as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    rows = preview_rows(table, max(int(n), 1))
    cols = columns or int(np.ceil(np.sqrt(len(rows))))
    lines = int(np.ceil(len(rows) / cols))
    fig = Figure(figsize=(2.0 * cols, 2.2 * lines), dpi=100)
    FigureCanvasAgg(fig)
    overlay = ListedColormap([(0, 0, 0, 0), *[OVERLAY[k] for k in (1, 2, 3)]])
    for k in range(lines * cols):
        ax = fig.add_subplot(lines, cols, k + 1)
        ax.set_axis_off()
        if k >= len(rows):
            continue
        item = table[rows[k]]
        ax.imshow(item.image[0].numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.imshow(item.mask.numpy(), cmap=overlay, vmin=0, vmax=3, interpolation="nearest")
        ax.set_title(f"{item.patient} {item.vendor}/{item.pathology}\n{item.phase} z{item.slice_index}", fontsize=7)
    legend = "  ".join(f"{LABELS[k]}" for k in (1, 2, 3))
    fig.suptitle(f"{table.source}  ({legend}: blue, green, red)", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
