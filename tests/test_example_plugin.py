"""The example third-party package: pip-installed into a temporary target it appears in `cmraudit plugins` and
runs a smoke audit whose report carries its section; its classes keep their contracts; the single-file plugin
works through -p."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmraudit.testing import check_attack, check_generator, check_metric

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "cmraudit-example-plugin"
LOCAL_PLUGIN = ROOT / "examples" / "local_plugin.py"


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CMRAUDIT_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cmraudit", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The package pip-installed (from a copy, so no build files land in the source tree) into a temporary target;
    removing the target uninstalls it. Returns the environment that makes it importable."""
    base = tmp_path_factory.mktemp("example-plugin")
    source = shutil.copytree(PACKAGE, base / "src", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                   "__pycache__"))
    target = base / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_installed_package_and_single_file_plugin_show_up_in_cmraudit_plugins(installed):
    result = _cli("-p", str(LOCAL_PLUGIN), "plugins", "--json", env=installed)
    assert result.returncode == 0, result.stderr
    infos = {i["name"]: i for i in json.loads(result.stdout)}
    assert infos["example"]["source"] == "entry point" and infos["example"]["version"] == "0.1.0"
    assert infos["example"]["registers"] == {"generators": ["example-unet"], "attacks": ["example-attack"],
                                             "metrics": ["example-metric"], "report_sections": ["example-section"]}
    assert infos[str(LOCAL_PLUGIN)]["source"] == "-p"
    assert infos[str(LOCAL_PLUGIN)]["registers"] == {"metrics": ["blood-myocardium-contrast"]}
    assert "skipping plugin" not in result.stderr


def test_smoke_audit_with_the_installed_and_the_single_file_plugin(installed, tmp_path):
    if importlib.util.find_spec("cmraudit.cli.run") is None:
        pytest.skip("`cmraudit run` is not part of this installation (cmraudit.cli.run missing)")
    out = tmp_path / "run"
    result = _cli("-p", str(LOCAL_PLUGIN), "run", "--generator", "example-unet", "--attack", "example-attack",
                  "--metric", "example-metric,blood-myocardium-contrast", "--profile", "smoke", "--data", "phantom:12",
                  "--out", str(out), env=installed)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    model = doc["models"]["example-unet"]
    assert model["status"] == "ok", model["error"]
    attack = model["attacks"]["example-attack"]
    assert attack["status"] == "ok" and 0.0 <= attack["auc"] <= 1.0 and attack["level"] == "patient"
    metrics = model["metrics"]
    assert metrics["example-metric"]["status"] == "ok" and metrics["blood-myocardium-contrast"]["status"] == "ok"
    value = metrics["example-metric"]["values"]["structure_intensity_error"]
    assert 0.0 <= value["value"] <= 2.0 and value["direction"] == "lower"
    report = (out / "report.html").read_text()
    assert "Example plugin: structure intensities and nearest-neighbour attack" in report
    # the marker comes from ExampleSection.render itself: present only when the section rendered, not as an error note
    section = report.split('class="example-section" data-plugin="cmraudit-example-plugin"', 1)[1].split("</table>")[0]
    assert "<td>example-unet</td>" in section and "not run" not in section


# --------------------------------------------------------------------------------------------------- contracts
@pytest.fixture(scope="module")
def example():
    """The example package imported from its source folder (in this process, for the contract checks)."""
    sys.path.insert(0, str(PACKAGE))
    try:
        from cmraudit_example_plugin import attack, metric, section, unet

        yield {"unet": unet, "attack": attack, "metric": metric, "section": section}
    finally:
        sys.path.remove(str(PACKAGE))


def test_example_generator_attack_and_metric_keep_the_contract(example):
    gen = check_generator(example["unet"].ExampleUNetGenerator, steps=20)
    assert gen.has_membership_signal()
    result = check_attack(example["attack"].CalibratedNearestNeighbourAttack, generator=gen)
    assert result.level == "patient"
    values = check_metric(example["metric"].StructureIntensityError, generator=gen)
    ci = values["structure_intensity_error"].ci
    assert ci[0] <= values["structure_intensity_error"].value <= ci[1]


def test_example_section_escapes_what_it_did_not_write(example):
    html = example["section"].ExampleSection().render({"models": {"<script>x</script>": {
        "generator": "example-unet", "status": "failed", "error": "boom",
        "attacks": {"example-attack": {"status": "failed", "error": "<img src=x onerror=alert(1)>"}},
        "metrics": {}}}})
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "failed: &lt;img" in html


def test_single_file_plugin_keeps_the_metric_contract():
    spec = importlib.util.spec_from_file_location("local_plugin_under_test", LOCAL_PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = check_metric(module.BloodMyocardiumContrast)
    details = values["contrast_error"].details
    assert details["real_contrast"] > 0  # LV blood is brighter than myocardium in the tiny data, as in SSFP cine
    gap = abs(details["synthetic_contrast"] - details["real_contrast"])
    assert values["contrast_error"].value == pytest.approx(gap)
