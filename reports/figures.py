"""Pictures for report.html as ``data:`` URIs (PNG), so the report is one file that opens offline.

Plots use matplotlib's object API (``Figure``, Agg canvas) rather than pyplot: no global state, no GUI backend.
Image grids are assembled in numpy and written with ``matplotlib.image.imsave``, which is much faster than a
figure per grid.
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

#: label colours (BG, RV, MYO, LV) for mask images: the redacted stand-in for real patient pixels
LABEL_RGB = np.array([[0.08, 0.08, 0.10], [0.85, 0.30, 0.25], [0.30, 0.65, 0.35], [0.25, 0.45, 0.90]])


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)  # fixed margins: bbox_inches="tight" would draw everything twice
    return png_uri(buf.getvalue())


def new_figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.subplots_adjust(left=0.75 / width, right=0.97, bottom=0.16, top=0.9, wspace=0.32)
    return fig, axes


def to_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] → (N, H, W, 3) in [0, 1]."""
    g = (np.clip(np.asarray(images, dtype=np.float32)[:, 0], -1, 1) + 1) / 2
    return np.repeat(g[..., None], 3, axis=-1)


def masks_rgb(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) labels → (N, H, W, 3) colours."""
    return LABEL_RGB[np.clip(np.asarray(masks, dtype=np.int64), 0, len(LABEL_RGB) - 1)]


def blur_rgb(rgb: np.ndarray, fraction: float = 0.15) -> np.ndarray:
    """A Gaussian blur with sigma = ``fraction`` of the image size: anatomy beyond recognition, layout kept."""
    from scipy.ndimage import gaussian_filter

    sigma = max(1.0, fraction * rgb.shape[1])
    return gaussian_filter(rgb, sigma=(0, sigma, sigma, 0))


def grid_uri(tiles: np.ndarray, ncols: int, scale: int = 2, pad: int = 2) -> str:
    """(N, H, W, 3) tiles → one PNG grid with ``ncols`` columns, upscaled by ``scale`` (nearest neighbour)."""
    from matplotlib.image import imsave

    tiles = np.asarray(tiles, dtype=np.float32)
    n, h, w, _ = tiles.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    canvas = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tile
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    imsave(buf, np.clip(canvas, 0, 1), format="png")
    return png_uri(buf.getvalue())


def roc_uri(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str) -> str:
    """Linear ROC and log-log ROC side by side (Carlini et al. 2022 argue for the log scale: the low-FPR end is
    where an attack that confidently identifies a few patients shows)."""
    fig, (lin, log) = new_figure(8.4, 3.6, ncols=2)
    floor = 1e-3
    for label, fpr, tpr in curves:
        lin.plot(fpr, tpr, label=label, lw=1.4)
        keep = fpr > 0
        log.plot(np.maximum(fpr[keep], floor), np.maximum(tpr[keep], floor), lw=1.4)
    for ax, scale in ((lin, "linear"), (log, "log")):
        ax.plot([floor if scale == "log" else 0, 1], [floor if scale == "log" else 0, 1], ls="--", c="grey", lw=0.8)
        ax.set_xscale(scale)
        ax.set_yscale(scale)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
    lin.set_title(f"{title}: ROC", fontsize=10)
    log.set_title(f"{title}: log-log ROC", fontsize=10)
    lin.legend(fontsize=7, loc="lower right")
    return figure_uri(fig)


def histogram_uri(members: np.ndarray, nonmembers: np.ndarray, title: str, xlabel: str,
                  labels: tuple[str, str] = ("members", "non-members")) -> str:
    fig, (ax,) = new_figure(4.6, 3.0)
    both = np.concatenate([members, nonmembers])
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 30)
    ax.hist(nonmembers, bins=bins, alpha=0.55, density=True, label=f"{labels[1]} (n={len(nonmembers)})")
    ax.hist(members, bins=bins, alpha=0.55, density=True, label=f"{labels[0]} (n={len(members)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return figure_uri(fig)


def frontier_uri(points: Sequence[tuple[str, float, float, bool]], xlabel: str, ylabel: str) -> str:
    """Privacy risk (x, lower is better) against utility (y, higher is better), one dot per model; the Pareto
    frontier joins the models no other model beats on both axes. Green dots pass the policy, red ones fail."""
    fig, (ax,) = new_figure(5.6, 3.8)
    for name, x, y, ok in points:
        ax.scatter([x], [y], c="#2a9d3a" if ok else "#c0392b", s=36, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    frontier, best = [], -np.inf
    for _, x, y, _ in sorted(points, key=lambda p: (p[1], -p[2])):
        if y > best:
            frontier.append((x, y))
            best = y
    if len(frontier) > 1:
        ax.step(*zip(*frontier), where="post", c="grey", lw=1, ls="--", label="Pareto frontier")
        ax.legend(fontsize=7)
    ax.axvline(0.5, c="grey", lw=0.6, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return figure_uri(fig)
