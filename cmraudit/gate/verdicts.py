"""From a policy and a results.json to verdicts: one per (model, rule), then per model and for the whole gate.

A rule's verdict is ``pass``, ``fail`` or ``inconclusive``. A number with a confidence interval (the MIA AUC on
its CI) passes when the whole interval is on the safe side of the threshold, fails when the whole interval is on
the wrong side, and is inconclusive when the threshold lies inside it: the audit could not tell, and says which
threshold it could have shown (its interval's bound). Missing numbers fail (the gate fails closed).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

from ..errors import ConfigError
from .policy import SCALAR_RULES, TABLE_RULES, Policy
from .rules import Measurement, dp_audit_consistent, rule_for

VERDICTS = ("pass", "fail", "inconclusive")
#: ``cmraudit gate``'s exit code per overall outcome
EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}


@dataclass
class RuleResult:
    rule: str
    model: str
    verdict: str  # pass | fail | inconclusive
    value: float | None = None
    threshold: float | None = None
    reason: str = ""
    interval: tuple[float, float] | None = None  # the value's 95% CI, when the rule has one

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def evaluate(doc: dict[str, Any], policy: Policy) -> list[RuleResult]:
    """Every rule of the policy for every covered model; fail-closed on anything missing."""
    out: list[RuleResult] = []
    if doc.get("status") != "complete":
        out.append(RuleResult("run complete", "*", "fail", reason=f"results file is from an unfinished run "
                              f"(status {doc.get('status')!r}); finish it with `cmraudit run` on the same folder"))
    models = doc.get("models") or {}
    covered = sorted(models)
    if policy.models is not None:
        covered = [m for m in covered if any(fnmatch.fnmatchcase(m, p) for p in policy.models)]
        for pattern in policy.models:
            if not any(fnmatch.fnmatchcase(m, pattern) for m in models):
                out.append(RuleResult("model present", pattern, "fail", reason="no such model in the results"))
    if not covered:
        out.append(RuleResult("model present", "*", "fail", reason="the results hold no model to gate"))
    checked = []
    for model in covered:
        checked.extend(_model_rules(model, models[model], policy.for_model(model)))
    if covered and not checked:
        out.append(RuleResult("policy", "*", "fail", reason=f"{policy.source} sets no threshold: nothing was checked"))
    return out + checked


def judge_model(name: str, model: dict[str, Any], policy: Policy) -> list[RuleResult]:
    """The policy's rules for one model record (as ``evaluate`` judges it inside a whole document)."""
    return _model_rules(name, model, policy.for_model(name))


def judge_attack(attack: dict[str, Any], policy: Policy, model: str = "") -> RuleResult | None:
    """One MIA attack's own verdict against the policy's ``max_mia_auc`` (None for other kinds, or without that
    rule), so results.json can say per attack whether it passes, fails or could not tell."""
    settings = policy.for_model(model)
    threshold = settings.get("max_mia_auc", False)
    if attack.get("kind", "mia") != "mia" or attack.get("status") != "ok" or threshold is False:
        return None
    measured = rule_for("max_mia_auc")({"attacks": {"attack": attack}}, settings)
    verdict, reason = judge("max_mia_auc", measured, _num(threshold, "max_mia_auc"))
    reason = reason.split("; ", 1)[-1]  # the part about this attack's CI, without "worst: ..."
    return RuleResult("max_mia_auc", model, verdict, measured.value, float(threshold), reason, measured.interval)


def _active_rules(settings: dict[str, Any]) -> list[tuple[str, Any]]:
    """(rule key, threshold) of every rule the settings turn on; table rules as ``min_fidelity.coverage``."""
    active = [(k, v) for k, v in settings.items() if k in SCALAR_RULES and v is not False]
    for key, table in ((k, v) for k, v in settings.items() if k in TABLE_RULES and isinstance(v, dict)):
        active.extend((f"{key}.{metric}", bound) for metric, bound in table.items() if bound is not False)
    return active


def _model_rules(name: str, model: dict[str, Any], settings: dict[str, Any]) -> list[RuleResult]:
    out = []
    dp_audit = dp_audit_consistent(model) if model.get("status") == "ok" else None
    if dp_audit is not None:  # always on: no policy may accept a DP guarantee its own audit refutes
        claimed = float(model["training"]["dp"]["epsilon"])
        verdict = "pass" if dp_audit.value is not None and dp_audit.value <= claimed else "fail"
        out.append(RuleResult("dp_audit", name, verdict, dp_audit.value, claimed, dp_audit.reason))
    for rule, threshold in _active_rules(settings):
        threshold = _num(threshold, rule)
        if model.get("status") != "ok":
            reason = f"model {model.get('status')}: {model.get('error') or 'not finished'}"
            out.append(RuleResult(rule, name, "fail", None, threshold, reason))
            continue
        measured = rule_for(rule)(model, settings)
        verdict, reason = judge(rule, measured, threshold)
        out.append(RuleResult(rule, name, verdict, measured.value, threshold, reason, measured.interval))
    return out


def judge(rule: str, measured: Measurement, threshold: float) -> tuple[str, str]:
    """(verdict, reason) of one measurement against its threshold (``max_*`` rules: at most; ``min_*``: at least)."""
    if measured.value is None:
        return "fail", measured.reason
    upper_bound = rule.startswith("max")

    def safe(x: float) -> bool:
        return x <= threshold if upper_bound else x >= threshold

    if measured.interval is None:
        return ("pass" if safe(measured.value) else "fail"), measured.reason
    lower, upper = measured.interval
    worst, best = (upper, lower) if upper_bound else (lower, upper)
    ci = f"the whole 95% CI [{lower:.3f}, {upper:.3f}] is"
    if safe(worst):
        return "pass", f"{measured.reason}; {ci} {'below' if upper_bound else 'above'} {threshold:g}"
    if not safe(best):
        return "fail", f"{measured.reason}; {ci} {'above' if upper_bound else 'below'} {threshold:g}"
    return "inconclusive", (f"{measured.reason}; the 95% CI [{lower:.3f}, {upper:.3f}] contains {threshold:g}: "
                            f"this audit can rule out {'values above' if upper_bound else 'values below'} "
                            f"{worst:.3f} only (more patients or canaries narrow it)")


def _num(value: Any, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"policy rule {rule}: threshold must be a number, got {value!r}")
    return float(value)


def _combine(verdicts: list[str], on_inconclusive: str) -> str:
    """fail beats inconclusive beats pass; inconclusive counts as ``on_inconclusive`` says."""
    counted = [on_inconclusive if v == "inconclusive" else v for v in verdicts]
    if not counted or "fail" in counted:
        return "fail"
    return "inconclusive" if "inconclusive" in counted else "pass"


def outcome(rules: list[RuleResult], on_inconclusive: str = "fail") -> str:
    """The gate's overall verdict; an empty list fails (nothing was checked)."""
    return _combine([r.verdict for r in rules], on_inconclusive)


def passed(rules: list[RuleResult], on_inconclusive: str = "fail") -> bool:
    return outcome(rules, on_inconclusive) == "pass"


def model_outcomes(rules: list[RuleResult], on_inconclusive: str = "inconclusive") -> dict[str, str]:
    """model -> its verdict over its rules (run-level failures count against every model). By default the
    inconclusive ones stay visible as such, for the report."""
    run_level = [r.verdict for r in rules if r.model == "*"]
    per_model: dict[str, list[str]] = {}
    for r in rules:
        if r.model != "*":
            per_model.setdefault(r.model, list(run_level)).append(r.verdict)
    return {model: _combine(verdicts, on_inconclusive) for model, verdicts in per_model.items()}


def model_verdicts(rules: list[RuleResult], on_inconclusive: str = "fail") -> dict[str, bool]:
    """model -> whether every rule about it held (run-level failures count against every model)."""
    return {m: v == "pass" for m, v in model_outcomes(rules, on_inconclusive).items()}


def junit_xml(rules: list[RuleResult], policy: Policy) -> str:
    """JUnit XML, one test case per (model, rule), for CI systems' test reports. An inconclusive rule is a failure
    unless the policy's ``on_inconclusive`` is "pass"; its text says "inconclusive" either way."""
    failing = [_combine([r.verdict], policy.on_inconclusive) != "pass" for r in rules]
    suite = ET.Element("testsuite", name="cmraudit gate", tests=str(len(rules)), failures=str(sum(failing)),
                       errors="0")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="policy", value=policy.source)
    for r, fails in zip(rules, failing):
        case = ET.SubElement(suite, "testcase", classname=f"cmraudit.gate.{r.model}", name=r.rule)
        text = f"{r.verdict}: value {_fmt(r.value)} vs threshold {_fmt(r.threshold)}; {r.reason}".strip("; ")
        if fails:
            ET.SubElement(case, "failure", message=text, type="GateFailure").text = text
        else:
            ET.SubElement(case, "system-out").text = text
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else ("inf" if math.isinf(v) else f"{v:.4g}")
