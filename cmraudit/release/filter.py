"""The privacy filter: drop every synthetic image an attack flagged as a copy of, or a pointer to, a training patient.

Two attacks flag single synthetic images, each in its score file (``scores/<model>/<attack>.npz``), one entry per
image in the samples' order:

    memorization       ``memorised``          a (near-)copy of one training patient's slice (ratio d1/d2 < 1/3 in
                                              pixel or shift/flip/intensity-robust near-copy space)
    reidentification   ``synthetic_flagged``  the image re-identifies a training patient
    mask-memorization  ``mask_replayed``      (generated masks) its mask replays a training patient's anatomy

The filter uses whichever of them ran for the model (status ``ok`` in results.json) and says which did not, and
why; with neither there is nothing to filter on, a usage error naming the audit command that runs them. An image
is removed when any attack that ran flags it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RunError, UsageError

#: attack -> (its per-synthetic-image flag array, what a flag means)
FILTER_ATTACKS: dict[str, tuple[str, str]] = {
    "memorization": ("memorised", "a (near-)copy of a training patient's slice"),
    "reidentification": ("synthetic_flagged", "re-identifies a training patient"),
    "mask-memorization": ("mask_replayed", "its generated mask replays a training patient's anatomy"),
}
#: filtering attacks that only concern a synthetic set drawn on generated masks (mask_source = "generated")
GENERATED_MASKS_ONLY = frozenset({"mask-memorization"})
AUDIT_COMMAND = "cmraudit audit {run} --attack memorization,reidentification"


@dataclass
class FilterResult:
    """Which images stay (``keep``), and why the others went."""

    n: int
    flags: dict[str, np.ndarray]  # attack that ran -> bool per synthetic image
    not_run: dict[str, str] = field(default_factory=dict)  # attack -> why it did not contribute

    @property
    def removed_mask(self) -> np.ndarray:
        out = np.zeros(self.n, bool)
        for flagged in self.flags.values():
            out |= flagged
        return out

    @property
    def keep(self) -> np.ndarray:
        return ~self.removed_mask

    @property
    def removed(self) -> int:
        return int(self.removed_mask.sum())

    @property
    def removed_share(self) -> float:
        return self.removed / self.n if self.n else 0.0

    def summary(self) -> dict[str, Any]:
        """What the filter did, as the datasheet records it (counts only: no image, no patient)."""
        by_attack = {a: int(f.sum()) for a, f in self.flags.items()}
        count = np.zeros(self.n, int)
        for flagged in self.flags.values():
            count += flagged
        only = {a: int((f & (count == 1)).sum()) for a, f in self.flags.items()}
        several = int((count > 1).sum())
        return {"applied": True, "attacks_used": sorted(self.flags), "attacks_not_run": dict(self.not_run),
                "meaning": {a: FILTER_ATTACKS[a][1] for a in sorted(self.flags)},
                "images": self.n, "removed": self.removed, "removed_share": round(self.removed_share, 4),
                "kept": self.n - self.removed, "flagged_by": by_attack, "flagged_only_by": only,
                "flagged_by_several": several}

    def describe(self) -> str:
        """One line: ``removed 70 of 76 synthetic images (92.1%): memorization 70; reidentification did not run``"""
        parts = [f"{a} {int(f.sum())}" for a, f in self.flags.items()]
        text = f"removed {self.removed} of {self.n} synthetic images ({100 * self.removed_share:.1f}%)"
        if parts:
            text += ": flagged by " + ", ".join(parts)
        if self.not_run:
            text += "; not run: " + ", ".join(f"{a} ({why})" for a, why in self.not_run.items())
        return text


def _why_not(entry: dict[str, Any] | None) -> str | None:
    if entry is None:
        return "not in this audit"
    status = entry.get("status")
    if status == "ok":
        return None
    if status == "skipped":
        return f"skipped: {entry.get('reason') or 'no reason recorded'}"
    if status == "failed":
        return f"failed: {entry.get('error') or 'no error recorded'}"
    return f"status {status}"


def _flags(path: Path, array: str, n: int, attack: str, rerun: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if array not in z.files:
                raise RunError(f"{path}: no {array!r} array (an older {attack} score file?); re-run it with "
                               f"`{rerun} --force`")
            flags = np.asarray(z[array]).astype(bool).reshape(-1)
    except OSError as exc:
        raise RunError(f"{path}: cannot read the {attack} scores ({exc}); re-run it with `{rerun} --force`") from None
    if len(flags) != n:
        raise RunError(f"{path}: {len(flags)} {array} flags for {n} synthetic images (scores from another sample?); "
                       f"re-run it with `{rerun} --force`")
    return flags


def privacy_filter(run_dir: Path | str, model_entry: dict[str, Any], scores_path: Any, n: int) -> FilterResult:
    """Flags of every filtering attack that ran for the model. ``scores_path(attack)`` is the score file's default
    location (``RunFolder(run).scores_path(model, attack)``); ``n`` the number of synthetic images."""
    run_dir = Path(run_dir)
    attacks = model_entry.get("attacks") or {}
    flags: dict[str, np.ndarray] = {}
    not_run: dict[str, str] = {}
    generated = (model_entry.get("samples") or {}).get("mask_source") == "generated"
    for attack, (array, _) in FILTER_ATTACKS.items():
        if attack in GENERATED_MASKS_ONLY and not generated:
            continue  # real stencils: no generated mask to replay anything, nothing to say
        entry = attacks.get(attack)
        why = _why_not(entry)
        if why is not None:
            not_run[attack] = why
            continue
        path = run_dir / entry["scores"] if entry.get("scores") else Path(scores_path(attack))
        flags[attack] = _flags(path, array, n, attack, f"cmraudit audit {run_dir} --attack {attack}")
    if not flags:
        reasons = "; ".join(f"{a}: {why}" for a, why in not_run.items())
        raise UsageError(f"--filter needs the memorization or reidentification attack's flags and this model has "
                         f"neither ({reasons}); run `{AUDIT_COMMAND.format(run=run_dir)}` first")
    return FilterResult(n, flags, not_run)
