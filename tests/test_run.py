"""The run folder: layout, resume without recomputation, failure isolation, config layers and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cmraudit import results as R
from cmraudit.errors import ConfigError, RunError
from cmraudit.run import AuditRun, open_run
from cmraudit.run.config import ModelSpec, RunConfig, merge_layers, parse_set, read_toml, to_toml
from cmraudit.run.events import safe_name

# every results.json these tests write is checked against the schema as it is written
pytestmark = pytest.mark.usefixtures("validated_results")


def test_run_folder_records_everything_and_isolates_failures(fakes, tmp_path):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    config = fakes.tiny_config(tmp_path / "run", attacks=["known-mia", "known-mem", "broken-attack", "needs-whitebox"],
                               models=[ModelSpec("fast-tiny", "fast-tiny"), ModelSpec("crash-tiny", "crash-tiny"),
                                       ModelSpec("fast-tiny-dp2", "fast-tiny", 2.0)],
                               dp={"accountant": "rdp"})  # RDP calibrates in milliseconds, PRV in seconds
    doc = AuditRun(config).run()
    out = config.out
    for path in ("config.toml", "split.json", "results.json", "report.html", "models/fast-tiny/training.json",
                 "models/fast-tiny/samples.npz", "scores/fast-tiny/known-mia.npz"):
        assert (out / path).is_file(), path
    assert doc["status"] == "complete"
    models = doc["models"]
    # the crashing generator is recorded with its stage and plugin; the other models still finish
    assert models["crash-tiny"]["status"] == "failed"
    assert models["crash-tiny"]["error"].startswith("train: generator 'crash-tiny' (run_fakes): ValueError")
    assert models["fast-tiny"]["status"] == models["fast-tiny-dp2"]["status"] == "ok"
    attacks = models["fast-tiny"]["attacks"]
    assert attacks["broken-attack"]["status"] == "failed" and "deliberate attack crash" in attacks["broken-attack"]["error"]
    assert attacks["needs-whitebox"] == {**attacks["needs-whitebox"], "status": "skipped",
                                         "reason": "this generator exposes no discriminator"}
    assert models["fast-tiny"]["metrics"]["known-utility"]["values"]["tstr_dice"]["value"] == 0.8
    # every finished model carries its verdict over the built-in policy, every MIA attack its own, with reasons
    from cmraudit.gate import judge_attack, load_policy

    verdict = models["fast-tiny"]["verdict"]
    assert verdict["outcome"] in ("pass", "fail", "inconclusive") and verdict["policy"] == "built-in policy"
    assert {r["rule"] for r in verdict["rules"]} >= {"max_mia_auc", "min_tstr_dice"}
    mia = attacks["known-mia"]
    assert mia["verdict"]["verdict"] == judge_attack(mia, load_policy(None)).verdict and mia["verdict"]["reason"]
    assert "verdict" not in attacks["known-mem"] and "verdict" not in models["crash-tiny"]
    # DP variant: its accountant's epsilon is recorded and within the target
    dp = models["fast-tiny-dp2"]["training"]["dp"]
    assert 0 < dp["epsilon"] <= 2.0 + 1e-6 and dp["unit"] == "patient" and dp["accountant"] == "rdp"
    assert models["fast-tiny"]["training"]["dp"] is None
    # ...and it was first trained, without DP, on the public data, which never holds an audited patient
    assert models["fast-tiny-dp2"]["training"]["public_pretraining"] == {
        **models["fast-tiny-dp2"]["training"]["public_pretraining"], "data": "phantom:8,seed=1", "patients": 8}
    assert (out / "models/fast-tiny-dp2/public-pretraining/training.json").is_file()
    assert models["fast-tiny"]["training"]["public_pretraining"] is None
    # saved per-example scores reproduce the recorded AUC with sklearn
    with np.load(out / attacks["known-mia"]["scores"]) as z:
        y = np.r_[np.ones(len(z["member_scores"])), np.zeros(len(z["nonmember_scores"]))]
        auc = sklearn_metrics.roc_auc_score(y, np.r_[z["member_scores"], z["nonmember_scores"]])
        assert set(z["member_patients"]) <= set(json.loads((out / "split.json").read_text())["members"])
    assert attacks["known-mia"]["auc"] == pytest.approx(auc)
    # samples are conditioned on reference masks, never on a member's
    split = json.loads((out / "split.json").read_text())
    with np.load(out / "models/fast-tiny/samples.npz") as z:
        assert str(z["mask_source"]) == "reference"
        assert set(z["patients"]) <= set(split["reference"])
        assert z["images"].shape[1:] == (1, 16, 16) and np.abs(z["images"]).max() <= 1
    R.validate(R.load(out))


def test_public_pretraining_data_holding_audited_patients_is_refused(fakes, tmp_path):
    config = fakes.tiny_config(tmp_path / "run", models=[ModelSpec("fast-tiny-dp2", "fast-tiny", 2.0)],
                               dp={"accountant": "rdp"}, dp_pretrain="tinyrun:5")  # the audited data's patients
    doc = AuditRun(config).run()
    model = doc["models"]["fast-tiny-dp2"]
    assert model["status"] == "failed" and "holds 5 of the audited patients" in model["error"]
    assert not (config.out / "models/fast-tiny-dp2/public-pretraining").exists()


def test_dp_pretrain_spellings():
    assert RunConfig().dp_pretrain == "phantom:200,seed=1"
    assert RunConfig(dp_pretrain="None").dp_pretrain == RunConfig(dp_pretrain=" ").dp_pretrain == "none"


def test_rerun_recomputes_nothing_unless_forced(fakes, tmp_path):
    config = fakes.tiny_config(tmp_path / "run")
    first = AuditRun(config).run()
    assert fakes.CALLS == {"known-mia": 1, "known-mem": 1, "known-utility": 1, "known-fidelity": 1}
    events = []
    again = AuditRun(config, progress=events.append).run()
    assert fakes.CALLS == {"known-mia": 1, "known-mem": 1, "known-utility": 1, "known-fidelity": 1}
    assert {(e.stage, e.state) for e in events if e.model} >= {("train", "skipped"), ("sample", "skipped")}
    assert again["models"]["fast-tiny"]["attacks"]["known-mia"]["auc"] == first["models"]["fast-tiny"]["attacks"]["known-mia"]["auc"]
    training = config.out / "models" / "fast-tiny" / "training.json"
    trained_at = training.stat().st_mtime_ns
    AuditRun(config, force=True).audit()  # `cmraudit audit --force`: new numbers, same model
    assert fakes.CALLS["known-mia"] == 2 and training.stat().st_mtime_ns == trained_at
    AuditRun(config, force=True).run()
    assert fakes.CALLS["known-mia"] == 3 and training.stat().st_mtime_ns != trained_at


def test_interrupted_run_resumes_where_it_stopped(fakes, tmp_path):
    config = fakes.tiny_config(tmp_path / "run")

    def interrupt(event):
        if event.stage == "audit" and event.state == "start" and "known-mem" in event.message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        AuditRun(config, progress=interrupt).run()
    partial = R.load(config.out)
    assert partial["status"] == "running"
    assert partial["models"]["fast-tiny"]["attacks"]["known-mia"]["status"] == "ok"
    assert "known-mem" not in partial["models"]["fast-tiny"]["attacks"]
    doc = AuditRun(config).run()
    assert doc["status"] == "complete" and fakes.CALLS["known-mia"] == 1 and fakes.CALLS["known-mem"] == 1


def test_a_run_folder_accumulates_models(fakes, tmp_path):
    AuditRun(fakes.tiny_config(tmp_path / "run")).train()
    reopened = open_run(tmp_path / "run", overrides={"attacks": "known-mia"})  # its own config.toml is the base
    assert [m.name for m in reopened.config.models] == ["fast-tiny"] and reopened.config.attacks == "known-mia"
    assert reopened.config.data == "tinyrun:20" and reopened.config.image_size == 16
    second = AuditRun(fakes.tiny_config(tmp_path / "run", models=[ModelSpec("fast-tiny-2", "fast-tiny")]))
    second.train()
    assert [m["name"] for m in read_toml(tmp_path / "run" / "config.toml")["model"]] == ["fast-tiny-2", "fast-tiny"]
    assert set(second.results["models"]) == {"fast-tiny", "fast-tiny-2"}
    assert all(m["stages"]["train"] for m in second.results["models"].values())


def test_unknown_names_are_usage_errors_before_any_work(fakes, tmp_path):
    from cmraudit.errors import PluginError, UsageError

    with pytest.raises(PluginError, match="no generator named 'gam'"):
        AuditRun(fakes.tiny_config(tmp_path / "a", models=[ModelSpec("gam", "gam")])).prepare()
    with pytest.raises(UsageError, match="unknown attack 'lossy'"):
        AuditRun(fakes.tiny_config(tmp_path / "b", attacks=["lossy"])).prepare()
    with pytest.raises(ConfigError, match="unknown metric"):
        AuditRun(fakes.tiny_config(tmp_path / "c", metrics=["fidelty"])).prepare()
    with pytest.raises(ConfigError, match="train: unknown setting"):
        AuditRun(fakes.tiny_config(tmp_path / "d", train={"stpes": 3})).prepare()
    with pytest.raises(ConfigError, match="dp"):
        AuditRun(fakes.tiny_config(tmp_path / "e", models=[ModelSpec("x", "fast-tiny", 1.0)], dp={"delat": 1})).prepare()
    with pytest.raises(UsageError, match="dp_pretrain: unknown data scheme 'phantm'"):
        AuditRun(fakes.tiny_config(tmp_path / "f", models=[ModelSpec("x", "fast-tiny", 1.0)],
                                   dp_pretrain="phantm:20")).prepare()
    with pytest.raises(UsageError, match="canary_data: unknown data scheme 'phantm'"):
        AuditRun(fakes.tiny_config(tmp_path / "g", canaries=4, canary_data="phantm:20")).prepare()
    with pytest.raises(ConfigError, match="canaries must be a number"):
        AuditRun(fakes.tiny_config(tmp_path / "h", canaries=-1)).prepare()
    assert not any((tmp_path / d).exists() for d in "abcdefgh")


def test_changed_config_on_an_existing_folder_is_refused(fakes, tmp_path):
    AuditRun(fakes.tiny_config(tmp_path / "run")).train()
    with pytest.raises(RunError, match="different seed"):
        AuditRun(fakes.tiny_config(tmp_path / "run", seed=1)).prepare()
    AuditRun(fakes.tiny_config(tmp_path / "run", seed=1), force=True).prepare()  # --force recomputes instead


def test_config_layers_epsilons_and_toml_round_trip(tmp_path):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('data = "phantom:30"\ngenerators = ["diffusion", "flow"]\ndp_epsilons = [inf, 8, 0.5]\n'
                        '[train]\nsteps = 40\n[generator.flow]\nsteps = 4\n')
    config = merge_layers([("run.toml", read_toml(run_toml)), ("cli", parse_set(["train.batch_size=8", "seed=3"]))])
    assert [m.name for m in config.models] == ["diffusion", "diffusion-dp8", "diffusion-dp0.5", "flow", "flow-dp8",
                                               "flow-dp0.5"]
    assert config.train == {"steps": 40, "batch_size": 8} and config.seed == 3 and config.image_size == 64
    assert config.generator_overrides(config.model("flow-dp8")) == {"steps": 4}
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config.to_toml_dict()))
    again = merge_layers([(str(path), read_toml(path))])
    assert again.to_toml_dict() == config.to_toml_dict()
    default = RunConfig()
    assert [m.name for m in default.models] == ["gan", "vae", "diffusion", "flow", "diffusion-dp8"]
    with pytest.raises(ConfigError, match="unknown setting"):
        merge_layers([("x", {"stpes": 3})])
    with pytest.raises(ConfigError, match="mask_source"):
        RunConfig(mask_source="everyone")


def test_safe_names_stay_inside_the_folder():
    assert safe_name("diffusion-dp8") == "diffusion-dp8"
    odd = safe_name("../<script>/x")
    assert "/" not in odd and not odd.startswith(".") and odd != safe_name("__script__x")


def test_cli_run_then_gate(fakes, tmp_path, capsys):
    from cmraudit.cli import main

    out = tmp_path / "cli-run"
    args = ["run", "--data", "tinyrun:20", "--generator", "fast-tiny", "--attack", "known-mia,known-mem",
            "--metric", "known-utility,known-fidelity", "--profile", "smoke", "--set", "image_size=16",
            "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "cmraudit results" in printed and "report.html" in printed
    assert (out / "report.html").is_file()
    # the run folder's own config is the base layer: a bare re-run resumes the same models
    with pytest.raises(SystemExit):
        main(["run", "--out", str(out)])
    assert read_toml(out / "config.toml")["model"] == [{"name": "fast-tiny", "generator": "fast-tiny"}]
    assert fakes.CALLS["known-mia"] == 2  # once on the patients, once on the smoke profile's 16 canaries; not again
    canaries = R.load(out)["models"]["fast-tiny"]["attacks"]["known-mia"]["canaries"]
    assert canaries["status"] == "ok" and canaries["n_in"] + canaries["n_out"] == 16
    policy = tmp_path / "policy.toml"
    policy.write_text("max_mia_auc = 0.6\nmin_tstr_dice = 0.7\n")
    with pytest.raises(SystemExit) as exit_info:  # known-mia separates members perfectly: AUC 1 fails
        main(["gate", str(out), "--policy", str(policy), "--junit", str(tmp_path / "gate.xml")])
    assert exit_info.value.code == 1
    assert "failures=\"1\"" in (tmp_path / "gate.xml").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["gate", str(out / "results.json"), "--policy", str(policy), "--max-auc", "1.0"])
    assert exit_info.value.code in (0, None)
    # the stage commands work on the folder; a report option on one of them is a usage error (exit 2)
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(out), "--force"])
    assert exit_info.value.code in (0, None) and fakes.CALLS["known-mia"] == 4  # re-audited: patients and canaries again
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(out), "--redact"])
    assert exit_info.value.code == 2


def test_baselines_lift_real_vs_real_and_trtr():
    from cmraudit.run.records import record_baselines

    doc: dict = {"baselines": {}}
    record_baselines(doc, {"fd": {"value": 3.0, "details": {"real_vs_real": 0.4}},
                           "trtr_dice": {"value": 0.87, "details": {}},
                           "tstr_dice": {"value": 0.6, "details": {"trtr": 0.87}}})
    assert doc["baselines"] == {"real_vs_real": {"fd": 0.4}, "trtr": {"trtr_dice": 0.87}}


def test_dp_shadows_start_from_the_models_public_pretraining(fakes, tmp_path, monkeypatch):
    """LiRA's shadows must be trained like the target: a DP model's shadows reload its public pretraining."""
    import torch

    from cmraudit.run import train_stage
    from cmraudit.run.train_stage import shadow_trainer
    from cmraudit.training.loop import load_trained

    spec = ModelSpec("fast-tiny-dp2", "fast-tiny", 2.0)
    run = AuditRun(fakes.tiny_config(tmp_path / "run", models=[spec], dp={"accountant": "rdp"}))
    run.prepare()
    run.train()
    pretrained = load_trained(run.folder.model_dir(spec.name) / "public-pretraining")
    starts, original = [], train_stage.public_pretraining

    def spy(*args, **kwargs):
        info = original(*args, **kwargs)
        starts.append([p.detach().clone() for p in args[2].nets["net"].parameters()])
        return info

    monkeypatch.setattr("cmraudit.run.train_stage.public_pretraining", spy)
    shadow_trainer(run, spec)(run.split.nonmembers, 3)
    assert len(starts) == 1
    for got, want in zip(starts[0], pretrained.nets["net"].parameters()):
        assert torch.equal(got, want.detach())


def test_a_dp_model_fine_tunes_for_finetune_steps_after_its_pretraining(fakes, tmp_path):
    """``train.finetune_steps`` is the length of a pretrained DP model's private phase: the accountant counts those
    steps, the public pretraining and the models without pretraining keep ``train.steps``."""
    models = [ModelSpec("fast-tiny", "fast-tiny"), ModelSpec("fast-tiny-dp2", "fast-tiny", 2.0)]
    config = fakes.tiny_config(tmp_path / "run", models=models, dp={"accountant": "rdp"},
                               train={"steps": 4, "finetune_steps": 2})
    run = AuditRun(config)
    run.prepare()
    run.train()
    plain, private = (run.records.entry(m.name)["training"] for m in models)
    assert plain["steps"] == 4 and plain["public_pretraining"] is None
    assert private["steps"] == private["dp"]["steps"] == 2
    assert private["public_pretraining"]["steps"] == 4


def test_finetune_steps_must_not_be_negative():
    from cmraudit.training.loop import TrainConfig

    with pytest.raises(ConfigError, match="finetune_steps"):
        TrainConfig(finetune_steps=-1).validate()
    assert TrainConfig(steps=8).for_finetuning().steps == 8
    assert TrainConfig(steps=8, finetune_steps=3).for_finetuning().steps == 3


def test_canary_and_null_audits_see_their_own_patients(fakes, tmp_path):
    """The canary audit's members are the canaries drawn in, scored afresh (not the real members an attack memoised
    in the real audit's cache); the null audit's synthetic set is the test patients' own slices."""
    from cmraudit.run.audit_stage import audit_contexts
    from cmraudit.testing.tiny import make_audit_context

    run = AuditRun(fakes.tiny_config(tmp_path / "run", canaries=6))
    run.prepare()
    real = make_audit_context(table=run.table, workdir=tmp_path)
    real.split = run.split
    real.cache["scored:members:10"] = "the real members, memoised"
    audits = audit_contexts(run, real)
    assert audits.null.cache == {}
    assert "scored:members:10" not in audits.canaries.cache
    assert sorted(audits.canaries.members.patient_ids) == sorted(run.split.canaries_in)
    assert sorted(audits.canaries.nonmembers.patient_ids) == sorted(run.split.canaries_out)
    assert sorted(audits.null.synthetic.patient_ids) == sorted(run.split.test)
    assert len(run.split.canaries_in) + len(run.split.canaries_out) == 6
    # the canary audit's feature space is the real audit's encoder (trained on real members, no canary in it)
    from cmraudit.measure.features import get_encoder

    assert get_encoder(audits.canaries) is get_encoder(real)
    assert audits.canaries.shared is real.shared is audits.null.shared


def test_canaries_sharing_an_audited_patient_id_are_refused(fakes, tmp_path):
    with pytest.raises(ConfigError, match="shares .* patient id"):
        AuditRun(fakes.tiny_config(tmp_path / "run", canaries=6, canary_data="tinyrun:30")).prepare()


def test_canaries_drawn_in_are_trained_on_and_counted_by_the_accountant(fakes, tmp_path):
    """Canaries are training data: in the DP model's training set, so q = expected batch / (members + canaries in)."""
    spec = ModelSpec("fast-tiny-dp2", "fast-tiny", 2.0)
    run = AuditRun(fakes.tiny_config(tmp_path / "run", models=[spec], canaries=8, dp={"accountant": "rdp"}))
    run.prepare()
    run.train()
    training = run.results["models"][spec.name]["training"]
    units = len(run.split.members) + len(run.split.canaries_in)
    assert training["canaries"] == len(run.split.canaries_in) > 0
    assert training["dp"]["sample_rate"] == pytest.approx(training["train_config"]["batch_size"] / units)
    assert run.results["data"]["canaries"]["in"] == len(run.split.canaries_in)


def test_models_share_one_null_audit_per_samples_only_attack(fakes, tmp_path, monkeypatch):
    """The null baseline of a samples-only attack does not depend on the model: computed once per run, the same
    block (and scores) in every model's record."""
    from cmraudit.attacks.membership import GanLeaks

    null_runs = []
    original = GanLeaks.run

    def counting(self, ctx):
        if sorted(ctx.synthetic.patient_ids) == sorted(ctx.split.test):  # the null set: the test patients' slices
            null_runs.append(1)
        return original(self, ctx)

    monkeypatch.setattr(GanLeaks, "run", counting)
    models = [ModelSpec("fast-tiny", "fast-tiny"), ModelSpec("fast-tiny-again", "fast-tiny")]
    config = fakes.tiny_config(tmp_path / "run", models=models, attacks=["gan-leaks"], metrics=[])
    doc = AuditRun(config).run()
    assert doc["status"] == "complete" and len(null_runs) == 1
    blocks = [doc["models"][m.name]["attacks"]["gan-leaks"]["null"] for m in models]
    assert blocks[0]["status"] == "ok" and blocks[0]["auc"] is not None
    without_path = [{k: v for k, v in block.items() if k != "scores"} for block in blocks]
    assert without_path[0] == without_path[1]
    assert all((config.out / block["scores"]).is_file() for block in blocks)
