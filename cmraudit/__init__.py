"""cmraudit: a plugin-based privacy audit framework for synthetic cardiac MRI.

Plugin authors need only what is re-exported here::

    from cmraudit import hookimpl, Generator, Attack, Metric, ReportSection, DatasetSource
"""
from __future__ import annotations

__version__ = "0.1.0"

from .api import (  # noqa: E402
    Attack,
    AttackResult,
    AuditContext,
    Batch,
    Conditioning,
    DatasetSource,
    DenoiserView,
    Generator,
    MaskGenerator,
    Metric,
    MetricValue,
    NotApplicable,
    ReportSection,
    Split,
    StepRunner,
)
from .data.types import PatientVolume, Slice, SliceTable  # noqa: E402
from .errors import CmrauditError, DataError, PluginError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402

__all__ = [
    "__version__", "hookimpl", "Attack", "AttackResult", "AuditContext", "Batch", "Conditioning", "DatasetSource",
    "DenoiserView", "Generator", "MaskGenerator", "Metric", "MetricValue", "NotApplicable", "ReportSection", "Split",
    "StepRunner", "PatientVolume", "Slice", "SliceTable", "CmrauditError", "DataError", "PluginError",
]
