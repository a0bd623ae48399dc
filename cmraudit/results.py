"""results.json: the machine-readable outcome of a run, versioned as ``cmraudit.results/1``.

The JSON Schema in ``cmraudit/results.schema.json`` is the reference; this module builds, writes (atomically),
reads and validates documents, and derives the headline numbers the CLI table, the report and the gate share.
Non-finite floats are written as ``null`` (JSON has no infinity): an epsilon of ``null`` means "no DP".
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunError

SCHEMA_ID = "cmraudit.results/1"
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")
#: set by tests so every results file written is validated against the schema
VALIDATE_ON_WRITE = False


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def jsonable(value: Any) -> Any:
    """Plain JSON values from numpy/torch scalars and arrays, tuples, paths; non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "tolist"):  # torch tensors
        return jsonable(value.tolist())
    return str(value)


def environment(device: str, seed: int) -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "device": device,
                           "seed": seed}
    for dist in ("cmraudit", "torch", "numpy", "monai", "diffusers", "opacus", "scipy"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    try:
        import torch

        env["threads"] = torch.get_num_threads()
        env["cuda"] = torch.version.cuda
        from .training.device import cpu_has_bf16_matrix_units

        # bf16 autocast on CPUs with AMX (cmraudit.training.device): numbers differ slightly from an fp32 machine's
        env["cpu_bf16"] = cpu_has_bf16_matrix_units()
        from .run.allocator import malloc_tuned

        # speed only, never numbers: glibc's malloc keeps freed buffers for reuse (cmraudit.run.allocator)
        env["malloc_tuned"] = malloc_tuned()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return env


def new_document(config: dict[str, Any], env: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    stamp = now()
    return {"schema": SCHEMA_ID, "cmraudit": __version__, "created": stamp, "updated": stamp, "status": "running",
            "seed": config.get("seed", 0), "profile": config.get("profile"), "config": config,
            "environment": env, "data": data, "models": {}, "baselines": {}}


def new_model(name: str, generator: str, family: str, dp_epsilon: float | None) -> dict[str, Any]:
    return {"generator": generator, "family": family, "status": "pending", "error": None,
            "dp_epsilon_target": dp_epsilon,
            "stages": {"train": False, "sample": False, "audit": False},
            "training": None, "samples": None, "attacks": {}, "metrics": {}}


def write(path: Path, doc: dict[str, Any]) -> None:
    from .io import atomic_write_text

    doc["updated"] = now()
    clean = jsonable(doc)
    if VALIDATE_ON_WRITE:
        validate(clean, where=str(path))
    atomic_write_text(path, json.dumps(clean, indent=1, allow_nan=False) + "\n")


def load(path: Path | str) -> dict[str, Any]:
    """Read a results.json (or the one inside a run folder); RunError naming the file when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: no results file (has `cmraudit run` or `cmraudit audit` been run here?)") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise RunError(f"{path}: expected schema {SCHEMA_ID!r}, found {found!r}")
    return doc


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def validate(doc: dict[str, Any], where: str = "results") -> None:
    """Raise RunError with the first schema violation's location."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        loc = "/".join(str(p) for p in err.absolute_path) or "(top)"
        raise RunError(f"{where}: does not match {SCHEMA_ID} at {loc}: {err.message}")


# ------------------------------------------------------------------------------------------------ headline numbers
def tpr_at(attack: dict[str, Any], fpr: float) -> dict[str, Any] | None:
    """The attack's TPR@FPR entry for ``fpr`` (keys are strings such as "0.01"), or None when absent."""
    for key, entry in (attack.get("tpr_at_fpr") or {}).items():
        try:
            if math.isclose(float(key), fpr, rel_tol=1e-9):
                return entry
        except ValueError:
            continue
    return None


def metric_values(model: dict[str, Any], category: str | None = None) -> dict[str, dict[str, Any]]:
    """Every metric value of a model, ``name -> {value, ci, direction, metric, category}`` (ok metrics only)."""
    out: dict[str, dict[str, Any]] = {}
    for plugin, entry in (model.get("metrics") or {}).items():
        if entry.get("status") != "ok" or (category and entry.get("category") != category):
            continue
        for name, v in (entry.get("values") or {}).items():
            out[name] = {**v, "metric": plugin, "category": entry.get("category")}
    return out


def headline(model: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a reader compares first: worst MIA AUC (+ CI), its TPR@1%FPR (+ CI), epsilon, TSTR Dice, FD."""
    mias = [(n, a) for n, a in (model.get("attacks") or {}).items()
            if a.get("status") == "ok" and a.get("kind", "mia") == "mia" and a.get("auc") is not None]
    worst = max(mias, key=lambda na: na[1]["auc"], default=None)
    dp = (model.get("training") or {}).get("dp") or {}
    values = metric_values(model)
    out: dict[str, Any] = {
        "status": model.get("status"),
        "epsilon": dp.get("epsilon"),
        "worst_attack": worst[0] if worst else None,
        "auc": worst[1]["auc"] if worst else None,
        "auc_ci": worst[1].get("auc_ci") if worst else None,
        "tpr_at_1pct": (tpr_at(worst[1], 0.01) or {}).get("tpr") if worst else None,
        "tpr_at_1pct_ci": (tpr_at(worst[1], 0.01) or {}).get("ci") if worst else None,
    }
    for key in ("tstr_dice", "fd", "precision", "recall", "mask_dice"):
        out[key] = values.get(key, {}).get("value")
    return out
