"""`cmraudit release`: gate first, the privacy filter, the ACDC export and the datasheet, on a smoke-sized run made
by the real pipeline (phantom:20, 32 px, 20 training steps, no canaries) with three models:

* ``vae``            the built-in VAE, barely trained: fails the built-in policy (no MIA attack ran, low utility);
* ``near-copy``      training slices shifted 2 px, gamma 1.3, blurred (tests/release_generators.py): the filter
                     must remove at least 95% of its images;
* ``fresh-phantom``  phantom patients of another seed (tests/validity_generators.py), never a member, and a
                     patient-level DP diffusion model (ε = 8): the filter must keep at least 90% of their images.

The attacks are memorization, plus reidentification when that plugin is registered, and one membership attack
(gan-leaks, samples only: cheap) so the datasheet has an MIA verdict to show.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from release_generators import ReleasePlugins
from validity_generators import ValidityPlugins

from cmraudit.data.splits import load_split
from cmraudit.data.types import SliceTable
from cmraudit.registry import load_plugins, registered
from cmraudit.release import privacy_filter, release_model
from cmraudit.release.cohort import build_cohort
from cmraudit.run import AuditRun
from cmraudit.run.config import ModelSpec, RunConfig
from cmraudit.run.folder import RunFolder, load_samples

MODELS = ("vae", "near-copy", "fresh-phantom")
#: the honest models of the filter check: a generator that never saw a member, and patient-level DP diffusion
DP_MODEL = ModelSpec("diffusion-dp8", "diffusion", 8.0)
#: a policy the smoke models can pass: only the memorised-patient share is judged
LENIENT = "max_memorised_share = 0.05\n"


def has_reidentification() -> bool:
    return "reidentification" in registered("attacks")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    pm = load_plugins()
    plugins = [(ValidityPlugins(), "release-test-validity"), (ReleasePlugins(), "release-test-generators")]
    for plugin, name in plugins:
        pm.register(plugin, name=name)
    try:
        out = tmp_path_factory.mktemp("release") / "run"
        attacks = ["gan-leaks", "memorization", *(["reidentification"] if has_reidentification() else [])]
        config = RunConfig(out=out, data="phantom:20", profile="smoke", seed=0, canaries=0, dp_pretrain="none",
                           models=[*(ModelSpec(m, m) for m in MODELS), DP_MODEL], attacks=attacks,
                           metrics=["fidelity", "utility"], dp={"accountant": "rdp"},
                           train={"steps": 20, "checkpoint_every": 20})
        AuditRun(config).run()
        yield out
    finally:
        for plugin, _ in plugins:
            if pm.is_registered(plugin):
                pm.unregister(plugin)


@pytest.fixture(scope="module")
def lenient(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "lenient.toml"
    path.write_text(LENIENT)
    return path




def real_ids(run: Path) -> set[str]:
    split = load_split(run / "split.json")
    return {*split.members, *split.nonmembers, *split.reference, *split.test, *split.canaries_in, *split.canaries_out}


def inspect(folder: Path, capsys) -> dict:
    code, out, err = run_cli(["data", "inspect", f"acdc:{folder}", "--json"], capsys)
    assert code == 0 and not err, err
    return json.loads(out)


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("release", "cache", "checkpoints"))
    return to


def edit_results(run: Path, edit) -> None:
    doc = json.loads((run / "results.json").read_text())
    edit(doc)
    (run / "results.json").write_text(json.dumps(doc))


# --------------------------------------------------------------------------------------------- the happy path
def test_release_with_filter_reads_back_and_documents_itself(run_dir, lenient, capsys):
    code, out, err = run_cli(["release", str(run_dir), "--model", "vae", "--filter", "--policy", str(lenient)], capsys)
    assert code == 0, err
    target = run_dir / "release" / "vae"
    assert f"released: {target}" in out and "filter: ran memorization" in out
    assert {p.name for p in target.iterdir()} == {"cohort", "datasheet.md", "datasheet.json", "report-redacted.html"}
    sheet = json.loads((target / "datasheet.json").read_text())
    cohort = sheet["cohort"]

    # the ACDC folder reads back with the numbers written
    summary = inspect(target / "cohort", capsys)
    assert (summary["patients"], summary["slices"]) == (cohort["patients"], cohort["slices"])
    assert summary["vendors"] == cohort["vendors"] and summary["pathologies"] == cohort["pathologies"]
    n = sheet["filter"]["images"]
    assert cohort["slices"] + sheet["filter"]["removed"] + cohort["dropped_slices_without_partner_phase"] <= n
    samples = load_samples(RunFolder(run_dir).samples_path("vae"))
    assert n == len(samples)

    # ids: synthetic, and never a real patient's anywhere in the release
    ids = real_ids(run_dir)
    names = sorted(p.name for p in (target / "cohort").iterdir())
    assert names == [f"patient{i:03d}" for i in range(1, len(names) + 1)]
    texts = [(target / f).read_text() for f in ("datasheet.md", "datasheet.json", "report-redacted.html")]
    texts += [p.read_text() for p in (target / "cohort").rglob("Info.cfg")]
    assert not [i for i in ids for t in texts if re.search(rf"(?<![\w-]){re.escape(i)}(?![\w-])", t)]
    info = (target / "cohort" / "patient001" / "Info.cfg").read_text()
    assert re.search(r"^Vendor: [ABCD]$", info, re.M) and re.search(r"^Group: (NOR|DCM|HCM|MINF|RV)$", info, re.M)

    # the datasheet: verdicts, the filter, before/after, the masks' provenance, command and versions
    assert sheet["audit"]["outcome"] == "pass" and not sheet["audit"]["forced"]
    assert [r["rule"] for r in sheet["audit"]["rules"]] == ["max_memorised_share"]
    assert sheet["audit"]["attacks"]["memorization"]["patients"]["auc_ci"] is not None
    assert sheet["audit"]["attacks"]["memorization"]["null_baseline"]["auc"] is not None
    mia = sheet["audit"]["attacks"]["gan-leaks"]
    assert mia["verdict"] in ("pass", "fail", "inconclusive") and mia["verdict_reason"] and mia["patients"]["auc_ci"]
    assert mia["verdict_policy"] == "built-in policy, as recorded by the audit"  # lenient.toml judges no MIA AUC
    assert sheet["filter"]["applied"] and "memorization" in sheet["filter"]["attacks_used"]
    if not has_reidentification():
        assert sheet["filter"]["attacks_not_run"]["reidentification"] == "not in this audit"
    rows = {(r["metric"], r["value"]): r for r in sheet["metrics"]}
    for key in (("fidelity", "fd"), ("fidelity", "coverage"), ("utility", "tstr_dice")):
        assert rows[key]["before"] is not None and rows[key]["after"] is not None
    if sheet["filter"]["removed"] == 0:  # same images, same seed: the re-measured numbers are the audit's
        assert all(r["after"] == pytest.approx(r["before"]) for r in sheet["metrics"] if r["before"] is not None)
    assert "real segmentation masks of the run's reference patients" in cohort["masks_statement"]
    assert sheet["privacy"]["dp"] is None and "**No DP**" in texts[0]
    from cmraudit.release.datasheet import render_markdown

    # a two-stage DP cohort states the accountant's composed ε and the looser sum beside it
    sheet["privacy"]["cohort"] = {"epsilon": 11.6, "delta": 1e-5, "basic_epsilon": 16.0, "mask_epsilon": 8.0,
                                  "image_epsilon": 8.0, "mask_model": "masks-dp8",
                                  "composition": "prv accountant over both models' steps"}
    text = render_markdown(sheet)
    assert "**The cohort as a whole: ε = 11.6" in text and "prv accountant over both models' steps" in text
    assert "basic composition, gives ε = 16" in text
    assert sheet["release"]["command"].startswith(f"cmraudit release {run_dir} --model vae --filter")
    assert sheet["versions"]["audit"]["torch"] and sheet["versions"]["release"]["cmraudit"]
    md = texts[0]
    for needle in ("## Audit: PASS", "max_memorised_share", "## Privacy filter", "before | after", "## Masks",
                   "cmraudit release"):
        assert needle in md, needle


def test_a_rerun_replaces_the_release_completely_and_other_folders_are_never_replaced(run_dir, lenient, capsys,
                                                                                       tmp_path):
    target = tmp_path / "shared"
    assert run_cli(["release", str(run_dir), "--model", "fresh-phantom", "--out", str(target), "--policy",
                str(lenient)], capsys)[0] == 0
    (target / "stray.txt").write_text("left over")
    code, _, err = run_cli(["release", str(run_dir), "--model", "fresh-phantom", "--out", str(target), "--policy",
                        str(lenient)], capsys)
    assert code == 0, err
    assert not (target / "stray.txt").exists() and (target / "datasheet.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    sheet = json.loads((target / "datasheet.json").read_text())
    assert sheet["filter"] == {"applied": False} and "Not applied" in (target / "datasheet.md").read_text()

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    code, _, err = run_cli(["release", str(run_dir), "--model", "fresh-phantom", "--out", str(precious), "--policy",
                        str(lenient)], capsys)
    assert code == 1 and len(err) == 1 and "not a cmraudit release" in err[0]
    assert (precious / "thesis.tex").read_text() == "do not delete"


# ------------------------------------------------------------------------------------------------ gate first
def test_a_failing_model_is_refused_unless_forced(run_dir, capsys, tmp_path):
    target = tmp_path / "forced"
    code, out, err = run_cli(["release", str(run_dir), "--model", "vae", "--out", str(target)], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("cmraudit: error: model vae did not pass its audit under the built-in policy (fail")
    assert "min_tstr_dice" in err[0] and "--force" in err[0]
    assert not target.exists()

    code, out, err = run_cli(["release", str(run_dir), "--model", "vae", "--out", str(target), "--force"], capsys)
    assert code == 0, err
    assert any("did not pass its audit" in line and "released anyway" in line for line in err)
    sheet = json.loads((target / "datasheet.json").read_text())
    assert sheet["audit"]["forced"] and sheet["audit"]["outcome"] == "fail"
    assert "min_tstr_dice" in {r["rule"] for r in sheet["audit"]["blocking_rules"]}
    md = (target / "datasheet.md").read_text()
    head = md.split("## ", 1)[0]  # prominently: before the first section
    assert "FAILED its privacy audit" in head and "released anyway" in head and "min_tstr_dice" in head
    summary = inspect(target / "cohort", capsys)
    assert summary["patients"] == sheet["cohort"]["patients"] and summary["slices"] == sheet["cohort"]["slices"]


def test_unknown_unfinished_and_failed_models_are_one_line_errors(run_dir, capsys, tmp_path):
    code, _, err = run_cli(["release", str(run_dir), "--model", "nope"], capsys)
    models = ", ".join(sorted([*MODELS, DP_MODEL.name]))
    assert code == 2 and err == [f"cmraudit: error: {run_dir} has no model 'nope' (models: {models})"]
    run = copy_run(run_dir, tmp_path / "run")

    def unfinished(doc):
        doc["models"]["vae"]["status"] = "pending"
        doc["models"]["vae"]["stages"]["audit"] = False

    edit_results(run, unfinished)
    code, _, err = run_cli(["release", str(run), "--model", "vae", "--force"], capsys)
    assert code == 1 and len(err) == 1 and "vae is not finished (audit not done)" in err[0]

    def failed(doc):
        doc["models"]["vae"].update(status="failed", error="sample: generator 'vae' (x): boom")

    edit_results(run, failed)
    code, _, err = run_cli(["release", str(run), "--model", "vae", "--force"], capsys)
    assert code == 1 and len(err) == 1 and "model vae failed" in err[0] and "boom" in err[0]


# --------------------------------------------------------------------------------------------- privacy filter
def test_near_copies_are_removed_and_an_honest_model_is_kept(run_dir, lenient, capsys):
    folder = RunFolder(run_dir)
    doc = folder.results()
    shares = {}
    for model in ("near-copy", "fresh-phantom", DP_MODEL.name):
        n = len(load_samples(folder.samples_path(model)))
        result = privacy_filter(run_dir, doc["models"][model], lambda a, m=model: folder.scores_path(m, a), n)
        shares[model] = result.removed_share
    print(f"removed shares: {shares}")
    assert shares["near-copy"] >= 0.95, shares
    assert shares["fresh-phantom"] <= 0.10 and shares[DP_MODEL.name] <= 0.10, shares

    # near copies fail the audit; forced, the filter leaves nothing (or next to nothing) to release
    code, out, err = run_cli(["release", str(run_dir), "--model", "near-copy", "--filter", "--force"], capsys)
    if code != 0:
        assert code == 1 and err[-1].startswith("cmraudit: error: model near-copy: the privacy filter removed")
        assert "nothing to release" in err[-1]
    # the honest model passes the lenient policy and keeps its images
    code, out, err = run_cli(["release", str(run_dir), "--model", "fresh-phantom", "--filter", "--policy", str(lenient)],
                         capsys)
    assert code == 0, err
    sheet = json.loads((run_dir / "release" / "fresh-phantom" / "datasheet.json").read_text())
    assert sheet["filter"]["kept"] >= 0.9 * sheet["filter"]["images"]
    summary = inspect(run_dir / "release" / "fresh-phantom" / "cohort", capsys)
    assert (summary["patients"], summary["slices"]) == (sheet["cohort"]["patients"], sheet["cohort"]["slices"])


def test_reidentification_flags_count_with_memorisation_flags(run_dir, lenient, tmp_path):
    """The reidentification score file's ``synthetic_flagged`` (a stand-in here, so the union and the per-reason
    counts are checked whatever the real attack decides at smoke size)."""
    run = copy_run(run_dir, tmp_path / "run")
    n = len(load_samples(RunFolder(run).samples_path("near-copy")))
    memorised = np.load(run / "scores" / "near-copy" / "memorization.npz")["memorised"]
    flagged = np.zeros(n, bool)
    flagged[:10] = True
    np.savez(run / "scores" / "near-copy" / "reidentification.npz", synthetic_flagged=flagged,
             synthetic_best_patient=np.array(["x"] * n), synthetic_similarity=np.zeros(n))
    entry = {"status": "ok", "kind": "memorization", "scores": "scores/near-copy/reidentification.npz"}
    edit_results(run, lambda doc: doc["models"]["near-copy"]["attacks"].__setitem__("reidentification", entry))
    folder = RunFolder(run)
    result = privacy_filter(run, folder.results()["models"]["near-copy"], lambda a: folder.scores_path("near-copy", a),
                            n)
    summary = result.summary()
    assert summary["attacks_used"] == ["memorization", "reidentification"] and summary["attacks_not_run"] == {}
    assert summary["flagged_by"] == {"memorization": int(memorised.sum()), "reidentification": 10}
    assert summary["removed"] == int((memorised | flagged).sum())
    assert summary["flagged_by_several"] == int((memorised & flagged).sum())

    # a score file that does not match the samples is refused, not silently misapplied
    np.savez(run / "scores" / "near-copy" / "reidentification.npz", synthetic_flagged=flagged[:5])
    with pytest.raises(Exception, match="5 synthetic_flagged flags for"):
        privacy_filter(run, folder.results()["models"]["near-copy"], lambda a: folder.scores_path("near-copy", a), n)


def test_filter_without_either_attack_is_a_usage_error(run_dir, capsys, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")

    def drop(doc):
        for name in ("memorization", "reidentification"):
            doc["models"]["vae"]["attacks"].pop(name, None)

    edit_results(run, drop)
    code, _, err = run_cli(["release", str(run), "--model", "vae", "--filter", "--force"], capsys)
    assert code == 2 and len(err) == 1
    assert f"run `cmraudit audit {run} --attack memorization,reidentification` first" in err[0]


def test_reidentification_attack_is_reported_by_the_release(run_dir, lenient):
    if not has_reidentification():
        pytest.skip("the reidentification attack is not registered yet (attacks/reidentification.py is being "
                    "written): the filter then uses memorization alone and says so")
    result = release_model(run_dir, "fresh-phantom", filter=True, policy=lenient, out=run_dir / "release" / "reid")
    entry = RunFolder(run_dir).results()["models"]["fresh-phantom"]["attacks"]["reidentification"]
    summary = result.filter.summary()
    if entry["status"] == "ok":
        assert "reidentification" in summary["attacks_used"]
    else:  # e.g. skipped: its identity network cannot re-identify anyone on 20 phantom patients
        assert summary["attacks_not_run"]["reidentification"].startswith(entry["status"])
        assert "reidentification" in (result.out / "datasheet.md").read_text()


# ---------------------------------------------------------------------------------------- synthetic patients
def test_synthetic_patients_need_ed_and_es(run_dir):
    samples = load_samples(RunFolder(run_dir).samples_path("vae"))
    ids = real_ids(run_dir)
    full = build_cohort(samples, None, ids)
    assert len(full.volumes) == len(set(samples.patients.tolist())) and full.dropped_patients == 0
    assert full.slices == len(samples)
    victim = samples.patients[0]
    keep = ~((samples.patients == victim) & (samples.phases == "ES"))  # one patient loses every ES slice
    keep[np.flatnonzero((samples.patients != victim) & (samples.phases == "ED"))[0]] = False  # another one slice
    cohort = build_cohort(samples, keep, ids)
    assert len(cohort.volumes) == len(full.volumes) - 1 and cohort.dropped_patients == 1
    assert cohort.slices == int(keep.sum()) - cohort.dropped_slices and cohort.dropped_slices >= 2
    for v in cohort.volumes:
        assert v.images["ED"].shape == v.images["ES"].shape == v.masks["ED"].shape
        assert v.patient not in ids
    # a sample that conditioned on every mask twice makes two synthetic patients per conditioning patient
    twice = build_cohort(SliceTable.concat([samples, samples]), None, ids)
    assert len(twice.volumes) == 2 * len(full.volumes) and twice.slices == 2 * len(samples)
    # ids that would equal a real patient's change prefix
    clash = build_cohort(samples, None, {"patient001"})
    assert clash.volumes[0].patient.startswith("synthetic")
