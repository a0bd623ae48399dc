"""A verdict must distinguish: the whole pipeline (split, canaries, attacks, null baseline, verdicts, gate) on two
generators with a known answer, on the default data (the 60-patient phantom, 24 members and 12 non-members).

* ``fresh-phantom`` never saw a member: over 10 split seeds its patient-level AUC CIs may exclude 0.5 at about the
  nominal 5% rate, its mean AUC per attack stays at 0.5, its ε lower bounds stay at 0 and the gate never fails it,
  on the AUC or on the TPR at 1% FPR (whose point estimate alone exceeds the policy's 0.05 on some seeds).
* ``verbatim`` returns its training slices: the gate fails it, with canaries and without.

Smoke-sized images (32 px) and samples-only attacks keep this to about a minute; the statistics do not depend on
image size.
"""
from __future__ import annotations

import numpy as np
import pytest
from validity_generators import ValidityPlugins

from cmraudit.gate import evaluate, load_policy, outcome
from cmraudit.run import AuditRun
from cmraudit.run.config import ModelSpec, RunConfig

SEEDS = range(10)
ATTACKS = ["gan-leaks", "gan-leaks-cal", "monte-carlo", "domias"]


@pytest.fixture
def validity(register_plugin):
    register_plugin(ValidityPlugins(), name="validity-generators")


def audit(out, generator: str, seed: int, canaries: int = 100, steps: int = 3, n_samples: int = 0) -> dict:
    config = RunConfig(out=out, data="phantom", profile="smoke", seed=seed, models=[ModelSpec(generator, generator)],
                       attacks=ATTACKS, metrics=[], canaries=canaries, dp_pretrain="none", n_samples=n_samples,
                       train={"steps": steps, "checkpoint_every": steps}, options={"attacks": {"features": False}})
    run = AuditRun(config)
    run.prepare()
    run.train()
    run.sample()
    run.audit()
    return run.results


def test_a_generator_that_never_saw_a_member_is_never_failed(validity, tmp_path):
    per_attack: dict[str, list[float]] = {a: [] for a in ATTACKS}
    canary_aucs: dict[str, list[float]] = {a: [] for a in ATTACKS}
    excluded = total = 0
    eps_zero_seeds = 0
    outcomes, tpr_outcomes, tpr_points = [], [], []
    for seed in SEEDS:
        doc = audit(tmp_path / f"seed{seed}", "fresh-phantom", seed)
        model = doc["models"]["fresh-phantom"]
        assert model["status"] == "ok", model.get("error")
        bounds = []
        for name in ATTACKS:
            attack = model["attacks"][name]
            lo, hi = attack["patient"]["auc_ci"]
            excluded += not lo <= 0.5 <= hi
            total += 1
            per_attack[name].append(attack["patient"]["auc"])
            canary_aucs[name].append(attack["canaries"]["auc"])
            bounds += [attack["patient"]["eps_lower_bound"], attack["canaries"]["one_run_eps"]["epsilon"]]
            assert attack["null"]["status"] == "ok"  # every samples-only attack has its null baseline
        eps_zero_seeds += max(bounds) == 0
        rules = evaluate(doc, load_policy(None))
        outcomes.append(outcome([r for r in rules if r.rule == "max_mia_auc"], on_inconclusive="inconclusive"))
        [tpr_rule] = [r for r in rules if r.rule == "max_tpr_at_fpr"]
        tpr_outcomes.append(tpr_rule.verdict)
        tpr_points.append(max(a["tpr_at_fpr"]["0.01"]["tpr"] for a in model["attacks"].values()))
    assert excluded <= 0.10 * total, f"{excluded} of {total} patient-level CIs exclude 0.5"
    for name in ATTACKS:
        assert abs(np.mean(per_attack[name]) - 0.5) <= 0.06, (name, per_attack[name])
        assert abs(np.mean(canary_aucs[name]) - 0.5) <= 0.04, (name, canary_aucs[name])
    assert eps_zero_seeds >= 9, eps_zero_seeds
    assert "fail" not in outcomes, outcomes
    assert "fail" not in tpr_outcomes, list(zip(tpr_outcomes, tpr_points))


@pytest.mark.parametrize("canaries", [100, 0])
def test_a_generator_that_returns_its_training_images_fails(validity, tmp_path, canaries):
    # 400 steps of 4 slices store nearly every training slice; 2 000 samples release nearly all of them
    doc = audit(tmp_path / "run", "verbatim", 0, canaries=canaries, steps=400, n_samples=2000)
    model = doc["models"]["verbatim"]
    assert model["status"] == "ok", model.get("error")
    rules = [r for r in evaluate(doc, load_policy(None)) if r.rule in ("max_mia_auc", "max_tpr_at_fpr")]
    assert [r.verdict for r in rules] == ["fail", "fail"], rules
    attack = model["attacks"]["gan-leaks"]
    assert attack["verdict"]["verdict"] == "fail"
    if canaries:  # the canaries it was trained on are caught too, with a one-run ε lower bound well above 0
        assert attack["canaries"]["auc_ci"][0] > 0.6 and attack["canaries"]["one_run_eps"]["epsilon"] > 1
    else:
        assert "canaries" not in attack
