"""Orchestration of one run folder: data → split → train → sample → audit → report.

Layout (paths relative to the run folder)::

    config.toml                       the resolved config, written first
    split.json                        patient ids per role
    models/<model>/checkpoints/       written by cmraudit.train (resumable)
    models/<model>/training.json      written by cmraudit.train
    models/<model>/samples.npz        the synthetic set and the masks/labels that conditioned it
    scores/<model>/<attack>.npz       per-example membership scores (+ the attack's extra arrays)
    results.json                      rewritten atomically after every model, attack and metric
    report.html

Every stage skips what is already finished (unless ``force``), so an interrupted run loses at most the step in
progress. A plugin that raises is recorded (status "failed", the error naming the plugin) and the run goes on.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import results as R
from .api import Conditioning, Generator, Split
from .data.types import SliceTable
from .errors import ConfigError, RunError
from .runconfig import ModelSpec, RunConfig, read_toml, to_toml


@dataclass
class ProgressEvent:
    """What the run is doing, for the CLI's progress display (the library never prints)."""

    stage: str
    model: str | None = None
    state: str = "start"  # start | update | done | skipped | failed
    message: str = ""
    step: int | None = None
    total: int | None = None
    logs: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[ProgressEvent], None]


def safe_name(name: str) -> str:
    """A file name for a model or plugin name: itself when harmless, else a cleaned form plus a short hash (so
    ``a/b`` and ``a_b`` stay distinct and no name can climb out of the run folder)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._+-]+', '_', name).strip('._')[:40]}-{digest}"


def describe_error(exc: BaseException, what: str) -> str:
    """One line naming the plugin at fault: ``generator 'gan' (cmraudit.plugins.gan): ValueError: ...``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{what}: {type(exc).__name__}{': ' + text if text else ''}"


def plugin_label(kind: str, name: str, cls: type) -> str:
    return f"{kind} {name!r} ({cls.__module__})"


class AuditRun:
    """One run folder. ``AuditRun(config).run()`` does everything; each stage method is also usable alone."""

    def __init__(self, config: RunConfig, *, force: bool = False, progress: Progress | None = None) -> None:
        self.config = config
        self.out = Path(config.out)
        self.force = force
        self.progress = progress or (lambda event: None)
        self._table: SliceTable | None = None
        self._public_table: SliceTable | None = None
        self._split: Split | None = None
        self.doc: dict[str, Any] | None = None
        self._device: str | None = None

    # -------------------------------------------------------------------------------------------------- paths
    @property
    def results(self) -> dict[str, Any]:
        """The results.json document as it stands (loaded by ``prepare``)."""
        self.prepare()
        assert self.doc is not None
        return self.doc

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    def model_dir(self, model: str) -> Path:
        return self.out / "models" / safe_name(model)

    def samples_path(self, model: str) -> Path:
        return self.model_dir(model) / "samples.npz"

    def scores_path(self, model: str, attack: str) -> Path:
        return self.out / "scores" / safe_name(model) / f"{safe_name(attack)}.npz"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()

    # -------------------------------------------------------------------------------------------------- set-up
    @property
    def device(self) -> str:
        if self._device is None:
            from .stages import resolve_device

            self._device = resolve_device(self.config.device)
        return self._device

    def prepare(self) -> None:
        """Write config.toml, load the data, make or read the split, open results.json."""
        if self.doc is not None:
            return
        from .stages import check_config

        check_config(self)
        self.out.mkdir(parents=True, exist_ok=True)
        start_over = self._merge_existing_config()
        from .io import atomic_write_text

        atomic_write_text(self.out / "config.toml", to_toml(self.config.to_toml_dict()))
        data = data_block(self.table, self.split, self.config)
        if self.results_path.exists() and not start_over:
            self.doc = R.load(self.results_path)
            self.doc.update(config=self.config.to_toml_dict(), data=data)
        else:
            self.doc = R.new_document(self.config.to_toml_dict(), R.environment(self.device, self.config.seed), data)
        for spec in self.config.models:
            if spec.name not in self.doc["models"]:
                family = getattr(self.generator_class(spec), "family", "other")
                self.doc["models"][spec.name] = R.new_model(spec.name, spec.generator, family, spec.dp_epsilon)
        self._refresh_status()
        self.save()

    def _merge_existing_config(self) -> bool:
        """A run folder accumulates models: keep the ones its config.toml already lists. A change to the data,
        seed, profile, image size, split or a model's settings would make its split, checkpoints and scores
        meaningless: refused, unless forced, and then the results start over (returns True)."""
        path = self.out / "config.toml"
        if not path.exists():
            return True
        from .runconfig import merge_layers

        old = merge_layers([(str(path), read_toml(path))])
        changed = [k for k, v in self.config.essentials().items() if old.essentials().get(k) != v]
        old_models = {m.name: m for m in old.models}
        changed += [f"model {m.name}" for m in self.config.models if m.name in old_models and old_models[m.name] != m]
        if changed and not self.force:
            raise RunError(f"{self.out}: this run folder was made with a different {', '.join(changed)}; "
                           f"use --force to recompute, or another --out")
        if changed:
            return True
        names = {m.name for m in self.config.models}
        self.config.models.extend(m for m in old.models if m.name not in names)
        return False

    @property
    def public_table(self) -> SliceTable:
        """The ``dp_pretrain`` data (loaded once per run, shared by every DP model and its shadows)."""
        if self._public_table is None:
            self._public_table = self._load(self.config.dp_pretrain, "dp_pretrain", " (public pretraining)")
        return self._public_table

    @property
    def table(self) -> SliceTable:
        if self._table is None:
            self._table = self._load(self.config.data, "data source")
        return self._table

    def _load(self, spec: str, what: str, note: str = "") -> SliceTable:
        from .data.sources import open_source

        self.progress(ProgressEvent("data", message=f"loading {spec}{note}"))
        table = open_source(spec).load(int(self.config.image_size))
        if len(table) == 0:
            raise RunError(f"{what} {spec!r} yielded no slices")
        return table

    @property
    def split(self) -> Split:
        if self._split is None:
            from .data.splits import load_split, make_split, save_split

            path = self.out / "split.json"
            if path.exists() and not self.force:
                split = load_split(path)
                missing = sorted(set(split.role_of()) - set(self.table.patient_ids))
                if missing:
                    raise RunError(f"{path}: patients {', '.join(missing[:5])} are not in {self.config.data!r}")
            else:
                split = make_split(self.table, seed=self.config.seed, fractions=self.config.split or None)
                if not split.members or not split.nonmembers:
                    raise ConfigError(f"{self.config.data!r} has too few patients for members and non-members")
                save_split(split, path)
            self._split = split
        return self._split

    def generator_class(self, spec: ModelSpec) -> type[Generator]:
        from .registry import get

        return get("generators", spec.generator)

    def build_generator(self, spec: ModelSpec) -> Generator:
        cls = self.generator_class(spec)
        config = cls.make_config(self.config.profile, self.config.generator_overrides(spec))
        return cls(config, Conditioning(int(self.config.image_size)))

    # -------------------------------------------------------------------------------------------------- state
    def save(self) -> None:
        assert self.doc is not None
        R.write(self.results_path, self.doc)

    def entry(self, model: str) -> dict[str, Any]:
        assert self.doc is not None
        return self.doc["models"][model]

    def _refresh_status(self) -> None:
        assert self.doc is not None
        names = [m.name for m in self.config.models]
        done = all(self.entry(n)["status"] in ("ok", "failed") for n in names)
        self.doc["status"] = "complete" if done else "running"

    def fail_model(self, model: str, stage: str, message: str) -> None:
        """Record a crashed stage; later stages of this model are skipped, other models go on."""
        entry = self.entry(model)
        entry["status"] = "failed"
        entry["error"] = f"{stage}: {message}"
        self.progress(ProgressEvent(stage, model, "failed", entry["error"]))
        self._refresh_status()
        self.save()

    def selected(self, models: Iterable[str] | None) -> list[ModelSpec]:
        return [self.config.model(m) for m in models] if models else list(self.config.models)

    # -------------------------------------------------------------------------------------------------- stages
    def train(self, models: Iterable[str] | None = None) -> None:
        from .stages import train_model

        self.prepare()
        for spec in self.selected(models):
            train_model(self, spec)

    def sample(self, models: Iterable[str] | None = None) -> None:
        from .stages import sample_model

        self.prepare()
        for spec in self.selected(models):
            sample_model(self, spec)

    def audit(self, models: Iterable[str] | None = None) -> None:
        from .audit import audit_model

        self.prepare()
        for spec in self.selected(models):
            audit_model(self, spec)
        self._refresh_status()
        self.save()

    def report(self, *, redact: bool = False, policy: Any = None, path: Path | None = None) -> Path:
        from .reports.html import write_report

        self.prepare()
        target = path or self.out / "report.html"
        self.progress(ProgressEvent("report", message=str(target)))
        write_report(self.out, target, redact=redact, policy=policy, table=self.table, split=self.split)
        self.progress(ProgressEvent("report", state="done", message=str(target)))
        return target

    def run(self, *, redact: bool = False, policy: Any = None) -> dict[str, Any]:
        """Every stage for every model, then the report; returns the results document."""
        self.prepare()
        for spec in self.config.models:
            # model by model, so the first model's full results exist early in a long run
            self.train([spec.name])
            self.sample([spec.name])
            self.audit([spec.name])
        self.report(redact=redact, policy=policy)
        assert self.doc is not None
        return self.doc


def data_block(table: SliceTable, split: Split, config: RunConfig) -> dict[str, Any]:
    """Source, sizes and the split's composition by vendor and pathology (patients per role)."""
    labels = table.patient_labels()
    rows = table.patient_rows()
    roles = {role: getattr(split, role) for role in Split.ROLES}

    def tally(column: int) -> dict[str, dict[str, int]]:
        return {role: dict(Counter(labels.get(p, ("?", "?"))[column] for p in patients))
                for role, patients in roles.items()}

    return {"source": table.source or config.data, "image_size": int(config.image_size),
            "patients": len(labels), "slices": len(table), "split": {r: len(p) for r, p in roles.items()},
            "split_slices": {r: int(sum(len(rows.get(x, ())) for x in p)) for r, p in roles.items()},
            "by_vendor": tally(0), "by_pathology": tally(1), "split_file": "split.json"}


def open_run(out: Path | str | None = None, *, config_file: Path | str | None = None,
             overrides: dict[str, Any] | None = None, **kwargs: Any) -> AuditRun:
    """An AuditRun with layered settings: defaults < ``out``/config.toml (when the folder exists, so re-running
    resumes it) < ``config_file`` < ``overrides`` (a nested table, as from ``--set``). ``out`` defaults to the
    config file's ``out``, else ./cmraudit-run. Keyword arguments go to AuditRun (force, progress)."""
    from .runconfig import merge_layers

    file_layer = read_toml(Path(config_file)) if config_file else {}
    target = Path(out or file_layer.get("out") or RunConfig.out)
    layers = []
    if (target / "config.toml").exists():
        layers.append((str(target / "config.toml"), read_toml(target / "config.toml")))
    if config_file:
        layers.append((str(config_file), file_layer))
    layers.append(("command line", overrides or {}))
    layers.append(("--out", {"out": str(target)}))
    return AuditRun(merge_layers(layers), **kwargs)
