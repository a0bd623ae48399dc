"""Contract checks for plugin authors: run an Attack or Metric on tiny data and check every rule (generators:
``generator_contract``); the ContractViolation every check raises.

    from cmraudit.testing import check_attack, check_generator, check_metric

    def test_my_generator():
        check_generator(MyGenerator)        # raises ContractViolation (a PluginError) naming the broken rule

Each check takes a second or two on one CPU thread. A failure is a ``ContractViolation`` whose message names the
plugin (registered name, module and class) and the rule, e.g. ``generator 'my-gan' (my_pkg.gan.MyGan) breaks the
rule 'sample-range': ...``; ``.rule`` and ``.plugin`` hold the same for assertions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..api import Attack, AttackResult, AuditContext, Generator, Metric, MetricValue, NotApplicable
from ..data.types import SliceTable
from ..errors import PluginError
from .tiny import make_audit_context

__all__ = ["ContractViolation", "check_attack", "check_metric"]

#: signal names become keys in results.json and parts of file names
SIGNAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ContractViolation(PluginError):
    """A plugin that breaks one rule of its base class's contract."""

    def __init__(self, kind: str, cls: type, rule: str, detail: str) -> None:
        self.kind, self.rule, self.detail = kind, rule, detail
        self.plugin = getattr(cls, "name", None) or getattr(cls, "__name__", repr(cls))
        where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', type(cls).__qualname__)}"
        super().__init__(f"{kind} {self.plugin!r} ({where}) breaks the rule "
                         f"'{rule}': {detail}")


def _rule(kind: str, cls: type) -> Callable[[bool, str, str], None]:
    def require(ok: bool, rule: str, detail: str) -> None:
        if not ok:
            raise ContractViolation(kind, cls, rule, detail)
    return require


def _call(kind: str, cls: type, rule: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run plugin code; anything it raises (but NotApplicable) becomes a violation of ``rule`` naming the plugin."""
    try:
        return fn()
    except (ContractViolation, NotApplicable):
        raise
    except Exception as exc:
        raise ContractViolation(kind, cls, rule, f"{what} raised {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------------- audits
def _audit(kind: str, cls: type, method: str, generator: Generator | None, table: SliceTable | None, seed: int,
           options: dict[str, Any] | None) -> tuple[AuditContext, Any]:
    """A fresh context in a temporary folder, then ``cls().<method>(ctx)``."""
    with tempfile.TemporaryDirectory(prefix="cmraudit-check-") as tmp:
        ctx = make_audit_context(generator, table, seed, options=options, workdir=Path(tmp))
        return ctx, _run_audit(kind, cls, method, ctx)


def _run_audit(kind: str, cls: type, method: str, ctx: AuditContext) -> Any:
    instance = _call(kind, cls, "registrable", f"{cls.__name__}()", cls)
    reason = _call(kind, cls, "applies-to", "applies_to(generator)", lambda: instance.applies_to(ctx.generator))
    _rule(kind, cls)(reason is None or isinstance(reason, str), "applies-to",
                     f"applies_to must return None or a reason string, got {reason!r:.80}")
    if reason:
        raise NotApplicable(f"{kind} {cls.name!r}: {reason}")
    return _call(kind, cls, f"{kind}-{method}", f"{method}(ctx)", lambda: getattr(instance, method)(ctx))


def check_attack(cls: type, *, generator: Generator | None = None, table: SliceTable | None = None, seed: int = 0,
                 options: dict[str, Any] | None = None, deterministic: bool = True) -> AttackResult:
    """Run ``cls`` on ``make_audit_context(...)`` twice and check the AttackResult contract.

    Rules: registrable, applies-to, attack-run, attack-result-type, attack-result-lengths, attack-scores-finite,
    attack-level, attack-patient-roles, attack-arrays, attack-details, attack-deterministic. Raises NotApplicable
    when the attack says it does not apply to the generator (pass one it applies to). ``options`` is the run's
    options table, keyed by plugin name: ``{"my-attack": {"shadows": 2}}``.
    """
    require = _rule("attack", cls)
    require(isinstance(cls, type) and issubclass(cls, Attack), "registrable", "is not a cmraudit.Attack subclass")
    ctx, result = _audit("attack", cls, "run", generator, table, seed, options)
    require(isinstance(result, AttackResult), "attack-result-type", f"run() returned {type(result).__name__}, "
            "expected cmraudit.AttackResult")
    roles = {"member": set(ctx.split.members), "nonmember": set(ctx.split.nonmembers)}
    for role, allowed in roles.items():
        scores = np.asarray(getattr(result, f"{role}_scores"))
        patients = np.asarray(getattr(result, f"{role}_patients")).astype(str)
        require(scores.ndim == 1 and len(scores) > 0 and len(scores) == len(patients), "attack-result-lengths",
                f"{role}_scores {scores.shape} and {role}_patients {patients.shape} must be 1-D, non-empty and "
                "of equal length")
        require(np.issubdtype(scores.dtype, np.number) and bool(np.isfinite(scores).all()), "attack-scores-finite",
                f"{role}_scores must be finite numbers")
        stray = sorted(set(patients) - allowed)
        require(not stray, "attack-patient-roles", f"{role}_patients holds {stray[:3]}, not {role}s of the split")
        if result.level == "patient":
            require(len(set(patients)) == len(patients), "attack-level",
                    f"level 'patient' but {role}_patients repeats a patient")
    require(result.level in ("slice", "patient"), "attack-level", f"level must be 'slice' or 'patient', "
            f"got {result.level!r}")
    require(isinstance(result.arrays, dict) and all(isinstance(v, np.ndarray) for v in result.arrays.values()),
            "attack-arrays", "arrays must map names to numpy arrays (they are saved beside the scores)")
    _require_jsonable(require, "attack-details", result.details)
    if deterministic:
        again = _audit("attack", cls, "run", generator, table, seed, options)[1]
        same = all(np.allclose(getattr(result, f), getattr(again, f), rtol=1e-6, atol=1e-9)
                   for f in ("member_scores", "nonmember_scores"))
        require(same, "attack-deterministic", f"two runs with seed {seed} gave different scores; draw randomness "
                "from ctx.seed")
    return result


def check_metric(cls: type, *, generator: Generator | None = None, table: SliceTable | None = None, seed: int = 0,
                 options: dict[str, Any] | None = None, deterministic: bool = True) -> dict[str, MetricValue]:
    """Run ``cls`` on ``make_audit_context(...)`` and check the Metric contract.

    Rules: registrable, metric-category, applies-to, metric-compute, metric-result-type, metric-value-finite,
    metric-direction, metric-ci, metric-details, metric-deterministic.
    """
    require = _rule("metric", cls)
    require(isinstance(cls, type) and issubclass(cls, Metric), "registrable", "is not a cmraudit.Metric subclass")
    require(cls.category in ("fidelity", "utility"), "metric-category",
            f"category must be 'fidelity' or 'utility', got {cls.category!r}")
    values = _audit("metric", cls, "compute", generator, table, seed, options)[1]
    require(isinstance(values, dict) and bool(values) and all(isinstance(k, str) and SIGNAL_NAME.match(k)
                                                              for k in values), "metric-result-type",
            f"compute() must return a non-empty dict of named MetricValues, got {values!r:.80}")
    for name, v in values.items():
        require(isinstance(v, MetricValue), "metric-result-type", f"{name!r} is {type(v).__name__}, not MetricValue")
        require(isinstance(v.value, (int, float, np.number)) and math.isfinite(v.value), "metric-value-finite",
                f"{name!r} has value {v.value!r}")
        require(v.direction in ("higher", "lower"), "metric-direction",
                f"{name!r} direction must be 'higher' or 'lower', got {v.direction!r}")
        ci_ok = v.ci is None or (len(v.ci) == 2 and all(math.isfinite(c) for c in v.ci) and v.ci[0] <= v.ci[1])
        require(ci_ok, "metric-ci", f"{name!r} ci must be None or a finite (low, high), got {v.ci!r}")
        _require_jsonable(require, "metric-details", v.details)
    if deterministic:
        again = _audit("metric", cls, "compute", generator, table, seed, options)[1]
        changed = [n for n in values if n not in again or not math.isclose(values[n].value, again[n].value,
                                                                            rel_tol=1e-6, abs_tol=1e-9)]
        require(not changed, "metric-deterministic", f"{changed} differ between two runs with seed {seed}")
    return values


def _require_jsonable(require: Callable, rule: str, details: Any) -> None:
    from ..results import jsonable

    require(isinstance(details, dict), rule, f"details must be a dict, got {type(details).__name__}")
    try:
        json.dumps(jsonable(dataclasses.asdict(details) if dataclasses.is_dataclass(details) else details))
    except (TypeError, ValueError) as exc:
        require(False, rule, f"details are not JSON-serialisable ({exc})")
