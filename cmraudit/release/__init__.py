"""Sharing a synthetic cohort (``cmraudit release``): the audited model's synthetic set, gated by the policy,
optionally stripped of every image an attack flagged, exported in the ACDC layout with a datasheet.

    from cmraudit.release import release_model
    result = release_model("audit-dir", "diffusion", filter=True)   # -> audit-dir/release/diffusion/

Modules: ``gate_check`` (the policy's verdict on the model), ``filter`` (the privacy filter), ``remeasure``
(fidelity and utility again on what the filter kept), ``cohort`` (synthetic patients), ``datasheet``, ``build``
(the whole release, written atomically).
"""
from .build import ReleaseResult, default_out, release_model
from .filter import FILTER_ATTACKS, FilterResult, privacy_filter
from .gate_check import GateCheck, check_gate

__all__ = ["FILTER_ATTACKS", "FilterResult", "GateCheck", "ReleaseResult", "check_gate", "default_out",
           "privacy_filter", "release_model"]
