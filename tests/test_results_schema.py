"""results.json's JSON Schema: itself valid, shipped in the package, strict where the gate relies on it."""
from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest

from cmraudit import results as R
from cmraudit.errors import RunError


def minimal() -> dict:
    doc = R.new_document({"seed": 0, "profile": "smoke"}, R.environment("cpu", 0),
                         {"source": "phantom:8", "image_size": 32, "split": {"members": 4, "nonmembers": 2}})
    doc["models"]["vae"] = R.new_model("vae", "vae", "vae", None)
    return R.jsonable(doc)


def test_schema_is_a_valid_draft_2020_12_schema_in_the_package():
    schema = R.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == R.SCHEMA_ID == "cmraudit.results/1"
    assert R.SCHEMA_FILE.parent.name == "cmraudit"  # package data ("cmraudit" = ["*.json"] in pyproject.toml)


def test_a_fresh_document_validates_and_round_trips(tmp_path):
    doc = minimal()
    R.validate(doc)
    R.write(tmp_path / "results.json", doc)
    assert R.load(tmp_path)["models"]["vae"]["status"] == "pending"


@pytest.mark.parametrize("breakage, where", [
    (lambda d: d.update(schema="cmraudit.results/0"), "schema"),
    (lambda d: d["models"]["vae"].update(status="done"), "models/vae/status"),
    (lambda d: d["models"]["vae"]["attacks"].update(loss={"status": "ok", "kind": "mia"}), "models/vae/attacks/loss"),
    (lambda d: d["models"]["vae"]["attacks"].update(loss={"status": "failed"}), "models/vae/attacks/loss"),
    (lambda d: d["models"]["vae"]["metrics"].update(fid={"status": "skipped", "category": "fidelity"}),
     "models/vae/metrics/fid"),
    (lambda d: d["models"]["vae"]["metrics"].update(fid={"status": "ok", "category": "fidelity", "values": {
        "fd": {"value": 1.0, "direction": "sideways"}}}), "models/vae/metrics/fid/values/fd/direction"),
    (lambda d: d["models"]["vae"].update(training={"steps": 3, "seconds": 1.0, "dp": {"epsilon": 8}}),
     "models/vae/training"),
])
def test_violations_are_reported_with_their_location(breakage, where):
    doc = minimal()
    breakage(doc)
    with pytest.raises(RunError, match="does not match"):
        R.validate(doc)
    errors = list(jsonschema.Draft202012Validator(R.schema()).iter_errors(doc))
    assert any("/".join(map(str, e.absolute_path)).startswith(where) for e in errors)


def test_non_finite_numbers_become_null():
    assert R.jsonable({"eps": math.inf, "auc": np.float32(0.5), "n": np.int64(3), "a": np.array([1.0, np.nan])}) == \
        {"eps": None, "auc": 0.5, "n": 3, "a": [1.0, None]}


def test_load_names_the_file_it_cannot_use(tmp_path):
    with pytest.raises(RunError, match="no results file"):
        R.load(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(RunError, match="not a readable results file"):
        R.load(tmp_path / "results.json")
    (tmp_path / "results.json").write_text(json.dumps({"schema": "other/2"}))
    with pytest.raises(RunError, match="expected schema"):
        R.load(tmp_path)


def test_headline_picks_the_worst_membership_attack():
    doc = minimal()
    m = doc["models"]["vae"]
    m["attacks"] = {"a": {"status": "ok", "kind": "mia", "auc": 0.6, "auc_ci": [0.5, 0.7], "tpr_at_fpr": {
        "0.01": {"tpr": 0.03, "achieved_fpr": 0.01, "resolvable": True, "ci": [0.0, 0.12]}}},
        "b": {"status": "ok", "kind": "mia", "auc": 0.55, "auc_ci": [0.5, 0.6], "tpr_at_fpr": {}},
        "c": {"status": "ok", "kind": "memorization", "auc": 0.9, "auc_ci": [0.8, 1.0], "tpr_at_fpr": {}}}
    h = R.headline(m)
    assert (h["worst_attack"], h["auc"], h["tpr_at_1pct"], h["tpr_at_1pct_ci"]) == ("a", 0.6, 0.03, [0.0, 0.12])
