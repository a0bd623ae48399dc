"""Where a run's work runs: in this process, model after model (``LocalExecutor``, the default), or as tasks on a
Ray cluster (``RayExecutor``, ``executor = "ray"``; Moritz et al. 2018, "Ray: A Distributed Framework for Emerging
AI Applications"). Scheduling, placement and worker failure are Ray's; this module only says what the units of work
are and what they depend on:

    mask model (mask_source = "generated") ──► train + sample of each image model ──► its LiRA shadows ──► its audit

Every task opens the same run folder (``open_run(out)``: config.toml, split.json) like a rerun would, so it skips
what is finished and resumes what is not; results.json is shared through ``records`` (a lock and a merge per save),
the report is written once, by the driver, at the end. A task that dies (a killed worker, a Ray error) is recorded
against its model as a failure naming the cause, and the other models go on; rerunning the command resumes it
(training from its last checkpoint). Workers' ProgressEvents come back through a Ray queue and are replayed into
the driver's ``progress`` callback while it waits.

Fault injection, for testing the failure path: ``CMRAUDIT_FAULT_KILL=MODEL:STEP:MARKER`` in the workers'
environment makes the worker training MODEL exit (as if killed) once its step STEP is done, unless the file MARKER
exists; it creates MARKER first, so only the first attempt dies.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError
from .events import ProgressEvent, describe_error
from .records import STAGES

#: an ``audit_run.AuditRun`` (not imported: ``audit_run`` imports this module)
AuditRun = Any

FAULT_ENV = "CMRAUDIT_FAULT_KILL"
#: seconds between two forwarded "update" events of one model (training steps can be many per second)
UPDATE_INTERVAL = 0.5


class LocalExecutor:
    """Everything in this process, model by model (so the first model's full results exist early in a long run)."""

    name = "local"

    def run(self, run: AuditRun) -> None:
        for spec in run.config.models:
            run.train([spec.name])
            run.sample([spec.name])
            run.audit([spec.name])


def executor_for(config: Any, reopen: Callable[..., AuditRun]) -> "LocalExecutor | RayExecutor":
    """The config's executor. ``reopen(out, force=, progress=)`` opens a run folder as a rerun would (``open_run``):
    how a Ray task finds its run."""
    if config.executor == "ray":
        return RayExecutor(reopen, config.ray_address, config.executor_resources)
    return LocalExecutor()


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError('executor "ray" needs Ray: pip install "cmraudit[ray]"') from None
    return ray


class RayExecutor:
    """The run's models as Ray tasks. ``address``: "" starts a local Ray instance (``ray.init()``), "auto" joins
    the cluster this machine belongs to, "HOST:PORT" or "ray://HOST:10001" a given one. ``resources``: what each
    task asks for (``ray.remote`` options: ``num_cpus``, ``num_gpus``, ``memory``, ``resources``)."""

    name = "ray"

    def __init__(self, reopen: Callable[..., AuditRun], address: str = "", resources: dict[str, Any] | None = None,
                 poll: float = 0.2) -> None:
        self.reopen = reopen
        self.address = address
        self.resources = {"num_cpus": 1, **(resources or {})}
        self.poll = poll

    def run(self, run: AuditRun) -> None:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:  # a driver that already joined a cluster (a notebook, a test) keeps its connection
            ray.init(address=self.address or None, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING", configure_logging=False)
        try:
            _Driver(ray, run, self.reopen, self.resources, self.poll).execute()
        finally:
            if started:
                ray.shutdown()


class _Driver:
    """One run's task graph on Ray, and the wait for it."""

    def __init__(self, ray: Any, run: AuditRun, reopen: Callable[..., AuditRun], resources: dict[str, Any],
                 poll: float) -> None:
        from ray.util.queue import Queue

        self.ray, self.run, self.reopen, self.poll = ray, run, reopen, poll
        self.out = str(Path(run.out).resolve())  # workers do not share the driver's working directory
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.options = {**resources, "max_retries": 0}  # a rerun resumes; a silent retry would hide a crash
        self.pending: dict[Any, tuple[str, str]] = {}  # task -> (what, model or mask model)
        self.failed: dict[str, str] = {}

    def submit(self, fn: Callable[..., Any], what: str, model: str, *args: Any) -> Any:
        ref = self.ray.remote(fn).options(**self.options, name=f"{what} {model}").remote(
            self.reopen, self.out, self.run.force, self.queue, *args)
        self.pending[ref] = (what, model)
        return ref

    def execute(self) -> None:
        run = self.run
        run.prepare()
        config = run.config
        masks = {m.name: self.submit(_mask_task, "mask model", m.name, m.name, _first_user(config, m.name))
                 for m in config.mask_models()}
        shadows = _wants_lira(config)
        for spec in config.models:
            mask = config.mask_model_for(spec)
            trained = self.submit(_train_task, "train", spec.name, spec.name, *([masks[mask.name]] if mask else []))
            plan = _shadow_plan(run, spec.name) if shadows else []
            refs = [self.submit(_shadow_task, "shadow", spec.name, spec.name, patients, seed, trained)
                    for patients, seed in plan]
            self.submit(_audit_task, "audit", spec.name, spec.name, trained, *refs)
        self.wait()
        run.records.reload()
        for (what, model), message in self.failed.items():
            self.record_failure(what, model, message)
        run.records.refresh_status([m.name for m in config.models])

    def wait(self) -> None:
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=self.poll)
            self.replay()
            for ref in ready:
                what, model = self.pending.pop(ref)
                try:
                    self.ray.get(ref)
                except Exception as exc:  # a worker died or Ray failed the task (or one it depended on)
                    key = ("mask model", model) if what == "mask model" else ("model", model)
                    self.failed.setdefault(key, describe_error(_cause(exc), f"ray task {what!r} of {model!r}"))
        self.replay()

    def replay(self) -> None:
        """The workers' progress events, in the order they arrived, into the driver's callback."""
        try:
            events = self.queue.get_nowait_batch(self.queue.qsize())
        except Exception:  # an empty or closed queue: nothing to show
            return
        for event in events:
            self.run.progress(event)

    def record_failure(self, what: str, model: str, message: str) -> None:
        records = self.run.records
        if what == "mask model":
            entry = records.mask_entry(model)
            if entry is not None and entry["status"] != "ok":
                records.fail_mask(model, message)
                self.run.progress(ProgressEvent("train", model, "failed", message))
            return
        entry = records.entry(model)
        if entry["status"] in ("ok", "failed"):  # finished before the error (or the stage recorded its own)
            return
        stage = next((s for s in STAGES if not entry["stages"][s]), STAGES[-1])
        self.run.progress(ProgressEvent(stage, model, "failed", records.fail(model, stage, message)))


def _cause(exc: BaseException) -> BaseException:
    """The error behind a Ray error: a task's own exception, else Ray's (e.g. WorkerCrashedError)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _first_user(config: Any, mask_name: str) -> str:
    """An image model whose masks ``mask_name`` draws (how a worker finds the mask model's spec)."""
    return next(m.name for m in config.models if (config.mask_model_for(m) or m).name == mask_name)


def _wants_lira(config: Any) -> bool:
    """Whether the audit will run LiRA: named, or in a group on a profile whose groups include shadow attacks
    (``selection``). Only decides what is trained ahead; the audit trains whatever it still lacks."""
    from ..registry import registered
    from .selection import GROUPS, SHADOW_PROFILES, _parse

    lira = registered("attacks").get("lira")
    if lira is None:
        return False
    tokens = _parse(config.attacks)
    return "lira" in tokens or (config.profile in SHADOW_PROFILES and any(
        lira.kind in GROUPS[t] for t in tokens if t in GROUPS))


def _shadow_plan(run: AuditRun, model: str) -> list[tuple[list[str], int]]:
    from ..api import AuditContext
    from ..attacks.lira import planned_shadows

    config = run.config
    ctx = AuditContext(model=model, generator=None, data=run.table, split=run.split, synthetic=run.table,
                       profile=config.profile, seed=config.seed, options=config.options)
    return planned_shadows(ctx)


# ------------------------------------------------------------------------------------------- in the workers
def _open(reopen: Callable[..., AuditRun], out: str, force: bool, queue: Any, model: str) -> AuditRun:
    """The run folder as a rerun would open it, its progress going to the driver."""
    from .allocator import tune_malloc

    tune_malloc()  # as the command line does in its own process
    threads = os.environ.get("CMRAUDIT_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    run = reopen(out, force=force, progress=_QueueProgress(queue, model))
    run.prepare()
    return run


def _mask_task(reopen: Callable[..., AuditRun], out: str, force: bool, queue: Any, mask_name: str, user: str
               ) -> None:
    from .mask_stage import train_mask_model

    run = _open(reopen, out, force, queue, mask_name)
    train_mask_model(run, run.config.mask_model_for(run.config.model(user)))


def _train_task(reopen: Callable[..., AuditRun], out: str, force: bool, queue: Any, model: str, *after: Any
                ) -> None:
    """Train and sample one image model (its mask model, when it has one, is done: ``after``)."""
    from .sample_stage import sample_model
    from .train_stage import train_model

    run = _open(reopen, out, force, queue, model)
    spec = run.config.model(model)
    train_model(run, spec)
    sample_model(run, spec)


def _shadow_task(reopen: Callable[..., AuditRun], out: str, force: bool, queue: Any, model: str,
                 patients: list[str], seed: int, *after: Any) -> None:
    """One LiRA shadow of ``model`` into models/<model>/shadows/<key>/, where the audit's ``train_shadow`` finds it.
    A shadow that raises is left to the audit, which trains it again and records the attack's failure there."""
    from .train_stage import shadow_trainer

    run = _open(reopen, out, False, queue, model)
    if not run.records.stage_done(model, "train"):
        return  # the model failed: its audit will not run LiRA
    try:
        shadow_trainer(run, run.config.model(model))(patients, seed)
    except Exception:
        pass


def _audit_task(reopen: Callable[..., AuditRun], out: str, force: bool, queue: Any, model: str, *after: Any
                ) -> None:
    _open(reopen, out, force, queue, model).audit([model])


class _QueueProgress:
    """A worker's progress callback: events into the driver's queue (training updates thinned to one per
    ``UPDATE_INTERVAL`` per model). Showing progress never fails a task."""

    def __init__(self, queue: Any, model: str) -> None:
        self.queue = queue
        self.last: dict[tuple[str, str | None], float] = {}
        self.fault = _fault(model)

    def __call__(self, event: ProgressEvent) -> None:
        if self.fault is not None:
            self.fault(event)
        if event.state == "update" and event.step != event.total:  # the last step always shows
            key, now = (event.stage, event.model), time.monotonic()
            if now - self.last.get(key, 0.0) < UPDATE_INTERVAL:
                return
            self.last[key] = now
        try:
            self.queue.put_nowait(event)
        except Exception:
            pass


def _fault(model: str) -> Callable[[ProgressEvent], None] | None:
    """The ``CMRAUDIT_FAULT_KILL`` hook for this task, or None (see the module's docstring)."""
    spec = os.environ.get(FAULT_ENV, "")
    name, _, rest = spec.partition(":")
    step, _, marker = rest.partition(":")
    if name != model or not step or not marker:
        return None

    def kill(event: ProgressEvent) -> None:
        if (event.stage == "train" and event.model == model and event.state == "update" and (event.step or 0)
                >= int(step) and not os.path.exists(marker)):
            Path(marker).touch()
            os._exit(1)

    return kill
