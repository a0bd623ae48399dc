"""Label probes: cheap slice features and a linear classifier that reads a slice's vendor or pathology from them.

Used by the conditional-fidelity metric (Classification Accuracy Score, Ravuri & Vinyals 2019, "label fidelity"
direction): a classifier trained on real member slices is scored on real held-out slices and on synthetic images
with the labels they were conditioned on.

Two feature sets, each read from the *image* (the mask only says where to look):

* ``style_features`` — the vendor's acquisition: intensity quantiles inside each labelled structure (grey-level
  mapping, blood–myocardium contrast, fat brightness, bias field) and quantiles of the local residual
  |image − 3×3 mean| per structure (noise level and texture). Vendors differ in exactly these knobs
  (Campello et al. 2021; ``cmraudit.data.phantom_style``).
* ``shape_features`` — the pathology's anatomy (ACDC groups are defined by it; Bernard et al. 2018): sizes of RV,
  myocardium and LV cavity, mean wall thickness and two area ratios, measured on a segmentation *of the image*
  (not on the conditioning mask, which would score the input instead of the generator), plus the cardiac phase.

The classifier is multinomial logistic regression on standardised features with an L2 penalty, fitted by L-BFGS:
deterministic, a few milliseconds, and with 35 parameters per class it cannot memorise the ~24 member patients the
way a CNN on raw pixels does.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..api import AuditContext

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
RESIDUAL_QUANTILES = (0.5, 0.9)
N_LABELS = 4  # BG, RV, MYO, LV


# ------------------------------------------------------------------------------------------------ features
BINS = 512  # histogram bins over [0, 2]: quantiles to 0.004, a tenth of the phantom's noise std


def _masked_quantiles(values: torch.Tensor, masks: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """(N, N_LABELS * len(qs)) quantiles of ``values`` (N, H, W) in [0, 2] inside each label, 0 where absent.

    From one histogram per slice and label (a scatter-add, linear in the pixels: a sort costs 4x more at 64 px):
    the quantile is the centre of the first bin whose cumulative count reaches ``q`` of the label's pixels.
    """
    n = values.shape[0]
    bins = (values.reshape(n, -1).clamp(0, 2) * (BINS / 2)).long().clamp(max=BINS - 1)
    index = masks.reshape(n, -1).long() * BINS + bins
    hist = torch.zeros(n, N_LABELS * BINS).scatter_add_(1, index, torch.ones(index.shape)).reshape(n, N_LABELS, BINS)
    cdf = torch.cumsum(hist, 2)
    counts = cdf[:, :, -1:]
    target = torch.tensor(qs)[None, None] * counts  # (N, L, Q)
    pos = torch.searchsorted(cdf, target.clamp(min=0.5)).clamp(max=BINS - 1)
    centres = (pos.float() + 0.5) * (2 / BINS)
    return torch.where(counts > 0, centres, torch.zeros_like(centres)).reshape(n, -1)


def style_features(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, 28): intensity quantiles and local-residual quantiles per structure of images (N, 1, H, W) in [-1, 1]."""
    x = images[:, 0].float()
    blur = F.avg_pool2d(F.pad(x[:, None], (1, 1, 1, 1), mode="replicate"), 3, 1)[:, 0]
    return torch.cat([_masked_quantiles(x + 1, masks, QUANTILES),
                      _masked_quantiles((x - blur).abs(), masks, RESIDUAL_QUANTILES)], 1)


def _perimeter(region: torch.Tensor) -> torch.Tensor:
    """Pixel edges between ``region`` (N, H, W) bool and the rest (4-neighbourhood), per slice."""
    r = F.pad(region.float()[:, None], (1, 1, 1, 1))[:, 0]
    inner = r[:, 1:-1, 1:-1]
    outside = 4 - r[:, :-2, 1:-1] - r[:, 2:, 1:-1] - r[:, 1:-1, :-2] - r[:, 1:-1, 2:]
    return (inner * outside).sum((1, 2))


def shape_features(masks: torch.Tensor, phases: np.ndarray) -> torch.Tensor:
    """(N, 7) from a segmentation (N, H, W): sqrt areas of RV, MYO, LV; wall thickness (MYO area over the mean of
    endo- and epicardial perimeters); RV/LV and LV/(LV + MYO) areas; 1 for end-systole."""
    area = torch.stack([(masks == label).float().sum((1, 2)) for label in (1, 2, 3)], 1)
    endo, epi = _perimeter(masks == 3), _perimeter((masks == 3) | (masks == 2))
    es = torch.from_numpy((np.asarray(phases) == "ES").astype(np.float32))
    return torch.stack([area[:, 0].sqrt(), area[:, 1].sqrt(), area[:, 2].sqrt(), area[:, 1] / ((endo + epi) / 2 + 1),
                        area[:, 0] / (area[:, 2] + 1), area[:, 2] / (area[:, 1] + area[:, 2] + 1), es], 1)


# ------------------------------------------------------------------------------------------------ the classifier
@dataclass
class LinearProbe:
    """Multinomial logistic regression on standardised features (classes: the labels seen in training, sorted)."""

    classes: list[str]
    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor  # (features, classes)
    bias: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: np.ndarray, l2: float = 0.02, max_iter: int = 200) -> "LinearProbe":
        """Minimise mean cross-entropy + ``l2 / 2 * |W|^2`` with L-BFGS (full batch: deterministic, no seed)."""
        classes = sorted(set(np.asarray(labels).tolist()))
        if len(classes) < 2:
            raise ValueError(f"a probe needs two classes or more, got {classes}")
        x = features.double()
        mean, scale = x.mean(0), x.std(0).clamp(min=1e-6)
        z = (x - mean) / scale
        y = torch.tensor([classes.index(v) for v in np.asarray(labels).tolist()])
        w = torch.zeros(z.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z @ w + b, y) + 0.5 * l2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(classes, mean, scale, w.detach(), b.detach())

    def predict(self, features: torch.Tensor) -> np.ndarray:
        if len(features) == 0:
            return np.asarray([], dtype=str)
        logits = ((features.double() - self.mean) / self.scale) @ self.weight + self.bias
        return np.asarray(self.classes)[logits.argmax(1).numpy()]

    def state(self) -> dict[str, Any]:
        return {"classes": self.classes, "mean": self.mean, "scale": self.scale, "weight": self.weight,
                "bias": self.bias}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "LinearProbe":
        return cls(list(state["classes"]), state["mean"], state["scale"], state["weight"], state["bias"])


# ------------------------------------------------------------------------------------------------ scores
def _balanced(truth: np.ndarray, guess: np.ndarray) -> float:
    """Mean recall over the classes present in ``truth`` (scikit-learn's balanced accuracy)."""
    return float(np.mean([np.mean(guess[truth == c] == c) for c in np.unique(truth)]))


def label_scores(truth: np.ndarray, guess: np.ndarray, patients: np.ndarray, classes: list[str], n_boot: int,
                 seed: int) -> dict[str, Any]:
    """Slice accuracy and balanced accuracy, recall per class, chance level, and 95% CIs from a patient bootstrap.

    Slices of one patient share its scanner and anatomy, so patients (not slices) are resampled. ``chance`` is
    1 / the number of classes the probe knows: the balanced accuracy of a guess that ignores the image, and about
    the accuracy of one that returns a single class when the classes are balanced (``majority_share`` is the exact
    accuracy of always guessing the most frequent class of ``truth``).
    """
    truth, guess, patients = np.asarray(truth), np.asarray(guess), np.asarray(patients)
    correct = truth == guess
    groups = [np.flatnonzero(patients == p) for p in dict.fromkeys(patients.tolist())]
    acc_ci = bal_ci = None
    if len(groups) >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        accs, bals = [], []
        for _ in range(n_boot):
            rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
            accs.append(correct[rows].mean())
            bals.append(_balanced(truth[rows], guess[rows]))
        acc_ci = tuple(float(v) for v in np.percentile(accs, [2.5, 97.5]))
        bal_ci = tuple(float(v) for v in np.percentile(bals, [2.5, 97.5]))
    values, counts = np.unique(truth, return_counts=True)
    return {"accuracy": float(correct.mean()), "accuracy_ci": acc_ci,
            "balanced_accuracy": _balanced(truth, guess), "balanced_accuracy_ci": bal_ci,
            "per_class": {str(c): {"recall": float(np.mean(guess[truth == c] == c)), "n": int(np.sum(truth == c))}
                          for c in values},
            "chance": 1.0 / len(classes), "majority_share": float(counts.max() / counts.sum()),
            "n_slices": int(len(truth)), "n_patients": len(groups)}


def separates(scores: dict[str, Any]) -> bool:
    """True when the balanced accuracy's CI lies above chance (a probe that can tell the classes apart)."""
    ci = scores.get("balanced_accuracy_ci")
    return ci is not None and ci[0] > scores["chance"]


# ------------------------------------------------------------------------------------------------ run cache
def cached(ctx: "AuditContext", name: str, key: str, build: Callable[[], Any]) -> Any:
    """``build()`` once per run: memoised in ``ctx.cache`` and saved atomically as ``<name>-<key>.pt`` in the run's
    cache folder (``cmraudit.measure.segmenter.cache_dir``), like ``real_segmenter``; a stale or broken file is
    rebuilt. ``build`` returns tensors, numbers, strings, lists and dicts."""
    from ..io import atomic_open
    from .segmenter import cache_dir

    memo = f"{name}:{key}"
    if memo in ctx.cache:
        return ctx.cache[memo]
    path = cache_dir(ctx) / f"{name}-{key}.pt"
    value = None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        value = blob["value"] if blob.get("fingerprint") == key else None
    except Exception:  # noqa: BLE001 - a cache entry is only a speed-up: missing, stale or broken means rebuild
        value = None
    if value is None:
        value = build()
        with atomic_open(path, "wb") as fh:
            torch.save({"fingerprint": key, "value": value}, fh)
    ctx.cache[memo] = value
    return value


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (cache keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
