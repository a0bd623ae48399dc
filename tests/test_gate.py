"""The gate: pass, fail and fail-closed verdicts, per-model policies, JUnit XML and the example policy."""
from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import tomllib

from cmraudit import results as R
from cmraudit.errors import ConfigError
from cmraudit.gate import DEFAULT_POLICY, Policy, evaluate, junit_xml, load_policy, model_verdicts, passed

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def attack(auc: float, ci_hi: float, tpr: float = 0.02, resolvable: bool = True, kind: str = "mia",
           tpr_ci: tuple[float, float] | None = None, **details):
    tpr_ci = tpr_ci or (max(tpr - 0.02, 0.0), tpr + 0.02)
    return {"status": "ok", "kind": kind, "auc": auc, "auc_ci": [auc - 0.05, ci_hi], "scores": "scores/x.npz",
            "tpr_at_fpr": {"0.01": {"tpr": tpr, "achieved_fpr": 0.01, "resolvable": resolvable, "ci": list(tpr_ci)}},
            "details": details}


def model(epsilon: float | None = None, **changes):
    m = R.new_model("m", "diffusion", "diffusion", epsilon)
    m.update(status="ok", stages={"train": True, "sample": True, "audit": True},
             training={"steps": 10, "seconds": 1.0, "dp": {"epsilon": epsilon, "delta": 1e-5} if epsilon else None},
             samples={"path": "models/m/samples.npz", "n": 4, "mask_source": "reference"},
             attacks={"loss": attack(0.52, 0.58), "memorization": attack(0.5, 0.55, kind="memorization",
                                                                           memorised={"patients_share": 0.0})},
             metrics={"utility": {"status": "ok", "category": "utility",
                                  "values": {"tstr_dice": {"value": 0.8, "direction": "higher"}}},
                      "fidelity": {"status": "ok", "category": "fidelity",
                                   "values": {"coverage": {"value": 0.9, "direction": "higher"}}}})
    m.update(changes)
    return m


def document(**models):
    doc = R.new_document({"seed": 0, "profile": "smoke"}, {"python": "3", "device": "cpu"},
                         {"source": "phantom", "image_size": 32, "split": {"members": 4}})
    doc["models"] = models
    doc["status"] = "complete"
    return doc


def failures(doc, policy=None):
    return {(r.model, r.rule): r.reason for r in evaluate(doc, policy or load_policy(None)) if not r.passed}


def test_a_good_run_passes_the_default_policy():
    doc = document(diffusion=model(), **{"diffusion-dp8": model(7.9)})
    R.validate(R.jsonable(doc))
    rules = evaluate(doc, load_policy(None))
    assert passed(rules), [r for r in rules if not r.passed]
    assert {r.rule for r in rules if r.model == "diffusion-dp8"} >= {"max_epsilon", "max_mia_auc", "min_tstr_dice",
                                                                      "min_fidelity.coverage", "max_tpr_at_fpr"}
    assert "max_epsilon" not in {r.rule for r in rules if r.model == "diffusion"}  # the DP rule is scoped by glob


def test_thresholds_fail_on_the_numbers():
    leaky = model(attacks={"loss": attack(0.55, 0.66, tpr=0.2),
                           "memorization": attack(0.5, 0.5, kind="memorization", memorised={"patients_share": 0.2})})
    doc = document(leaky=leaky, **{"x-dp20": model(20.0)})
    f = failures(doc)
    assert set(f) == {("leaky", "max_mia_auc"), ("leaky", "max_tpr_at_fpr"), ("leaky", "max_memorised_share"),
                      ("x-dp20", "max_epsilon")}
    # on the point estimate instead of the CI bound the AUC rule holds
    assert ("leaky", "max_mia_auc") not in failures(doc, load_policy(None).with_overrides(auc_on="point"))


@pytest.mark.parametrize("tpr, ci, verdict", [
    (0.06, (0.0, 0.2), "inconclusive"),  # a point estimate over 0.05 whose CI cannot tell: not a fail
    (0.02, (0.0, 0.2), "inconclusive"),
    (0.2, (0.08, 0.4), "fail"),
    (0.0, (0.0, 0.04), "pass"),
])
def test_tpr_rule_is_judged_on_its_patient_ci(tpr, ci, verdict):
    m = model(attacks={"loss": attack(0.52, 0.58, tpr=tpr, tpr_ci=ci), "pia": attack(0.5, 0.55, tpr=0.0)})
    rules = {r.rule: r for r in evaluate(document(m=m), load_policy(None))}
    assert rules["max_tpr_at_fpr"].verdict == verdict
    assert rules["max_tpr_at_fpr"].interval == pytest.approx(ci)


def test_tpr_rule_on_results_without_a_ci_uses_the_point_estimate():
    m = model(attacks={"loss": attack(0.52, 0.58, tpr=0.06)})
    del m["attacks"]["loss"]["tpr_at_fpr"]["0.01"]["ci"]
    rules = {r.rule: r for r in evaluate(document(m=m), load_policy(None))}
    assert rules["max_tpr_at_fpr"].verdict == "fail" and rules["max_tpr_at_fpr"].interval is None


@pytest.mark.parametrize("breakage, rule, reason", [
    (lambda m: m["attacks"]["loss"].update(status="failed", error="attack 'loss' (x): boom"), "max_mia_auc", "boom"),
    (lambda m: m["attacks"]["loss"]["tpr_at_fpr"]["0.01"].update(resolvable=False), "max_tpr_at_fpr", "unresolvable"),
    (lambda m: m["metrics"].pop("utility"), "min_tstr_dice", "missing"),
    (lambda m: m["metrics"]["fidelity"].update(status="failed", error="metric crashed", values=None),
     "min_fidelity.coverage", "metric crashed"),
    (lambda m: m["attacks"].clear(), "max_mia_auc", "no mia attack"),
    (lambda m: m["attacks"]["memorization"]["details"].clear(), "max_memorised_share", "no memorisation"),
    (lambda m: m.update(status="failed", error="train: generator 'x' crashed"), "max_mia_auc", "crashed"),
])
def test_missing_or_broken_numbers_fail_closed(breakage, rule, reason):
    m = model()
    breakage(m)
    f = failures(document(m=m))
    assert ("m", rule) in f and reason in f[("m", rule)]


def test_unfinished_run_and_empty_results_fail_closed():
    doc = document(m=model())
    doc["status"] = "running"
    assert "unfinished" in failures(doc)[("*", "run complete")]
    assert not model_verdicts(evaluate(doc, load_policy(None)))["m"]
    assert ("*", "model present") in failures(document())
    assert not passed(evaluate(document(m=model()), Policy.from_dict({})))  # a policy that checks nothing
    assert ("absent", "model present") in failures(document(m=model()), Policy.from_dict({"models": ["absent"]}))


def test_a_model_trained_without_dp_fails_an_epsilon_rule():
    f = failures(document(m=model()), Policy.from_dict({"max_epsilon": 8}))
    assert f == {("m", "max_epsilon"): "trained without differential privacy"}


def test_policy_files_and_flags(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('max_mia_auc = 0.7\n[models_policy."gan"]\nmax_mia_auc = false\n[max_fidelity]\nfd = 10\n')
    policy = load_policy(path).with_overrides(min_tstr_dice=0.9, max_epsilon=None)
    assert policy.for_model("gan")["max_mia_auc"] is False and policy.for_model("vae")["max_mia_auc"] == 0.7
    f = failures(document(gan=model(), vae=model()), policy)
    assert ("gan", "min_tstr_dice") in f and ("gan", "max_fidelity.fd") in f and ("gan", "max_mia_auc") not in f
    path.write_text("max_auc = 0.5\n")
    with pytest.raises(ConfigError, match="unknown policy key"):
        load_policy(path)


def test_junit_xml_lists_every_rule():
    doc = document(ok=model(), bad=model(attacks={}))
    policy = load_policy(None)
    rules = evaluate(doc, policy)
    root = ET.fromstring(junit_xml(rules, policy))
    suite = root.find("testsuite")
    assert int(suite.get("tests")) == len(rules) == len(suite.findall("testcase"))
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) > 0
    assert all(c.get("classname") == "cmraudit.gate.bad" for c in failed)


def test_example_policy_is_the_built_in_one_and_cites_its_sources():
    text = (EXAMPLES / "policy.toml").read_text()
    assert tomllib.loads(text) == DEFAULT_POLICY
    for source in ("Carlini", "Naeem", "Ponomareva", "Bernard"):
        assert source in text


def test_gate_cli_exit_codes(tmp_path, capsys):
    from cmraudit.cli import main

    good = tmp_path / "good.json"
    good.write_text(json.dumps(R.jsonable(document(m=model()))))
    bad = tmp_path / "bad"
    bad.mkdir()
    doc = document(m=model())
    doc["status"] = "running"
    (bad / "results.json").write_text(json.dumps(R.jsonable(doc)))
    with pytest.raises(SystemExit) as ok:
        main(["gate", str(good), "--policy", str(EXAMPLES / "policy.toml"), "--junit", str(tmp_path / "j.xml")])
    assert ok.value.code in (0, None) and (tmp_path / "j.xml").is_file()
    assert "gate passed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as failed:
        main(["gate", str(bad), "--json"])
    assert failed.value.code == 1
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False and any(r["rule"] == "run complete" for r in out["rules"])
    with pytest.raises(SystemExit) as tighter:
        main(["gate", str(good), "--max-auc", "0.51"])
    assert tighter.value.code == 1
    with pytest.raises(SystemExit) as missing:
        main(["gate", str(tmp_path / "nowhere")])
    assert missing.value.code == 1
    assert "no results file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_run_an_audit_then_the_gate(name):
    yaml = pytest.importorskip("yaml")
    text = (EXAMPLES / name).read_text()
    assert isinstance(yaml.safe_load(text), dict)
    audit, gate = text.index("cmraudit run "), text.index("cmraudit gate ")
    assert audit < gate and "--policy examples/policy.toml" in text[gate:] and "--junit" in text[gate:]


def _mia_verdict(ci: tuple[float, float], **policy_changes) -> tuple[str, str]:
    entry = {**attack(sum(ci) / 2, ci[1]), "auc_ci": list(ci)}
    doc = document(m=model(attacks={"loss": entry}))
    policy = Policy.from_dict({"max_mia_auc": 0.6, **policy_changes})
    (rule,) = [r for r in evaluate(doc, policy) if r.rule == "max_mia_auc"]
    return rule.verdict, rule.reason


def test_mia_verdict_is_pass_fail_or_inconclusive_by_where_the_ci_lies():
    assert _mia_verdict((0.40, 0.58))[0] == "pass"  # the CI rules an AUC of 0.6 out
    verdict, reason = _mia_verdict((0.62, 0.80))
    assert verdict == "fail" and "whole 95% CI" in reason  # the CI shows a leak
    verdict, reason = _mia_verdict((0.35, 0.72))
    assert verdict == "inconclusive" and "can rule out values above 0.720 only" in reason
    assert _mia_verdict((0.35, 0.72), auc_on="point")[0] == "pass"  # no CI, no inconclusive


def test_inconclusive_counts_as_the_policy_says():
    from cmraudit.gate import outcome

    entry = {**attack(0.5, 0.72), "auc_ci": [0.35, 0.72]}
    doc = document(m=model(attacks={"loss": entry}))
    rules = evaluate(doc, Policy.from_dict({"max_mia_auc": 0.6}))
    assert outcome(rules) == "fail" and not passed(rules)  # fail-closed by default
    assert outcome(rules, "inconclusive") == "inconclusive" and outcome(rules, "pass") == "pass"
    with pytest.raises(ConfigError, match="on_inconclusive"):
        Policy.from_dict({"on_inconclusive": "maybe"})


def test_gate_command_exits_3_when_inconclusive_and_asked_to(tmp_path):
    from cmraudit.cli import main

    entry = {**attack(0.5, 0.72), "auc_ci": [0.35, 0.72]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(R.jsonable(document(m=model(attacks={"loss": entry})))))
    policy = tmp_path / "policy.toml"
    policy.write_text("max_mia_auc = 0.6\n")
    codes = {}
    for mode in ("fail", "inconclusive", "pass"):
        with pytest.raises(SystemExit) as exit_info:
            main(["gate", str(path), "--policy", str(policy), "--on-inconclusive", mode])
        codes[mode] = exit_info.value.code or 0
    assert codes == {"fail": 1, "inconclusive": 3, "pass": 0}


def test_a_canary_bound_above_the_accountants_epsilon_is_a_dp_implementation_error():
    def dp_model(bound: float):
        entry = {**attack(0.55, 0.62), "canaries": {"status": "ok", "auc": 0.9, "auc_ci": [0.8, 0.95],
                                                     "one_run_eps": {"epsilon": bound}}}
        return model(2.0, attacks={"loss": entry})

    rules = evaluate(document(m=dp_model(3.1)), Policy.from_dict({"max_epsilon": 10.0}))
    (audit_rule,) = [r for r in rules if r.rule == "dp_audit"]
    assert audit_rule.verdict == "fail" and "DP IMPLEMENTATION ERROR" in audit_rule.reason
    rules = evaluate(document(m=dp_model(1.5)), Policy.from_dict({"max_epsilon": 10.0}))
    assert [r.verdict for r in rules if r.rule == "dp_audit"] == ["pass"]
    # without DP there is no claim to check
    assert not [r for r in evaluate(document(m=model()), load_policy(None)) if r.rule == "dp_audit"]


def test_canaries_decide_the_mia_verdict_where_they_ran():
    narrow = {**attack(0.5, 0.7), "auc_ci": [0.3, 0.7], "canaries": {"status": "ok", "auc_ci": [0.45, 0.56]}}
    (rule,) = [r for r in evaluate(document(m=model(attacks={"loss": narrow})), Policy.from_dict({"max_mia_auc": 0.6}))]
    assert rule.verdict == "pass" and "canaries'" in rule.reason
    leak = {**attack(0.9, 0.98), "auc_ci": [0.8, 0.98], "canaries": {"status": "ok", "auc_ci": [0.45, 0.56]}}
    (rule,) = [r for r in evaluate(document(m=model(attacks={"loss": leak})), Policy.from_dict({"max_mia_auc": 0.6}))]
    assert rule.verdict == "fail"  # a leak the real patients show is not hidden by the canaries
