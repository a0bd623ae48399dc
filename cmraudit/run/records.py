"""The one owner of results.json while a run writes it: the document, and each model's record through its life.

A model's record moves ``pending`` → (train, sample, audit stages done) → ``ok``, or to ``failed`` with the stage
and the error naming the plugin. Finishing a stage invalidates the ones after it (new samples make earlier audit
numbers stale), and re-running a failed stage makes the model pending again. Every change is written at once,
atomically, so an interrupted run leaves a valid document that says how far it got.

Several processes may write one results.json (``executor = "ray"``: one task per model, each in its own process,
perhaps on another machine sharing the run folder). Each process owns the records it changes (its model, its mask
model) and nothing else: a save takes an exclusive lock (``io.exclusive_lock``) on ``results.json.lock`` beside it,
reads what is on disk, puts its own records over it (every other record as the disk has it), and writes atomically
before letting go. A process alone with its folder (the in-process executor) reads back exactly what it wrote, so
its document is the same as without the merge.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .. import results as R
from ..api import Split
from ..data.types import SliceTable
from ..io import exclusive_lock

STAGES = ("train", "sample", "audit")


class ModelRecords:
    """results.json of one run: ``doc`` is the document; the methods below are the only ones that change it."""

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc
        # the records this process has changed: a save writes these over what is on disk, and only these
        self._owned: dict[str, set[str]] = {"models": set(), "mask_models": set()}

    def save(self, then: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Write the document: under the lock, this process's records merged into the file's, then ``then(doc)``
        (a change that must see every process's records, like the run's status)."""
        with self._locked():
            self._merge_from_disk()
            if then is not None:
                then(self.doc)
            R.write(self.path, self.doc)

    def reload(self) -> None:
        """Catch up with what other processes wrote (this process's own records stay as they are)."""
        with self._locked():
            self._merge_from_disk()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on ``results.json.lock`` for one read-merge-write (released when the process dies, so
        a killed worker never leaves it held)."""
        with exclusive_lock(self.path.with_name(self.path.name + ".lock")):
            yield

    def _merge_from_disk(self) -> None:
        """Take every record this process does not own from the file (keeping this process's order of models),
        and the union of the baselines; the rest of the document is this process's."""
        if not self.path.exists():
            return
        disk = R.load(self.path)
        if disk.get("created") != self.doc.get("created"):
            return  # another document (a forced restart replaced it): this process's is the one to write
        for kind in ("models", "mask_models"):
            theirs = disk.get(kind) or {}
            if not theirs and kind not in self.doc:
                continue
            ours = self.doc.setdefault(kind, {})
            merged = {name: entry if name in self._owned[kind] or name not in theirs else theirs[name]
                      for name, entry in ours.items()}
            merged.update((name, entry) for name, entry in theirs.items() if name not in merged)
            self.doc[kind] = merged
        baselines = self.doc.setdefault("baselines", {})
        for key, values in (disk.get("baselines") or {}).items():
            baselines[key] = {**values, **baselines.get(key, {})}

    def _own(self, kind: str, name: str) -> None:
        self._owned[kind].add(name)

    def entry(self, model: str) -> dict[str, Any]:
        """A model's record, to read (change it through the methods of this class)."""
        return self.doc["models"][model]

    def stage_done(self, model: str, stage: str) -> bool:
        return bool(self.entry(model)["stages"][stage])

    def ensure(self, model: str, generator: str, family: str, dp_epsilon: float | None) -> None:
        """A pending record for a model the document does not hold yet."""
        if model not in self.doc["models"]:
            self.doc["models"][model] = R.new_model(model, generator, family, dp_epsilon)

    def restart(self, model: str, generator: str, dp_epsilon: float | None) -> None:
        """A fresh record for a model about to be (re)trained: nothing of the old one stands."""
        self._own("models", model)
        family = self.entry(model).get("family") or "other"
        self.doc["models"][model].update(R.new_model(model, generator, family, dp_epsilon))

    def begin(self, model: str) -> None:
        """A stage starts: a model that failed before is pending again until it finishes."""
        self._own("models", model)
        entry = self.entry(model)
        entry["status"], entry["error"] = "pending", None

    def finish(self, model: str, stage: str, **fields: Any) -> None:
        """``stage`` is done with ``fields`` (e.g. ``training=``, ``samples=``); later stages must run again."""
        self._own("models", model)
        entry = self.entry(model)
        entry.update(fields)
        entry["stages"][stage] = True
        for later in STAGES[STAGES.index(stage) + 1:]:
            entry["stages"][later] = False
        if stage == STAGES[-1]:
            entry["status"] = "ok"
            record_verdicts(model, entry)
        self.save()

    def fail(self, model: str, stage: str, message: str) -> str:
        """Record a crashed stage (later stages of this model are skipped, other models go on); returns the
        error as recorded."""
        self._own("models", model)
        entry = self.entry(model)
        entry["status"] = "failed"
        entry["error"] = f"{stage}: {message}"
        self.save()
        return entry["error"]

    def record(self, model: str, kind: str, name: str, result: dict[str, Any], save: bool = True) -> None:
        """An attack's or metric's entry (``kind`` is "attacks" or "metrics"), written at once unless ``save`` is
        false (the caller saves soon after)."""
        self._own("models", model)
        self.entry(model)[kind][name] = result
        if kind == "metrics" and result.get("status") == "ok":
            record_baselines(self.doc, result["values"])
        if save:
            self.save()

    # ------------------------------------------------------------------------------------------------ mask models
    # A run with mask_source = "generated" has mask models (one per DP budget) under ``mask_models``: trained and
    # sampled once, then read by every image model of that budget; their privacy is audited through the image
    # models' synthetic sets, which carry their masks (cmraudit.attacks.masks).
    def mask_entry(self, name: str) -> dict[str, Any] | None:
        return self.doc.get("mask_models", {}).get(name)

    def mask_done(self, name: str) -> bool:
        entry = self.mask_entry(name)
        return entry is not None and entry["status"] == "ok"

    def start_mask(self, name: str, generator: str, dp_epsilon: float | None) -> None:
        self._own("mask_models", name)
        self.doc.setdefault("mask_models", {})[name] = {
            "generator": generator, "dp_epsilon_target": dp_epsilon, "status": "pending", "error": None,
            "training": None, "masks": None}
        self.save()

    def finish_mask(self, name: str, **fields: Any) -> None:
        self._own("mask_models", name)
        entry = self.doc["mask_models"][name]
        entry.update(fields, status="ok", error=None)
        self.save()

    def fail_mask(self, name: str, message: str) -> str:
        self._own("mask_models", name)
        entry = self.doc["mask_models"][name]
        entry["status"], entry["error"] = "failed", message
        self.save()
        return message

    def refresh_status(self, models: Iterable[str]) -> None:
        """The document is complete when every model of the run has finished (ok or failed)."""
        names = list(models)

        def status(doc: dict[str, Any]) -> None:  # over every process's records, as merged under the lock
            done = all(doc["models"][n]["status"] in ("ok", "failed") for n in names)
            doc["status"] = "complete" if done else "running"

        self.save(then=status)


def record_verdicts(model: str, entry: dict[str, Any]) -> None:
    """Each MIA attack's verdict, and the model's over every rule, against the built-in policy (pass, fail or
    inconclusive, with the reason), so results.json says what the audit could and could not show.
    ``cmraudit gate --policy`` judges again with another policy."""
    from ..gate import judge_attack, judge_model, load_policy, model_outcomes

    policy = load_policy(None)
    for attack in entry["attacks"].values():
        verdict = judge_attack(attack, policy, model)
        attack.pop("verdict", None)
        if verdict is not None:
            attack["verdict"] = _verdict_record(verdict, policy.source)
    rules = judge_model(model, entry, policy)
    entry["verdict"] = {"outcome": model_outcomes(rules).get(model, "fail"), "policy": policy.source,
                        "rules": [_verdict_record(r) for r in rules]}


def _verdict_record(rule: Any, policy: str | None = None) -> dict[str, Any]:
    record = {"rule": rule.rule, "verdict": rule.verdict, "value": rule.value, "threshold": rule.threshold,
              "ci": list(rule.interval) if rule.interval else None, "reason": rule.reason}
    return {**record, "policy": policy} if policy else record


def record_baselines(doc: dict[str, Any], values: dict[str, Any]) -> None:
    """Lift what "as good as real" is out of the metric values into results.json's ``baselines``: each fidelity
    value's real-vs-real counterpart and the segmenter trained on real members (TRTR). They do not depend on the
    model (same real data, same masks), so the latest model's numbers stand for all."""
    baselines = doc.setdefault("baselines", {})
    for key, value in values.items():
        details = value.get("details") or {}
        if "real_vs_real" in details:
            baselines.setdefault("real_vs_real", {})[key] = details["real_vs_real"]
        if key.startswith("trtr_"):
            baselines.setdefault("trtr", {})[key] = value.get("value")


def data_block(table: SliceTable, split: Split, source: str, image_size: int) -> dict[str, Any]:
    """results.json's ``data``: source, sizes and the split's composition by vendor and pathology (patients per
    role)."""
    labels = table.patient_labels()
    rows = table.patient_rows()
    roles = {role: getattr(split, role) for role in Split.ROLES}

    def tally(column: int) -> dict[str, dict[str, int]]:
        return {role: dict(Counter(labels.get(p, ("?", "?"))[column] for p in patients))
                for role, patients in roles.items()}

    return {"source": table.source or source, "image_size": int(image_size),
            "patients": len(labels), "slices": len(table), "split": {r: len(p) for r, p in roles.items()},
            "split_slices": {r: int(sum(len(rows.get(x, ())) for x in p)) for r, p in roles.items()},
            "by_vendor": tally(0), "by_pathology": tally(1), "split_file": "split.json"}
