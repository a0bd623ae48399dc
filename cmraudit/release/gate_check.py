"""Gate first: the policy's verdict on the one model to release, from the run's results.json.

A release goes ahead only when the model passes (an inconclusive verdict counts as the policy's
``on_inconclusive`` says, "fail" by default: a release fails closed like ``cmraudit gate``). ``force`` releases a
model that did not pass; the datasheet then says so at the top, with the rules it failed. An unknown model is a usage
error; a model that failed or is not finished is refused whatever ``force`` says (there is no audit to overrule).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from ..errors import RunError, UsageError
from ..gate import Policy, RuleResult, judge_model, outcome


@dataclass
class GateCheck:
    model: str
    outcome: str  # pass | fail | inconclusive, inconclusive counted as the policy's on_inconclusive says
    rules: list[RuleResult]
    policy: str  # where the policy came from
    on_inconclusive: str
    forced: bool = False  # released although it did not pass

    @property
    def blocking(self) -> list[RuleResult]:
        """The rules that kept the model from passing."""
        counts_as = {"pass": "pass", "fail": "fail", "inconclusive": self.on_inconclusive}
        return [r for r in self.rules if counts_as.get(r.verdict, "fail") != "pass"]

    def describe_blocking(self) -> str:
        return "; ".join(rule_summary(r) for r in self.blocking)


def rule_summary(rule: RuleResult) -> str:
    """``max_mia_auc inconclusive (0.71 vs 0.6)``, or the reason when the rule has no number."""
    if rule.value is not None and rule.threshold is not None:
        what = f"{rule.value:.4g} vs {'≤' if rule.rule.startswith('max') else '≥'} {rule.threshold:g}"
        if rule.interval is not None:
            what += f", 95% CI [{rule.interval[0]:.3f}, {rule.interval[1]:.3f}]"
    else:
        what = rule.reason or "no value"
    return f"{rule.rule} {rule.verdict} ({what})"


def model_entry(doc: dict[str, Any], model: str, run: str = "the run") -> dict[str, Any]:
    """The model's results.json record, audited and ok; UsageError for an unknown name, RunError otherwise."""
    models = doc.get("models") or {}
    if model not in models:
        raise UsageError(f"{run} has no model {model!r} (models: {', '.join(sorted(models)) or 'none'})")
    entry = models[model]
    if entry.get("status") == "failed":
        raise RunError(f"model {model} failed ({entry.get('error') or 'no error recorded'}): nothing to release")
    stages = entry.get("stages") or {}
    missing = [s for s in ("train", "sample", "audit") if not stages.get(s)]
    if entry.get("status") != "ok" or missing:
        raise RunError(f"model {model} is not finished ({', '.join(missing) or entry.get('status')} not done): "
                       f"finish it with `cmraudit run {run}` before releasing it")
    return entry


def check_gate(doc: dict[str, Any], model: str, policy: Policy, *, force: bool = False,
               run: str = "the run") -> GateCheck:
    """The model's verdict over every rule of ``policy``; RunError naming the rules unless it passes or ``force``."""
    entry = model_entry(doc, model, run)
    if policy.models is not None and not any(fnmatch.fnmatchcase(model, p) for p in policy.models):
        rules = [RuleResult("policy", model, "fail", reason=f"{policy.source} does not cover model {model} "
                            f"(models = {policy.models})")]
    else:
        rules = judge_model(model, entry, policy)
    if not rules:
        rules = [RuleResult("policy", model, "fail", reason=f"{policy.source} sets no threshold: nothing was checked")]
    check = GateCheck(model, outcome(rules, policy.on_inconclusive), rules, policy.source, policy.on_inconclusive)
    if check.outcome != "pass":
        if not force:
            raise RunError(f"model {model} did not pass its audit under the {policy.source} ({check.outcome}: "
                           f"{check.describe_blocking()}); not released (--force releases it anyway, and its "
                           f"datasheet says so)")
        check.forced = True
    return check
