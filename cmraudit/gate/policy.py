"""The gate's policy: which thresholds apply to which models, read from a TOML file or the built-in defaults.

Policy file (every key optional; ``false`` turns a rule off)::

    max_mia_auc = 0.60          # worst membership-inference AUC over the MIA attacks ...
    auc_on = "ci_upper"         # ... on its bootstrap CI upper bound ("point": the AUC itself)
    max_tpr_at_fpr = 0.05       # worst TPR at tpr_fpr, on its patient CI (the achieved FPR must resolve it)
    tpr_fpr = 0.01
    max_memorised_share = 0.05  # share of member patients with a memorised synthetic image
    max_epsilon = 10.0          # DP epsilon spent (a model trained without DP has epsilon = inf)
    min_tstr_dice = 0.70        # utility: segmenter trained on synthetic, tested on real
    on_inconclusive = "fail"    # what an inconclusive verdict counts as: "fail" (default), "pass" or
                                #  "inconclusive" (cmraudit gate then exits 3)
    models = ["diffusion-dp8"]  # which models the policy covers (default: every model in the results)
    [min_fidelity]              # metric value name -> bound (also max_fidelity, min_utility, max_utility,
    coverage = 0.5              #  min_metric, max_metric for any category)
    [models_policy."*-dp*"]     # thresholds for models matching a glob, on top of the ones above
    max_epsilon = 8.0
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .rules import RULES, TABLE_RULES

SCALAR_RULES = tuple(RULES)
OPTIONS = ("auc_on", "tpr_fpr", "on_inconclusive")
ON_INCONCLUSIVE = ("fail", "pass", "inconclusive")

#: the built-in policy (the same numbers as examples/policy.toml, where each one's source is cited)
DEFAULT_POLICY: dict[str, Any] = {
    "max_mia_auc": 0.60, "auc_on": "ci_upper", "on_inconclusive": "fail", "max_tpr_at_fpr": 0.05, "tpr_fpr": 0.01,
    "max_memorised_share": 0.05, "min_tstr_dice": 0.70, "min_fidelity": {"coverage": 0.5},
    "models_policy": {"*-dp*": {"max_epsilon": 10.0}},
}


@dataclass
class Policy:
    thresholds: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[str] | None = None
    source: str = "built-in policy"

    @property
    def on_inconclusive(self) -> str:
        return self.thresholds.get("on_inconclusive", "fail")

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
    if table.get("on_inconclusive", "fail") not in ON_INCONCLUSIVE:
        raise ConfigError(f"{where}: on_inconclusive must be one of {', '.join(map(repr, ON_INCONCLUSIVE))}")


def load_policy(path: Path | str | None) -> Policy:
    if path is None:
        return Policy.from_dict(DEFAULT_POLICY, "built-in policy")
    from ..toml_io import read_toml

    return Policy.from_dict(read_toml(Path(path)), str(path))
