"""One run folder, driven stage by stage: data → split → train → sample → audit → report.

``AuditRun`` holds what the stages share (settings, data, split, results.json, the progress callback) and is the
``StageContext`` each stage function receives; the stages themselves live in ``train_stage``, ``sample_stage`` and
``audit_stage``, the folder's layout in ``folder``, the results document's rules in ``records``.

Every stage skips what is already finished (unless ``force``), so an interrupted run loses at most the step in
progress. A plugin that raises is recorded (status "failed", the error naming the plugin) and the run goes on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .. import results as R
from ..api import Split
from ..data.sources import open_source
from ..data.splits import load_split, make_split, save_split
from ..data.types import SliceTable
from ..errors import ConfigError, RunError
from ..io import atomic_write_text
from .audit_stage import audit_model
from .builders import generator_class, resolve_device
from .canaries import canary_spec, check_disjoint, draw_canaries
from .checks import check_config
from .config import ModelSpec, RunConfig, merge_layers, read_toml, to_toml
from .events import Progress, ProgressEvent, no_progress
from .folder import RunFolder
from .mask_stage import train_mask_model
from .records import ModelRecords, data_block
from .sample_stage import sample_model
from .train_stage import train_model


class AuditRun:
    """One run folder. ``AuditRun(config).run()`` does everything; each stage method is also usable alone."""

    def __init__(self, config: RunConfig, *, force: bool = False, progress: Progress | None = None) -> None:
        self.config = config
        self.folder = RunFolder(config.out)
        self.out = self.folder.out
        self.force = force
        self.progress = progress or no_progress
        self._records: ModelRecords | None = None
        self._table: SliceTable | None = None
        self._public_table: SliceTable | None = None
        self._split: Split | None = None
        self._canaries: tuple[SliceTable, list[str], list[str]] | None = None
        self._device: str | None = None
        self._masks_ready: set[str] = set()  # mask models trained (or found trained) by this process
        self.audit_memo: dict = {}  # results every model's audits share (AuditContext.shared_memo)

    # -------------------------------------------------------------------------------------------------- set-up
    @property
    def records(self) -> ModelRecords:
        """results.json (opened by ``prepare``)."""
        self.prepare()
        assert self._records is not None
        return self._records

    @property
    def results(self) -> dict[str, Any]:
        """The results.json document as it stands."""
        return self.records.doc

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    def prepare(self) -> None:
        """Write config.toml, load the data, make or read the split, open results.json."""
        if self._records is not None:
            return
        check_config(self.config)
        self.out.mkdir(parents=True, exist_ok=True)
        start_over = self._merge_existing_config()
        atomic_write_text(self.folder.config_path, to_toml(self.config.to_toml_dict()))
        data = data_block(self.table, self.split, self.config.data, self.config.image_size)
        if self.canary_table is not None:
            data["canaries"] = {"source": canary_spec(self.config), "patients": len(self.split.canaries_in) +
                                len(self.split.canaries_out), "in": len(self.split.canaries_in),
                                "out": len(self.split.canaries_out), "slices": len(self.canary_table)}
        path = self.folder.results_path
        if path.exists() and not start_over:
            doc = R.load(path)
            doc.update(config=self.config.to_toml_dict(), data=data)
        else:
            doc = R.new_document(self.config.to_toml_dict(), R.environment(self.device, self.config.seed), data)
        records = ModelRecords(path, doc)
        for spec in self.config.models:
            records.ensure(spec.name, spec.generator, getattr(generator_class(spec), "family", "other"),
                           spec.dp_epsilon)
        records.refresh_status(self._model_names())
        self._records = records

    def _model_names(self) -> list[str]:
        return [m.name for m in self.config.models]

    def _merge_existing_config(self) -> bool:
        """A run folder accumulates models: keep the ones its config.toml already lists. A change to the data,
        seed, profile, image size, split or a model's settings would make its split, checkpoints and scores
        meaningless: refused, unless forced, and then the results start over (returns True)."""
        path = self.folder.config_path
        if not path.exists():
            return True
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

    @property
    def canary_table(self) -> SliceTable | None:
        """The canary patients' slices (None when the run has no canaries)."""
        if not self.split.canaries_in and not self.split.canaries_out:
            return None
        table, drawn_in, drawn_out = self._drawn_canaries()
        if (drawn_in, drawn_out) != (self.split.canaries_in, self.split.canaries_out):
            raise RunError(f"{self.folder.split_path}: its canaries are not those {canary_spec(self.config)!r} gives "
                           f"with seed {self.config.seed}")
        return table

    def _drawn_canaries(self) -> tuple[SliceTable, list[str], list[str]]:
        if self._canaries is None:
            source = self._load(canary_spec(self.config), "canary data", " (canaries)")
            drawn = draw_canaries(source, self.config.canaries, self.config.canary_slices, self.config.seed)
            check_disjoint(drawn[0], ("audited data", self.table),
                           *([("public pretraining data", self.public_table)] if self._uses_public_data() else []))
            self._canaries = drawn
        return self._canaries

    def _uses_public_data(self) -> bool:
        return self.config.dp_pretrain != "none" and any(m.dp_epsilon is not None for m in self.config.models)

    def _load(self, spec: str, what: str, note: str = "") -> SliceTable:
        self.progress(ProgressEvent("data", message=f"loading {spec}{note}"))
        table = open_source(spec).load(int(self.config.image_size))
        if len(table) == 0:
            raise RunError(f"{what} {spec!r} yielded no slices")
        return table

    @property
    def split(self) -> Split:
        if self._split is None:
            path = self.folder.split_path
            if path.exists() and not self.force:
                split = load_split(path)
                missing = sorted(set(split.role_of()) - set(self.table.patient_ids))
                if missing:
                    raise RunError(f"{path}: patients {', '.join(missing[:5])} are not in {self.config.data!r}")
            else:
                split = make_split(self.table, seed=self.config.seed, fractions=self.config.split or None)
                if not split.members or not split.nonmembers:
                    raise ConfigError(f"{self.config.data!r} has too few patients for members and non-members")
                if self.config.canaries:
                    _, split.canaries_in, split.canaries_out = self._drawn_canaries()
                save_split(split, path)
            self._split = split
        return self._split

    def real_data(self) -> tuple[SliceTable | None, Split | None]:
        """(table, split) for the report: the run's own, already loaded."""
        return self.table, self.split

    def config_text(self) -> str:
        return self.folder.config_text()

    def selected(self, models: Iterable[str] | None) -> list[ModelSpec]:
        return [self.config.model(m) for m in models] if models else list(self.config.models)

    # -------------------------------------------------------------------------------------------------- stages
    def train(self, models: Iterable[str] | None = None) -> None:
        """Train the models (all by default) and, with generated masks, the mask models they need first."""
        self.prepare()
        for spec in self.selected(models):
            mask_spec = self.config.mask_model_for(spec)
            if mask_spec is not None and mask_spec.name not in self._masks_ready:
                if train_mask_model(self, mask_spec):
                    self._masks_ready.add(mask_spec.name)  # once per process, also under --force
            train_model(self, spec)

    def sample(self, models: Iterable[str] | None = None) -> None:
        self.prepare()
        for spec in self.selected(models):
            sample_model(self, spec)

    def audit(self, models: Iterable[str] | None = None) -> None:
        self.prepare()
        for spec in self.selected(models):
            audit_model(self, spec)
        self.records.refresh_status(self._model_names())

    def report(self, *, redact: bool = False, policy: Any = None, path: Path | None = None) -> Path:
        from ..reports.html import write_report

        self.prepare()
        target = path or self.out / "report.html"
        self.progress(ProgressEvent("report", message=str(target)))
        write_report(self, target, redact=redact, policy=policy)
        self.progress(ProgressEvent("report", state="done", message=str(target)))
        return target

    def run(self, *, redact: bool = False, policy: Any = None) -> dict[str, Any]:
        """Every stage for every model, then the report; returns the results document. Where the models' work
        runs is the config's ``executor`` (``executors``): this process, or tasks on a Ray cluster."""
        from .executors import executor_for

        self.prepare()
        executor_for(self.config, reopen=open_run).run(self)
        self.report(redact=redact, policy=policy)
        return self.results


def open_run(out: Path | str | None = None, *, config_file: Path | str | None = None,
             overrides: dict[str, Any] | None = None, **kwargs: Any) -> AuditRun:
    """An AuditRun with layered settings: defaults < ``out``/config.toml (when the folder exists, so re-running
    resumes it) < ``config_file`` < ``overrides`` (a nested table, as from ``--set``). ``out`` defaults to the
    config file's ``out``, else ./cmraudit-run. Keyword arguments go to AuditRun (force, progress)."""
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
