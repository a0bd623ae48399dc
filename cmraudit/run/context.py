"""What a stage function needs from its run, and nothing more.

The train, sample and audit stages (``train_stage``, ``sample_stage``, ``audit_stage``) take a ``StageContext``,
not the ``AuditRun`` that implements it, so a stage can be read, tested and called without the orchestration
around it (and imports nothing of it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .events import ProgressEvent

if TYPE_CHECKING:
    from ..api import Split
    from ..data.types import SliceTable
    from .config import RunConfig
    from .events import Progress
    from .folder import RunFolder
    from .records import ModelRecords


class StageContext(Protocol):
    config: "RunConfig"
    force: bool  # recompute what is already finished
    folder: "RunFolder"  # where each file goes
    records: "ModelRecords"  # results.json
    progress: "Progress"
    audit_memo: dict  # AuditContext.shared of every model's audits in this process

    @property
    def device(self) -> str: ...

    @property
    def table(self) -> "SliceTable":  # the audited real data
        ...

    @property
    def public_table(self) -> "SliceTable":  # the DP public pretraining data
        ...

    @property
    def split(self) -> "Split": ...

    @property
    def canary_table(self) -> "SliceTable | None":  # the canary patients' slices, or None without canaries
        ...


def fail_model(ctx: StageContext, model: str, stage: str, message: str) -> None:
    """Record a crashed stage and say so; later stages of this model are skipped, other models go on."""
    ctx.progress(ProgressEvent(stage, model, "failed", ctx.records.fail(model, stage, message)))
