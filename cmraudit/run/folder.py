"""The run folder's files: where each lives, and the format of the artifact files (samples, scores).

Layout (paths relative to the run folder)::

    config.toml                       the resolved config, written first
    split.json                        patient ids per role
    models/<model>/checkpoints/       written by cmraudit.training (resumable)
    models/<model>/training.json      written by cmraudit.training
    models/<model>/samples.npz        the synthetic set and the masks/labels that conditioned it
    models/masks*/masks.npz           a mask model's generated label maps (mask_source = "generated")
    scores/<model>/<attack>.npz       per-example membership scores (+ the attack's extra arrays)
    results.json                      rewritten atomically after every model, attack and metric
    report.html

``RunFolder`` is also how a reader (the report, a notebook) opens a finished run without running anything: its
results, its config and, when the data can still be loaded, the real slices and the split.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .. import results as R
from ..api import AttackResult, Split
from ..data.types import SliceTable
from ..errors import CmrauditError, RunError
from ..io import atomic_open, atomic_write_bytes
from .events import safe_name

SCORE_ARRAYS = ("member_scores", "nonmember_scores", "member_patients", "nonmember_patients")


class RunFolder:
    """Paths of one run folder, and read access to what it holds."""

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    @property
    def config_path(self) -> Path:
        return self.out / "config.toml"

    @property
    def split_path(self) -> Path:
        return self.out / "split.json"

    def model_dir(self, model: str) -> Path:
        return self.out / "models" / safe_name(model)

    def samples_path(self, model: str) -> Path:
        return self.model_dir(model) / "samples.npz"

    def masks_path(self, mask_model: str) -> Path:
        return self.model_dir(mask_model) / "masks.npz"

    def scores_path(self, model: str, attack: str) -> Path:
        return self.out / "scores" / safe_name(model) / f"{safe_name(attack)}.npz"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    # ------------------------------------------------------------------------------------------- reading a run
    def results(self) -> dict[str, Any]:
        return R.load(self.results_path)

    def config_text(self) -> str:
        return self.config_path.read_text() if self.config_path.exists() else ""

    def real_data(self) -> tuple[SliceTable | None, Split | None]:
        """(table, split) as the run saw them, loaded from its config.toml; (None, None) when the data is gone."""
        from ..data.sources import open_source
        from ..data.splits import load_split
        from .config import merge_layers, read_toml

        try:
            config = merge_layers([(str(self.config_path), read_toml(self.config_path))])
            return open_source(config.data).load(int(config.image_size)), load_split(self.split_path)
        except (CmrauditError, OSError):
            return None, None


# ------------------------------------------------------------------------------------------------ samples files
def save_samples(path: Path, images: np.ndarray, cond: SliceTable, mask_source: str, mask_model: str = "") -> None:
    with atomic_open(path, "wb") as fh:
        np.savez(fh, images=images, masks=cond.masks.numpy().astype(np.uint8), patients=cond.patients,
                 vendors=cond.vendors, pathologies=cond.pathologies, phases=cond.phases,
                 slice_index=cond.slice_index, mask_source=np.array(mask_source), mask_model=np.array(mask_model))


def load_samples(path: Path, model: str = "") -> SliceTable:
    """The synthetic set as a SliceTable: ``patients`` names the patient whose mask conditioned each image."""
    import torch

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = {"mask_source": str(z["mask_source"]), "model": model}
            if "mask_model" in z.files and str(z["mask_model"]):
                meta["mask_model"] = str(z["mask_model"])
            return SliceTable(torch.from_numpy(z["images"]), torch.from_numpy(z["masks"].astype(np.int64)),
                              z["patients"], z["vendors"], z["pathologies"], z["phases"], z["slice_index"],
                              source=f"synthetic:{model}", meta=meta)
    except (OSError, KeyError, ValueError) as exc:
        raise RunError(f"{path}: not a readable samples file ({exc})") from None


def save_masks(path: Path, cond: SliceTable) -> None:
    """A mask model's generated label maps with the labels they were drawn for (``patients`` names whose labels)."""
    with atomic_open(path, "wb") as fh:
        np.savez(fh, masks=cond.masks.numpy().astype(np.uint8), patients=cond.patients, vendors=cond.vendors,
                 pathologies=cond.pathologies, phases=cond.phases, slice_index=cond.slice_index)


def load_masks(path: Path, mask_model: str = "") -> SliceTable:
    """Generated masks as a SliceTable to condition on (blank images: only masks and labels are read)."""
    import torch

    try:
        with np.load(path, allow_pickle=False) as z:
            masks = torch.from_numpy(z["masks"].astype(np.int64))
            return SliceTable(torch.zeros(len(masks), 1, *masks.shape[1:]), masks, z["patients"], z["vendors"],
                              z["pathologies"], z["phases"], z["slice_index"], source=f"generated:{mask_model}",
                              meta={"mask_source": "generated", "mask_model": mask_model})
    except (OSError, KeyError, ValueError) as exc:
        raise RunError(f"{path}: not a readable masks file ({exc})") from None


# ------------------------------------------------------------------------------------------------- score files
def save_scores(result: AttackResult, path: Path | str) -> None:
    """Write a result's scores (and its extra arrays) as .npz, atomically. Patient ids are stored as unicode, so
    anyone can re-check the summary numbers from the file (e.g. with scikit-learn)."""
    arrays = {k: np.asarray(getattr(result, k)) for k in SCORE_ARRAYS}
    arrays["member_patients"] = arrays["member_patients"].astype(str)
    arrays["nonmember_patients"] = arrays["nonmember_patients"].astype(str)
    arrays["level"] = np.asarray(result.level)
    clash = set(arrays) & set(result.arrays)
    if clash:
        raise ValueError(f"extra arrays may not reuse the names {sorted(clash)}")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays, **{k: np.asarray(v) for k, v in result.arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def load_scores(path: Path | str) -> AttackResult:
    """An AttackResult rebuilt from a score file written by ``save_scores``."""
    with np.load(path, allow_pickle=False) as z:
        extra = {k: z[k] for k in z.files if k not in (*SCORE_ARRAYS, "level")}
        return AttackResult(z["member_scores"], z["nonmember_scores"], z["member_patients"],
                            z["nonmember_patients"], level=str(z["level"]) if "level" in z.files else "slice",
                            arrays=extra)
