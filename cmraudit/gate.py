"""The CI gate: a thresholds policy (TOML) applied to a results.json, pass/fail with a reason per rule.

The gate fails closed. A rule whose number is missing (metric not run, attack crashed or skipped everywhere,
TPR@FPR unresolvable with this many non-members, model failed), and a results file from an unfinished run, are
failures with their reason, never passes: an audit that did not happen must not read as an audit that passed.

Policy file (every key optional; ``false`` turns a rule off)::

    max_mia_auc = 0.60          # worst membership-inference AUC over the MIA attacks ...
    auc_on = "ci_upper"         # ... on its bootstrap CI upper bound ("point": the AUC itself)
    max_tpr_at_fpr = 0.05       # worst TPR at tpr_fpr (the achieved FPR must resolve it)
    tpr_fpr = 0.01
    max_memorised_share = 0.05  # share of member patients with a memorised synthetic image
    max_epsilon = 10.0          # DP epsilon spent (a model trained without DP has epsilon = inf)
    min_tstr_dice = 0.70        # utility: segmenter trained on synthetic, tested on real
    models = ["diffusion-dp8"]  # which models the policy covers (default: every model in the results)
    [min_fidelity]              # metric value name -> bound (also max_fidelity, min_utility, max_utility,
    coverage = 0.5              #  min_metric, max_metric for any category)
    [models_policy."*-dp*"]     # thresholds for models matching a glob, on top of the ones above
    max_epsilon = 8.0
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from . import results as R
from .errors import ConfigError

SCALAR_RULES = ("max_mia_auc", "max_tpr_at_fpr", "max_memorised_share", "max_epsilon", "min_tstr_dice")
TABLE_RULES = {"min_fidelity": ("min", "fidelity"), "max_fidelity": ("max", "fidelity"),
               "min_utility": ("min", "utility"), "max_utility": ("max", "utility"),
               "min_metric": ("min", None), "max_metric": ("max", None)}
OPTIONS = ("auc_on", "tpr_fpr")
#: where a memorisation attack's details hold the share of member patients with a memorised synthetic image
MEMORISED_SHARE_PATH = ("memorised", "patients_share")

#: the built-in policy (the same numbers as examples/policy.toml, where each one's source is cited)
DEFAULT_POLICY: dict[str, Any] = {
    "max_mia_auc": 0.60, "auc_on": "ci_upper", "max_tpr_at_fpr": 0.05, "tpr_fpr": 0.01,
    "max_memorised_share": 0.05, "min_tstr_dice": 0.70, "min_fidelity": {"coverage": 0.5},
    "models_policy": {"*-dp*": {"max_epsilon": 10.0}},
}


@dataclass
class RuleResult:
    rule: str
    model: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    reason: str = ""


@dataclass
class Policy:
    thresholds: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[str] | None = None
    source: str = "built-in policy"

    @classmethod
    def from_dict(cls, table: dict[str, Any], source: str = "policy") -> "Policy":
        table = dict(table)
        per_model = table.pop("models_policy", {})
        models = table.pop("models", None)
        _check_keys(table, source)
        for pattern, sub in per_model.items():
            _check_keys(sub, f"{source} [models_policy.{pattern!r}]")
        if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
            raise ConfigError(f"{source}: models must be a list of model names or globs")
        return cls(table, dict(per_model), models, source)

    def with_overrides(self, **flags: Any) -> "Policy":
        """Command-line thresholds replace the file's top-level ones (None: not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        _check_keys(given, "command line")
        return Policy({**self.thresholds, **given}, self.per_model, self.models, self.source)

    def for_model(self, model: str) -> dict[str, Any]:
        merged = dict(self.thresholds)
        for pattern, sub in self.per_model.items():
            if fnmatch.fnmatchcase(model, pattern):
                for key, value in sub.items():
                    merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
        return merged


def _check_keys(table: dict[str, Any], where: str) -> None:
    unknown = set(table) - set(SCALAR_RULES) - set(TABLE_RULES) - set(OPTIONS)
    if unknown:
        known = ", ".join([*SCALAR_RULES, *TABLE_RULES, *OPTIONS, "models", "models_policy"])
        raise ConfigError(f"{where}: unknown policy key(s) {', '.join(sorted(unknown))}; known: {known}")
    if table.get("auc_on", "ci_upper") not in ("ci_upper", "point"):
        raise ConfigError(f"{where}: auc_on must be 'ci_upper' or 'point'")


def load_policy(path: Path | str | None) -> Policy:
    if path is None:
        return Policy.from_dict(DEFAULT_POLICY, "built-in policy")
    from .toml_io import read_toml

    return Policy.from_dict(read_toml(Path(path)), str(path))


# --------------------------------------------------------------------------------------------------- evaluation
def evaluate(doc: dict[str, Any], policy: Policy) -> list[RuleResult]:
    """Every rule of the policy for every covered model; fail-closed on anything missing."""
    out: list[RuleResult] = []
    if doc.get("status") != "complete":
        out.append(RuleResult("run complete", "*", False, reason=f"results file is from an unfinished run "
                              f"(status {doc.get('status')!r}); finish it with `cmraudit run` on the same folder"))
    models = doc.get("models") or {}
    covered = sorted(models)
    if policy.models is not None:
        covered = [m for m in covered if any(fnmatch.fnmatchcase(m, p) for p in policy.models)]
        for pattern in policy.models:
            if not any(fnmatch.fnmatchcase(m, pattern) for m in models):
                out.append(RuleResult("model present", pattern, False, reason="no such model in the results"))
    if not covered:
        out.append(RuleResult("model present", "*", False, reason="the results hold no model to gate"))
    checked = []
    for model in covered:
        checked.extend(_model_rules(model, models[model], policy.for_model(model)))
    if covered and not checked:
        out.append(RuleResult("policy", "*", False, reason=f"{policy.source} sets no threshold: nothing was checked"))
    return out + checked


def _model_rules(name: str, model: dict[str, Any], rules: dict[str, Any]) -> list[RuleResult]:
    out = []
    active = [(k, v) for k, v in rules.items() if k in SCALAR_RULES and v is not False]
    for key, table_rule in ((k, v) for k, v in rules.items() if k in TABLE_RULES and isinstance(v, dict)):
        active.extend((f"{key}.{metric}", bound) for metric, bound in table_rule.items() if bound is not False)
    for rule, threshold in active:
        if model.get("status") != "ok":
            reason = f"model {model.get('status')}: {model.get('error') or 'not finished'}"
            out.append(RuleResult(rule, name, False, None, _num(threshold, rule), reason))
            continue
        value, reason = _measure(rule, model, rules)
        threshold = _num(threshold, rule)
        if value is None:
            out.append(RuleResult(rule, name, False, None, threshold, reason))
            continue
        passed = value <= threshold if rule.startswith("max") else value >= threshold
        out.append(RuleResult(rule, name, passed, value, threshold, reason))
    return out


def _num(value: Any, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"policy rule {rule}: threshold must be a number, got {value!r}")
    return float(value)


def _attacks(model: dict[str, Any], kind: str) -> tuple[list[tuple[str, dict]], str | None]:
    """The ok attacks of one kind, or None and the reason the rule cannot be checked (fail closed)."""
    entries = [(n, a) for n, a in (model.get("attacks") or {}).items() if a.get("kind", "mia") == kind]
    failed = [f"{n}: {a.get('error')}" for n, a in entries if a.get("status") == "failed"]
    if failed:
        return [], "attack failed — " + "; ".join(failed)
    ok = [(n, a) for n, a in entries if a.get("status") == "ok"]
    if not ok:
        return [], f"no {kind} attack result (none ran, or all were skipped)"
    return ok, None


def _measure(rule: str, model: dict[str, Any], rules: dict[str, Any]) -> tuple[float | None, str]:
    """(value, explanation) for one rule; value None means the rule cannot be checked."""
    if rule == "max_mia_auc":
        attacks, why = _attacks(model, "mia")
        if why:
            return None, why
        on_ci = rules.get("auc_on", "ci_upper") == "ci_upper"
        values = []
        for n, a in attacks:
            v = (a.get("auc_ci") or [None, None])[1] if on_ci else a.get("auc")
            if v is None:
                return None, f"{n}: no {'AUC CI upper bound' if on_ci else 'AUC'} recorded"
            values.append((v, n))
        v, n = max(values)
        return v, f"worst: {n} ({'CI upper bound' if on_ci else 'AUC'})"
    if rule == "max_tpr_at_fpr":
        fpr = float(rules.get("tpr_fpr", 0.01))
        attacks, why = _attacks(model, "mia")
        if why:
            return None, why
        values = []
        for n, a in attacks:
            entry = R.tpr_at(a, fpr)
            if entry is None or entry.get("tpr") is None:
                return None, f"{n}: no TPR at FPR {fpr:g} recorded"
            if not entry.get("resolvable", False):
                return None, f"{n}: TPR at FPR {fpr:g} is unresolvable (too few non-members)"
            values.append((entry["tpr"], n))
        v, n = max(values)
        return v, f"worst: {n} at FPR {fpr:g}"
    if rule == "max_memorised_share":
        attacks, why = _attacks(model, "memorization")
        if why:
            return None, why
        values = []
        for n, a in attacks:
            share: Any = a.get("details") or {}
            for key in MEMORISED_SHARE_PATH:
                share = share.get(key) if isinstance(share, dict) else None
            if isinstance(share, (int, float)):
                values.append((float(share), n))
        if not values:
            return None, "no memorisation attack recorded a memorised-patient share"
        v, n = max(values)
        return v, f"worst: {n}"
    if rule == "max_epsilon":
        training = model.get("training")
        if not training:
            return None, "no training record"
        eps = (training.get("dp") or {}).get("epsilon")
        return (math.inf, "trained without differential privacy") if eps is None else (eps, "DP accountant")
    name, category = ("tstr_dice", "utility") if rule == "min_tstr_dice" else (rule.split(".", 1)[1], TABLE_RULES[rule.split(".", 1)[0]][1])
    values = R.metric_values(model, category)
    if name not in values or values[name].get("value") is None:
        failed = [f"{p}: {e.get('error') or e.get('reason')}" for p, e in (model.get("metrics") or {}).items()
                  if e.get("status") != "ok" and (category is None or e.get("category") == category)]
        return None, f"metric {name!r} missing" + (" — " + "; ".join(failed) if failed else "")
    return values[name]["value"], f"from {values[name]['metric']}"


def passed(rules: list[RuleResult]) -> bool:
    return bool(rules) and all(r.passed for r in rules)


def model_verdicts(rules: list[RuleResult]) -> dict[str, bool]:
    """model -> whether every rule about it held (run-level failures count against every model)."""
    run_ok = all(r.passed for r in rules if r.model == "*")
    verdicts: dict[str, bool] = {}
    for r in rules:
        if r.model != "*":
            verdicts[r.model] = verdicts.get(r.model, run_ok) and r.passed
    return verdicts


def junit_xml(rules: list[RuleResult], policy: Policy) -> str:
    """JUnit XML, one test case per (model, rule), for CI systems' test reports."""
    failures = sum(not r.passed for r in rules)
    suite = ET.Element("testsuite", name="cmraudit gate", tests=str(len(rules)), failures=str(failures), errors="0")
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="policy", value=policy.source)
    for r in rules:
        case = ET.SubElement(suite, "testcase", classname=f"cmraudit.gate.{r.model}", name=r.rule)
        text = f"value {_fmt(r.value)} vs threshold {_fmt(r.threshold)}; {r.reason}".strip("; ")
        if r.passed:
            ET.SubElement(case, "system-out").text = text
        else:
            ET.SubElement(case, "failure", message=text, type="GateFailure").text = text
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else ("inf" if math.isinf(v) else f"{v:.4g}")
