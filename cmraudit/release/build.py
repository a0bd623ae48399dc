"""``cmraudit release``: gate, filter, export and document one model's synthetic cohort, all or nothing.

    release_model(run_dir, model, filter=True)   ->  RUN/release/<model>/
        cohort/patient001/...                        the synthetic patients, ACDC layout (cmraudit.data.export)
        datasheet.json, datasheet.md                 what it is, where it came from, what the audit said
        report-redacted.html                         the run's report without real patient pixels or ids

Steps: the policy's verdict on the model (``gate_check``; refused unless it passes or ``force``), the privacy filter
(``filter``) and the fidelity/utility metrics again on what it kept (``remeasure``), the synthetic patients
(``cohort``), the datasheet (``datasheet``). Everything is written into a temporary folder beside the target, which
then replaces the target in one rename: a release folder is never half-written, and a re-run replaces the previous
release completely. An existing target that is not a release (no datasheet.json) is never replaced.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from .. import results as R
from ..data.export import export_acdc
from ..data.preprocess import FOV_MM
from ..data.splits import load_split
from ..errors import RunError
from ..gate import Policy, load_policy
from ..io import atomic_write_text
from ..run.events import safe_name
from ..run.folder import RunFolder, load_samples
from .cohort import NOMINAL_SLICE_SPACING, Cohort, build_cohort
from .datasheet import (
    DATASHEET_SCHEMA,
    attack_records,
    render_markdown,
    rule_record,
    scrub,
    to_json,
)
from .filter import FilterResult, privacy_filter
from .gate_check import GateCheck, check_gate
from .remeasure import before_after, remeasure

COHORT_DIR = "cohort"
ROLE_WORDS = {"reference": "reference patients (real patients who were not trained on)",
              "nonmembers": "non-member patients (real patients who were not trained on)",
              "test": "test patients (real patients who were not trained on)",
              "members": "MEMBER patients (the very patients the model was trained on)"}


@dataclass
class ReleaseResult:
    out: Path
    gate: GateCheck
    filter: FilterResult | None
    cohort: Cohort
    datasheet: dict[str, Any]

    @property
    def cohort_dir(self) -> Path:
        return self.out / COHORT_DIR


def masks_statement(mask_source: str, n_patients: int) -> str:
    if mask_source == "generated":
        return ("The `_gt` masks are synthetic: a mask model trained on the member patients' masks generated them "
                "(two-stage generation, mask source `generated`), drawn for the vendor, pathology, phase and slice "
                f"labels of {n_patients} real patients who were not trained on. No real patient's mask is in the "
                "cohort; the mask model's privacy was audited with the images (mask memorisation).")
    who = ROLE_WORDS.get(mask_source, f"`{mask_source}` patients")
    return (f"The `_gt` masks are the masks (anatomical stencils) that conditioned the synthetic images. They are "
            f"NOT synthetic: they are the real segmentation masks of the run's {who}, {n_patients} real patients "
            f"(mask source `{mask_source}`), as the audit cropped and resampled them. Each synthetic patient has a "
            f"real patient's anatomy; only the images are generated. Treat the masks as patient data.")


def default_out(run_dir: Path | str, model: str) -> Path:
    return Path(run_dir) / "release" / safe_name(model)


def _check_target(target: Path, run_dir: Path) -> None:
    resolved, run = target.resolve(), run_dir.resolve()
    if resolved == run or run.is_relative_to(resolved):
        raise RunError(f"--out {target}: would replace the run folder {run_dir}; choose another folder")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and
                                                    not (target / "datasheet.json").is_file())):
        raise RunError(f"--out {target}: exists and is not a cmraudit release (no datasheet.json); a release "
                       f"replaces its folder completely, so choose a new or empty folder")


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` (both in the same folder): two renames, the old release deleted after."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "release")
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old / "release", target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _versions(doc: dict[str, Any]) -> dict[str, Any]:
    import platform

    import torch

    audit = dict(doc.get("environment") or {})
    audit.setdefault("cmraudit", doc.get("cmraudit"))
    return {"audit": audit, "release": {"cmraudit": __version__, "torch": torch.__version__,
                                        "python": platform.python_version()}}


def build_datasheet(doc: dict[str, Any], model: str, check: GateCheck, policy: Policy, filt: FilterResult | None,
                    after: dict[str, Any] | None, cohort: Cohort, mask_source: str, n_mask_patients: int,
                    command: str, image_size: int, target: Path) -> dict[str, Any]:
    entry = doc["models"][model]
    training = entry.get("training") or {}
    data = doc.get("data") or {}
    versions = _versions(doc)
    spacing = FOV_MM / image_size
    return R.jsonable({
        "schema": DATASHEET_SCHEMA,
        "release": {"model": model, "date": R.now(), "command": command, "cmraudit": __version__,
                    "torch": versions["release"]["torch"], "run_created": doc.get("created"),
                    "forced": check.forced,
                    "report": "report-redacted.html: the run's report (every model of the run) without real patient "
                              "pixels (real slices as masks, paired synthetic images blurred) and with real patient "
                              "ids replaced by [patient]"},
        "generator": {"model": model, "generator": entry.get("generator"), "family": entry.get("family"),
                      "steps": training.get("steps"), "seconds": training.get("seconds"),
                      "device": training.get("device"), "generator_config": training.get("generator_config"),
                      "train_config": training.get("train_config"), "profile": doc.get("profile"),
                      "seed": doc.get("seed")},
        "training_data": {"source": data.get("source"), "image_size": data.get("image_size"),
                          "patients": data.get("split") or {}, "slices": data.get("split_slices") or {},
                          "by_vendor": data.get("by_vendor") or {}, "by_pathology": data.get("by_pathology") or {},
                          "trained_on": "the members (and the canaries drawn in), plus public pretraining data for "
                                        "DP models"},
        "privacy": {"dp": training.get("dp"), "dp_epsilon_target": entry.get("dp_epsilon_target"),
                    "public_pretraining": training.get("public_pretraining"),
                    "canaries": data.get("canaries"), "canaries_trained_on": training.get("canaries"),
                    "cohort": (entry.get("samples") or {}).get("privacy")},
        "audit": {"outcome": check.outcome, "policy": check.policy, "on_inconclusive": check.on_inconclusive,
                  "forced": check.forced, "blocking_rules": [rule_record(r) for r in check.blocking],
                  "rules": [rule_record(r) for r in check.rules],
                  "attacks": attack_records(entry, policy, model)},
        "filter": filt.summary() if filt is not None else {"applied": False},
        "metrics": before_after(entry, after),
        "cohort": {**cohort.summary(), "folder": COHORT_DIR,
                   "inspect": f"cmraudit data inspect acdc:{target / COHORT_DIR} --json",
                   "layout": "ACDC (patientNNN/Info.cfg, _frame01 = ED, _frame02 = ES, NIfTI images and _gt masks)",
                   "image_size": image_size,
                   "ids": f"{cohort.id_prefix}001… in a seeded random order: no link to any real patient's id",
                   "spacing_mm": [spacing, spacing, NOMINAL_SLICE_SPACING],
                   "mask_source": mask_source, "masks_statement": masks_statement(mask_source, n_mask_patients)},
        "versions": versions,
    })


def release_model(run_dir: Path | str, model: str, *, filter: bool = False, out: Path | str | None = None,
                  force: bool = False, policy: Policy | Path | str | None = None, command: str | None = None,
                  progress: Callable[[str], None] | None = None) -> ReleaseResult:
    """Gate, (filter,) export and document ``model``'s synthetic set; see the module docstring."""
    folder = RunFolder(run_dir)
    if not folder.results_path.is_file():
        raise RunError(f"{run_dir}: no results.json (not a run folder, or not audited yet)")
    doc = folder.results()
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    check = check_gate(doc, model, pol, force=force, run=str(run_dir))
    entry = doc["models"][model]
    target = Path(out) if out is not None else default_out(run_dir, model)
    _check_target(target, folder.out)
    samples = load_samples(folder.samples_path(model), model)
    filt = privacy_filter(folder.out, entry, lambda a: folder.scores_path(model, a), len(samples)) if filter else None
    keep = filt.keep if filt is not None else np.ones(len(samples), bool)
    if filt is not None and progress:
        progress(filt.describe())
    if not keep.any():
        raise RunError(f"model {model}: the privacy filter {filt.describe() if filt else ''}: nothing to release")
    split = load_split(folder.split_path)
    real_ids = {*split.members, *split.nonmembers, *split.reference, *split.test, *split.canaries_in,
                *split.canaries_out, *samples.patients.tolist()}
    run = after = None
    if filt is not None:
        from ..run.audit_run import open_run

        run = open_run(folder.out)  # the run's own settings, data and split; writes nothing
        after = remeasure(run, model, entry, samples.take(np.flatnonzero(keep)), progress)
    cohort = build_cohort(samples, keep, real_ids, seed=int(doc.get("seed") or 0))
    if not cohort.volumes:
        raise RunError(f"model {model}: no synthetic patient is left with both ED and ES slices: nothing to release")
    mask_source = str(samples.meta.get("mask_source") or (entry.get("samples") or {}).get("mask_source"))
    command = command or " ".join(["cmraudit", *sys.argv[1:]])
    sheet = build_datasheet(doc, model, check, pol, filt, after, cohort, mask_source,
                            len(set(samples.patients.tolist())), command, samples.image_size, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        if progress:
            progress(f"writing {len(cohort.volumes)} synthetic patients")
        export_acdc(cohort.volumes, tmp / COHORT_DIR)
        text, hits = scrub(to_json(sheet), real_ids)
        markdown, hits_md = scrub(render_markdown(sheet), real_ids)
        if hits or hits_md:  # never expected: the datasheet is built from counts; said, not hidden
            markdown += f"\n\nNote: {hits + hits_md} real patient id(s) were redacted from this datasheet.\n"
        atomic_write_text(tmp / "datasheet.json", text)
        atomic_write_text(tmp / "datasheet.md", markdown)
        from ..reports.html import write_report

        if progress:
            progress("writing the redacted report")
        report = write_report(run if run is not None else folder, tmp / "report-redacted.html", redact=True,
                              policy=pol)
        # redact=True leaves no real pixels; the ids of real patients (e.g. in the closest-pair captions) go too
        html, _ = scrub(report.read_text(encoding="utf-8"), real_ids)
        atomic_write_text(report, html)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReleaseResult(target, check, filt, cohort, sheet)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
