"""The CI gate: a thresholds policy (TOML) applied to a results.json, a verdict with its reason per rule.

Each rule's verdict is ``pass`` (the audit shows the number on the safe side of the threshold), ``fail`` (it shows
it on the wrong side) or ``inconclusive`` (for membership inference: the confidence interval straddles the
threshold, so this audit had too little power to tell). The gate fails closed: a rule whose number is missing
(metric not run, attack crashed or skipped everywhere, TPR@FPR unresolvable, model failed) and a results file from an
unfinished run are failures with their reason, never passes. Inconclusive verdicts count as the policy's
``on_inconclusive`` says ("fail" by default, so a CI pipeline stays fail-closed; "inconclusive" makes
``cmraudit gate`` exit 3; "pass" lets them through).

``policy`` reads and checks policy files (the format is in its docstring), ``rules`` measures each rule on a model,
``verdicts`` turns rule results into the gate's outcome, per model and overall, and JUnit XML.
"""
from __future__ import annotations

from .policy import DEFAULT_POLICY, Policy, load_policy
from .verdicts import (
                       EXIT_CODES,
                       RuleResult,
                       evaluate,
                       judge_attack,
                       judge_model,
                       junit_xml,
                       model_outcomes,
                       model_verdicts,
                       outcome,
                       passed,
)

__all__ = ["DEFAULT_POLICY", "EXIT_CODES", "Policy", "RuleResult", "evaluate", "junit_xml", "load_policy",
           "judge_attack", "judge_model", "model_outcomes", "model_verdicts", "outcome", "passed"]
