"""Two-stage generation in a run: mask models per DP budget, their masks conditioning every image model of that
budget, the composed privacy record, resume, and bad settings refused up front."""
from __future__ import annotations

import pytest
import torch

from cmraudit.errors import CmrauditError
from cmraudit.run import AuditRun
from cmraudit.run.config import ModelSpec
from cmraudit.run.folder import load_masks, load_samples
from cmraudit.training.privacy import compose

# every results.json these tests write is checked against the schema as it is written
pytestmark = pytest.mark.usefixtures("validated_results")


def _config(fakes, out, **changes):
    models = [ModelSpec("fast-tiny", "fast-tiny"), ModelSpec("fast-tiny-dp2", "fast-tiny", 2.0)]
    return fakes.tiny_config(out, mask_source="generated", models=models, dp={"accountant": "rdp"}, **changes)


def test_generated_masks_condition_every_model_of_their_budget(fakes, tmp_path):
    config = _config(fakes, tmp_path / "run")
    doc = AuditRun(config).run()
    out = config.out

    assert {name: e["status"] for name, e in doc["mask_models"].items()} == {"masks": "ok", "masks-dp2": "ok"}
    assert doc["mask_models"]["masks"]["training"]["dp"] is None
    mask_dp = doc["mask_models"]["masks-dp2"]["training"]["dp"]
    assert mask_dp["epsilon"] == pytest.approx(2.0, rel=0.05)  # the mask model spends its own budget

    split = AuditRun(config).split
    for model, mask_model in (("fast-tiny", "masks"), ("fast-tiny-dp2", "masks-dp2")):
        entry = doc["models"][model]
        assert entry["status"] == "ok"
        assert entry["samples"]["mask_source"] == "generated" and entry["samples"]["mask_model"] == mask_model
        masks = load_masks(out / doc["mask_models"][mask_model]["masks"]["path"], mask_model)
        samples = load_samples(out / entry["samples"]["path"], model)
        assert torch.equal(samples.masks, masks.masks), "the image model painted on its mask model's masks"
        assert samples.meta["mask_model"] == mask_model
        assert set(masks.patients.tolist()) <= set(split.reference), "labels come from reference patients"

    privacy = doc["models"]["fast-tiny-dp2"]["samples"]["privacy"]
    image_eps = doc["models"]["fast-tiny-dp2"]["training"]["dp"]["epsilon"]
    image_dp = doc["models"]["fast-tiny-dp2"]["training"]["dp"]
    assert privacy["epsilon"] == pytest.approx(compose([image_dp, mask_dp])["epsilon"])
    assert max(image_eps, mask_dp["epsilon"]) < privacy["epsilon"] < image_eps + mask_dp["epsilon"]
    assert privacy["basic_epsilon"] == pytest.approx(image_eps + mask_dp["epsilon"])
    assert privacy["composition"] == f"{image_dp['accountant']} accountant over both models' steps"
    assert "privacy" not in doc["models"]["fast-tiny"]["samples"]
    judged = {r["rule"]: r for r in doc["models"]["fast-tiny-dp2"]["verdict"]["rules"]}
    assert judged["max_epsilon"]["value"] == pytest.approx(privacy["epsilon"]), "the gate judges the whole cohort"
    assert "Generated masks" in (out / "report.html").read_text()

    # a rerun trains nothing again: the mask models and their masks stand
    stamp = (out / "models" / "masks" / "masks.npz").stat().st_mtime_ns
    again = AuditRun(_config(fakes, tmp_path / "run")).run()
    assert (out / "models" / "masks" / "masks.npz").stat().st_mtime_ns == stamp
    assert again["models"]["fast-tiny"]["samples"] == doc["models"]["fast-tiny"]["samples"]


def test_switching_to_generated_masks_resamples(fakes, tmp_path):
    config = fakes.tiny_config(tmp_path / "run")
    doc = AuditRun(config).run()
    assert doc["models"]["fast-tiny"]["samples"]["mask_source"] == "reference"
    doc = AuditRun(fakes.tiny_config(tmp_path / "run", mask_source="generated")).run()
    assert doc["models"]["fast-tiny"]["samples"]["mask_source"] == "generated"
    assert doc["mask_models"]["masks"]["status"] == "ok"


def test_an_unknown_mask_generator_is_refused_before_any_work(fakes, tmp_path):
    config = _config(fakes, tmp_path / "run", mask_generator="no-such-masks")
    with pytest.raises(CmrauditError, match="no-such-masks"):
        AuditRun(config).prepare()
    assert not (tmp_path / "run" / "results.json").exists()
