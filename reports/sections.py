"""The built-in text and table sections of report.html (the picture sections are in ``galleries``). Each one
degrades to a note when its data is absent.

Sections get a ``cmraudit.reports.page.Report`` and return HTML built only from autoescaped templates
(``parts.html`` macros and the section templates), so names and errors from plugins cannot inject markup.
"""
from __future__ import annotations

from typing import Any

from cmraudit import results as R
from cmraudit.api import ReportSection

from . import figures
from .page import Cell, fmt, ok_models


class SummarySection(ReportSection):
    name = "summary"
    title = "Executive summary"
    order = 10

    def render(self, report) -> str:
        rows = []
        for model, entry in report.models.items():
            h = R.headline(entry)
            verdict = report.verdicts.get(model, "fail")
            failed = [r for r in report.rules if r.model == model and not r.passed]
            rows.append([model, entry.get("generator"), Cell(entry.get("status"), "fail" if entry.get("status") == "failed" else ""),
                         Cell(verdict, {"pass": "ok", "fail": "fail"}.get(verdict, "muted")),
                         "; ".join(_rule_text(r) for r in failed[:3]) + (f" (+{len(failed) - 3} more)" if len(failed) > 3 else "")
                         or "–",
                         fmt(h["epsilon"] if h["epsilon"] is not None else float("inf")), fmt(h["auc"]),
                         fmt(h["tstr_dice"])])
        run_rules = [r for r in report.rules if r.model == "*" and not r.passed]
        table = report.part("table", ["model", "generator", "status", "policy", "rules not passed", "ε", "worst MIA AUC",
                                      "TSTR Dice"], rows)
        return report.render("summary.html", table=table, run_rules=run_rules, frontier=self._frontier(report))

    def _frontier(self, report) -> str | None:
        points, ylabel = [], None
        for model in ok_models(report):
            h = R.headline(report.models[model])
            values = R.metric_values(report.models[model])
            for key, label in (("tstr_dice", "utility: TSTR Dice"), ("coverage", "fidelity: coverage"),
                               ("precision", "fidelity: precision")):
                if ylabel in (None, label) and values.get(key, {}).get("value") is not None and h["auc"] is not None:
                    ylabel = label
                    points.append((model, h["auc"], values[key]["value"], report.verdicts.get(model) == "pass"))
                    break
        if not points:
            return None
        return figures.frontier_uri(points, "privacy risk: worst MIA AUC (0.5 = chance)", ylabel)


def _rule_text(rule) -> str:
    if rule.value is None:
        return f"{rule.rule}: {rule.reason}"
    bound = "≤" if rule.rule.startswith("max") else "≥"
    return f"{rule.rule} {rule.verdict} {fmt(rule.value)} (needs {bound} {fmt(rule.threshold)}; {rule.reason})"


class ComparisonSection(ReportSection):
    name = "comparison"
    title = "Comparison across models"
    order = 20

    def render(self, report) -> str:
        if not report.models:
            return report.note("No model in the results.")
        models = list(report.models)
        rows = []
        for model, entry in report.models.items():
            h, tr = R.headline(entry), entry.get("training") or {}
            eps = (tr.get("dp") or {}).get("epsilon") if tr.get("dp") else (float("inf") if tr else None)
            rows.append([model, entry.get("generator"), entry.get("status"), fmt(eps), fmt(tr.get("steps")),
                         fmt(tr.get("seconds")), fmt(h["auc"]), fmt(h["auc_ci"]), h["worst_attack"] or "–",
                         fmt(h["tpr_at_1pct"]) + (f" {fmt(h['tpr_at_1pct_ci'])}" if h["tpr_at_1pct_ci"] else "")])
        headline = report.part("table", ["model", "generator", "status", "ε", "steps", "train s", "worst MIA AUC",
                                         "95% CI", "worst attack", "its TPR@1%FPR"], rows)
        metric_names = sorted({n for e in report.models.values() for n in R.metric_values(e)})
        metric_rows = [[name, "↑ higher" if _direction(report, name) == "higher" else "↓ lower",
                        *[_value_cell(R.metric_values(report.models[m]).get(name)) for m in models]]
                       for name in metric_names]
        attack_names = sorted({a for e in report.models.values() for a in (e.get("attacks") or {})})
        attack_rows = [[a, *[_attack_cell((report.models[m].get("attacks") or {}).get(a)) for m in models]]
                       for a in attack_names]
        return report.render(
            "comparison.html", table=headline,
            metrics=report.part("table", ["metric", "better", *models], metric_rows) if metric_rows else None,
            attacks=report.part("table", ["attack", *models], attack_rows) if attack_rows else None,
            plugins=_plugin_rows(report))


def _value_cell(value: dict | None) -> Cell:
    if not value:
        return Cell("–", "muted")
    ci = f" {fmt(value['ci'])}" if value.get("ci") else ""
    return Cell(f"{fmt(value.get('value'))}{ci}")


def _direction(report, name: str) -> str:
    for entry in report.models.values():
        if name in R.metric_values(entry):
            return R.metric_values(entry)[name].get("direction", "higher")
    return "higher"


def _attack_cell(entry: dict | None) -> Cell:
    if not entry:
        return Cell("not run", "muted")
    if entry.get("status") == "ok":
        tpr = (R.tpr_at(entry, 0.01) or {})
        res = "" if tpr.get("resolvable", True) else " (unresolvable)"
        ci = f" {fmt(tpr['ci'])}" if tpr.get("ci") else ""
        return Cell(f"AUC {fmt(entry.get('auc'))} {fmt(entry.get('auc_ci'))}; TPR@1% {fmt(tpr.get('tpr'))}{ci}{res}")
    if entry.get("status") == "skipped":
        return Cell(f"skipped: {entry.get('reason')}", "muted")
    return Cell(f"failed: {entry.get('error')}", "fail")


class VerdictSection(ReportSection):
    name = "verdicts"
    title = "Membership verdicts and the power behind them"
    order = 15

    def render(self, report) -> str:
        rows = []
        for model, entry in report.models.items():
            claimed = ((entry.get("training") or {}).get("dp") or {}).get("epsilon")
            for name, attack in (entry.get("attacks") or {}).items():
                if attack.get("status") != "ok" or attack.get("kind", "mia") != "mia":
                    continue
                null, canaries = attack.get("null") or {}, attack.get("canaries") or {}
                verdict = attack.get("verdict") or {}
                one_run = (canaries.get("one_run_eps") or {}).get("epsilon")
                eps_cell = Cell("–", "muted") if one_run is None else Cell(
                    f"{fmt(one_run)}" + (f" (accountant {fmt(claimed)})" if claimed is not None else ""),
                    "fail" if claimed is not None and one_run > claimed else "")
                rows.append([model, name, f"{fmt(attack.get('auc'))} {fmt(attack.get('auc_ci'))}",
                             _side_cell(null), _side_cell(canaries), eps_cell,
                             Cell(verdict.get("verdict", "–"), {"pass": "ok", "fail": "fail"}.get(
                                 verdict.get("verdict"), "muted")), verdict.get("reason", "")])
        if not rows:
            return report.note("No membership attack finished.")
        table = report.part("table", ["model", "attack", "patients: AUC [95% CI]", "null baseline (no leak possible)",
                                      "canaries: AUC [95% CI]", "canary ε lower bound", "verdict", "why"], rows)
        return table + report.note(
            "The null baseline is the attack's AUC when the test patients' own real slices stand in for the "
            "synthetic set: nothing can leak, so any distance from 0.5 is the draw of this split, shared by every "
            "model audited on it. Canaries are extra patients each trained on with probability ½; their audit has "
            "the power the real patients lack, and its one-run ε lower bound (Steinke et al. 2023) must stay at or "
            "below a DP model's ε.")


def _side_cell(block: dict) -> Cell:
    if not block:
        return Cell("–", "muted")
    if block.get("status") != "ok":
        return Cell(f"failed: {block.get('error')}", "fail")
    return Cell(f"{fmt(block.get('auc'))} {fmt(block.get('auc_ci'))}")


def _plugin_rows(report) -> list[list[Any]]:
    seen: dict[str, list[Any]] = {}
    for entry in report.models.values():
        for kind in ("attacks", "metrics"):
            for name, e in (entry.get(kind) or {}).items():
                seen.setdefault(name, [name, kind[:-1], e.get("kind") or e.get("category"), e.get("plugin"),
                                       e.get("reference") or "–"])
    return sorted(seen.values())


class PrivacySection(ReportSection):
    name = "dp"
    title = "Differential privacy parameters"
    order = 80

    def render(self, report) -> str:
        keys = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "accountant", "unit")
        rows = []
        for model, entry in report.models.items():
            training = entry.get("training") or {}
            dp, public = training.get("dp"), training.get("public_pretraining")
            if dp:
                before = (f"{public['data']}: {public['patients']} patients, {public['steps']} steps"
                          if public else Cell("none", "muted"))
                rows.append([model, *[fmt(dp.get(k)) for k in keys], before])
            else:
                rows.append([model, Cell("no DP (ε = ∞)", "muted"), *[""] * len(keys)])
        if not rows:
            return report.note("No model was trained.")
        table = report.part("table", ["model", "ε", "δ", "σ (noise multiplier)", "q (sample rate)", "steps",
                                      "C (clip)", "accountant", "privacy unit", "public pretraining"], rows)
        return table + report.note("A DP model with public pretraining was first trained without DP on that public "
                                   "data (no audited patient in it), then with DP-SGD on the members: ε covers the "
                                   "members.")


class ConfigSection(ReportSection):
    name = "config"
    title = "Data, environment and exact configuration"
    order = 90

    def render(self, report) -> str:
        data = report.results.get("data") or {}
        roles = list((data.get("split") or {}).keys())
        split_rows = [[role, fmt(data["split"][role]), fmt((data.get("split_slices") or {}).get(role)),
                       ", ".join(f"{k}: {v}" for k, v in sorted(((data.get("by_vendor") or {}).get(role) or {}).items())),
                       ", ".join(f"{k}: {v}" for k, v in sorted(((data.get("by_pathology") or {}).get(role) or {}).items()))]
                      for role in roles]
        env_rows = [[k, fmt(v)] for k, v in (report.results.get("environment") or {}).items()]
        return report.render("config.html", data=data,
                             split=report.part("table", ["role", "patients", "slices", "by vendor", "by pathology"], split_rows),
                             env=report.part("table", ["", "value"], env_rows))
