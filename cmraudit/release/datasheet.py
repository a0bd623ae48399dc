"""The datasheet that travels with a released synthetic cohort: datasheet.json (everything) and datasheet.md (the
same, for people). It holds counts, settings and verdicts, never a patient id: ``scrub`` replaces any real id that
reached the text (a bug upstream, not a normal path) before anything is written.

Sections, following "Datasheets for Datasets" (Gebru et al. 2021) where they apply: the release (date, exact
command, versions), a warning when the model failed its audit and was released anyway, the generator, the training
data (source, patients and slices per split role, by vendor and pathology), differential privacy, public
pretraining, canaries, the audit's verdicts with their power, the privacy filter and what it cost, and the cohort
(with what its masks are: real patients' masks).
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable

from ..gate import Policy, RuleResult, judge_attack

DATASHEET_SCHEMA = "cmraudit.datasheet/1"


def rule_record(rule: RuleResult) -> dict[str, Any]:
    return {"rule": rule.rule, "verdict": rule.verdict, "value": rule.value, "threshold": rule.threshold,
            "ci": list(rule.interval) if rule.interval else None, "reason": rule.reason}


def _ci(block: dict[str, Any] | None) -> dict[str, Any] | None:
    if not block or block.get("auc") is None:
        return None
    return {"auc": block.get("auc"), "auc_ci": block.get("auc_ci")}


def attack_records(entry: dict[str, Any], policy: Policy, model: str) -> dict[str, Any]:
    """Per attack: status, and for those that ran the AUC with its CI on patients and canaries, the null baseline
    and (MIA attacks) the verdict with its reason. Patient lists in ``details`` are left out."""
    out: dict[str, Any] = {}
    for name, attack in sorted((entry.get("attacks") or {}).items()):
        rec: dict[str, Any] = {"kind": attack.get("kind"), "status": attack.get("status"),
                               "reference": attack.get("reference")}
        if attack.get("status") == "skipped":
            rec["reason"] = attack.get("reason")
        elif attack.get("status") == "failed":
            rec["error"] = attack.get("error")
        else:
            rec["level"] = attack.get("level")
            rec["patients"] = _ci(attack.get("patient"))
            rec["slices"] = _ci(attack) if attack.get("level") == "slice" else None
            canaries = attack.get("canaries") or {}
            rec["canaries"] = ({**_ci(canaries), "n_in": canaries.get("n_in"), "n_out": canaries.get("n_out"),
                                "one_run_eps": (canaries.get("one_run_eps") or {}).get("epsilon")}
                               if canaries.get("status") == "ok" else
                               ({"status": canaries.get("status"), "error": canaries.get("error")} if canaries
                                else None))
            null = attack.get("null") or {}
            rec["null_baseline"] = ({**(_ci(null.get("patient")) or {}), "synthetic": null.get("synthetic")}
                                    if null.get("status") == "ok" else None)
            verdict = judge_attack(attack, policy, model)
            recorded = attack.get("verdict") or {}
            if verdict is not None:
                rec.update(verdict=verdict.verdict, verdict_reason=verdict.reason, verdict_policy=policy.source)
            elif recorded.get("verdict"):  # the release's policy has no MIA rule: the audit's own verdict
                rec.update(verdict=recorded["verdict"], verdict_reason=recorded.get("reason"),
                           verdict_policy=f"{recorded.get('policy') or 'built-in policy'}, as recorded by the audit")
            memorised = (attack.get("details") or {}).get("memorised")
            if isinstance(memorised, dict):
                rec["memorised"] = {k: memorised.get(k) for k in ("share", "n", "of", "patients_share")}
        out[name] = rec
    return out


def scrub(text: str, real_ids: Iterable[str]) -> tuple[str, int]:
    """``text`` with every real patient id replaced by ``[patient]``, and how many were replaced."""
    ids = sorted({i for i in real_ids if i}, key=len, reverse=True)
    if not ids:
        return text, 0
    pattern = re.compile(r"(?<![A-Za-z0-9_-])(" + "|".join(map(re.escape, ids)) + r")(?![A-Za-z0-9_-])")
    return pattern.subn("[patient]", text)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def to_json(sheet: dict[str, Any]) -> str:
    return json.dumps(sheet, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"


# ------------------------------------------------------------------------------------------------ markdown
def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{_f(value[0], 3)}, {_f(value[1], 3)}]"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_f(v)}" for k, v in value.items()) or "–"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(sheet: dict[str, Any]) -> str:
    rel, gen, data, audit, cohort = (sheet["release"], sheet["generator"], sheet["training_data"], sheet["audit"],
                                     sheet["cohort"])
    md = [f"# Datasheet: synthetic cardiac MRI cohort from model `{rel['model']}`", ""]
    if audit["forced"]:
        failed = "FAILED" if audit["outcome"] == "fail" else "did NOT PASS"
        md += [f"> **WARNING: this model {failed} its privacy audit ({audit['outcome']} under the {audit['policy']}) "
               "and was released anyway with `--force`.** Rules it did not pass:", ">"]
        md += [f"> - **{r['rule']}**: {r['verdict']} — {_f(r['reason'])} (value {_f(r['value'])}, threshold "
               f"{_f(r['threshold'])})" for r in audit["blocking_rules"]]
        md += [""]
    md += [f"Released {rel['date']} with cmraudit {rel['cmraudit']} (torch {rel['torch']}).", "",
           f"    {rel['command']}", "",
           f"Cohort: {cohort['patients']} synthetic patients, {cohort['slices']} slices, ACDC layout in "
           f"`{cohort['folder']}/` (read it with `{cohort['inspect']}`).", "",
           f"Beside it: {rel['report']}.", "",
           "## Masks (stencils)", "", cohort["masks_statement"], ""]
    md += ["## Generator", ""]
    md += _table(["", ""], [["model", rel["model"]], ["generator plugin", gen["generator"]], ["family", gen["family"]],
                            ["training steps", gen["steps"]], ["training time (s)", gen["seconds"]],
                            ["device", gen["device"]], ["generator config", _compact(gen["generator_config"])],
                            ["train config", _compact(gen["train_config"])]])
    md += ["## Training data", "", f"Source `{data['source']}`, {data['image_size']}×{data['image_size']} slices. "
           "Patients and slices per role of the patient-level split (members were trained on):", ""]
    md += _table(["role", "patients", "slices", "by vendor", "by pathology"],
                 [[role, n, data["slices"].get(role), data["by_vendor"].get(role), data["by_pathology"].get(role)]
                  for role, n in data["patients"].items()])
    dp = sheet["privacy"]["dp"]
    md += ["## Differential privacy", ""]
    if dp is None:
        md += ["**No DP**: trained without differential privacy (ε = ∞).", ""]
    else:
        md += _table(["ε", "δ", "σ (noise multiplier)", "q (sample rate)", "steps", "clip C", "accountant", "unit"],
                     [[dp.get("epsilon"), dp.get("delta"), dp.get("noise_multiplier"), dp.get("sample_rate"),
                       dp.get("steps"), dp.get("max_grad_norm"), dp.get("accountant"), dp.get("unit")]])
    composed = sheet["privacy"].get("cohort")
    if composed:  # two-stage generation: the masks' DP model and the images' were trained on the same members
        md += [f"**The cohort as a whole: ε = {_f(composed.get('epsilon'))}, δ = {_f(composed.get('delta'))}** — "
               f"its masks come from the DP mask model `{composed.get('mask_model')}` (ε = "
               f"{_f(composed.get('mask_epsilon'))}) and its images from this model (ε = "
               f"{_f(composed.get('image_epsilon'))}), both trained on the same patients, composed by "
               f"{composed.get('composition')}"
               + (f" (adding the two, basic composition, gives ε = {_f(composed.get('basic_epsilon'))})."
                  if composed.get("basic_epsilon") not in (None, composed.get("epsilon")) else "."), ""]
    pre = sheet["privacy"]["public_pretraining"]
    md += ["Public pretraining: " + ("none." if not pre else
           f"`{pre.get('data')}`, {_f(pre.get('patients'))} patients, {_f(pre.get('slices'))} slices, "
           f"{_f(pre.get('steps'))} steps (public data, no privacy cost)."), ""]
    can = sheet["privacy"]["canaries"]
    md += ["Canaries: " + ("none." if not can else f"{_f(can.get('patients'))} canary patients from "
           f"`{can.get('source')}`, {_f(can.get('in'))} trained on, {_f(can.get('out'))} held out."), ""]
    md += [f"## Audit: {audit['outcome'].upper()} under the {audit['policy']}", "",
           f"Inconclusive counts as {audit['on_inconclusive']}.", ""]
    md += _table(["rule", "verdict", "value", "threshold", "95% CI", "reason"],
                 [[r["rule"], r["verdict"], r["value"], r["threshold"], r["ci"], r["reason"]] for r in audit["rules"]])
    rows = []
    for name, a in audit["attacks"].items():
        if a["status"] != "ok":
            rows.append([name, a["kind"], a["status"], a.get("reason") or a.get("error"), "", "", "", ""])
            continue
        pat, can, null = a.get("patients") or {}, a.get("canaries") or {}, a.get("null_baseline") or {}
        verdict = f"{a['verdict']} ({a['verdict_policy']})" if a.get("verdict") else "–"
        rows.append([name, a["kind"], verdict, a.get("verdict_reason", ""),
                     f"{_f(pat.get('auc'))} {_f(pat.get('auc_ci'))}",
                     f"{_f(can.get('auc'))} {_f(can.get('auc_ci'))}" if can.get("auc") is not None else "–",
                     f"{_f(null.get('auc'))} {_f(null.get('auc_ci'))}" if null.get("auc") is not None else "–",
                     _f(a.get("memorised")) if a.get("memorised") else ""])
    md += ["Attacks (AUC with 95% CI; patients: per real patient, canaries: per canary, null: the test patients' "
           "own slices in place of the synthetic set):", ""]
    md += _table(["attack", "kind", "verdict", "reason", "AUC patients", "AUC canaries", "null baseline",
                  "memorised"], rows)
    filt = sheet["filter"]
    md += ["## Privacy filter", ""]
    if not filt["applied"]:
        md += ["Not applied: every synthetic image the model sampled is released.", ""]
    else:
        md += [f"Removed {filt['removed']} of {filt['images']} synthetic images ({100 * filt['removed_share']:.1f}%), "
               f"kept {filt['kept']}.", ""]
        md += [f"- `{a}` ran: flagged {filt['flagged_by'][a]} ({filt['flagged_only_by'][a]} by it alone) — "
               f"{filt['meaning'][a]}" for a in filt["attacks_used"]]
        md += [f"- `{a}` did not run ({why}): its flags are not applied" for a, why in filt["attacks_not_run"].items()]
        md += [f"- flagged by more than one attack: {filt['flagged_by_several']}", ""]
    md += [f"Synthetic patients dropped for lacking ED or ES: {cohort['dropped_patients_without_ed_or_es']} "
           f"(emptied by the filter: {cohort['patients_emptied_by_filter']}); slices dropped because the other "
           f"phase lacked their position: {cohort['dropped_slices_without_partner_phase']}.", ""]
    md += ["## Fidelity and utility" + (" before and after the filter" if filt["applied"] else ""), ""]
    header = ["metric", "value", "direction", "before"] + (["after", "note"] if filt["applied"] else [])
    md += _table(header, [[r["metric"], r["value"], r["direction"], r["before"]] +
                          ([r.get("after"), r.get("after_note", "")] if filt["applied"] else [])
                          for r in sheet["metrics"]])
    md += ["## Cohort", ""]
    md += _table(["", ""], [["synthetic patients", cohort["patients"]], ["slices", cohort["slices"]],
                            ["by vendor (patients)", cohort["vendors"]],
                            ["by pathology (patients)", cohort["pathologies"]],
                            ["ids", cohort["ids"]], ["spacing (mm)", cohort["spacing_mm"]]])
    md += ["## Versions", ""]
    md += _table(["package", "audit (results.json)", "this release"],
                 [[k, sheet["versions"]["audit"].get(k), sheet["versions"]["release"].get(k, "")]
                  for k in sorted(set(sheet["versions"]["audit"]) | set(sheet["versions"]["release"]))])
    return "\n".join(md)
