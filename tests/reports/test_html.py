"""report.html: self-contained, escaped, redactable, robust to missing data, and clean in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import run_fakes
from cmraudit.reports import figures
from cmraudit.reports.html import write_report

from cmraudit import results as R
from cmraudit.api import ReportSection
from cmraudit.run import AuditRun
from cmraudit.run.folder import RunFolder

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    """One tiny audited run (fake plugins, plus a section and an attack named <script>), shared by the tests."""
    from cmraudit.registry import load_plugins

    pm = load_plugins()
    plugins = [run_fakes.FakePlugins(), run_fakes.ScriptPlugins()]
    for i, plugin in enumerate(plugins):
        pm.register(plugin, name=f"report-fakes-{i}")
    try:
        R.VALIDATE_ON_WRITE = True
        config = run_fakes.tiny_config(tmp_path_factory.mktemp("report") / "run",
                                       attacks=["known-mia", "known-mem", run_fakes.SCRIPT_NAME, "broken-attack"])
        run = AuditRun(config)
        run.run()
        yield run
    finally:
        R.VALIDATE_ON_WRITE = False
        for plugin in plugins:
            pm.unregister(plugin)


def test_report_is_one_self_contained_file(audited_run):
    html = (audited_run.out / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources)
    assert not re.search(r"https?://|<link|<script|@import|url\(", html, re.IGNORECASE)
    assert "default-src 'none'" in html  # the CSP forbids any load the templates might add later
    for title in ("Executive summary", "Comparison across models", "ROC and log-ROC", "Distance to closest record",
                  "Real and synthetic images", "Closest training / synthetic pairs", "Stencil replay",
                  "Differential privacy parameters", "exact configuration"):
        assert title in html
    assert "contains patient data" in html
    assert 'data = "tinyrun:20"' in unescape(html)  # the exact config, for reproduction


def test_plugin_supplied_strings_are_escaped(audited_run):
    html = (audited_run.out / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert "deliberate attack crash" in html  # a crashed attack is shown, as text


def test_redacted_report_contains_no_real_patient_pixels(audited_run, monkeypatch, tmp_path):
    shown: list[np.ndarray] = []
    grid = figures.grid_uri
    monkeypatch.setattr(figures, "grid_uri", lambda tiles, *a, **k: shown.append(np.asarray(tiles)) or grid(tiles, *a, **k))
    real = figures.to_rgb(audited_run.table.images.numpy())

    def leaked() -> int:
        tiles = np.concatenate(shown)
        return sum(bool(np.any(np.all(np.isclose(real, tile, atol=1e-4), axis=(1, 2, 3)))) for tile in tiles)

    write_report(audited_run.out, tmp_path / "full.html")
    assert leaked() > 0  # control: the default report does show real slices
    shown.clear()
    path = write_report(audited_run.out, tmp_path / "redacted.html", redact=True)
    assert shown and leaked() == 0
    html = path.read_text()
    assert "Redacted report" in html and "contains patient data" not in html


def test_sections_degrade_when_data_is_missing(audited_run, register_plugin, tmp_path):
    class Broken(ReportSection):
        name = "broken-section"
        title = "A broken section"

        def render(self, report):
            raise RuntimeError("no luck")

    class BrokenPlugin:
        from cmraudit import hookimpl

        @hookimpl
        def cmraudit_register_report_sections(self, register):
            register(Broken)

    register_plugin(BrokenPlugin(), name="broken-section-plugin")
    copy = tmp_path / "copy"
    shutil.copytree(audited_run.out, copy)
    (copy / "models" / "fast-tiny" / "samples.npz").unlink()
    shutil.rmtree(copy / "scores")
    class NoData(RunFolder):  # the run's data can no longer be loaded
        def real_data(self):
            return None, None

    html = write_report(NoData(copy)).read_text()
    assert "could not be rendered: RuntimeError: no luck" in html
    assert "No membership-inference scores to plot" in html and "No synthetic samples to show" in html
    assert "Executive summary" in html


def _chromium(page: Path, tmp_path: Path, screenshot: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", "--window-size=1280,2400", f"--screenshot={screenshot}",
           page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if re.search(r"CONSOLE|Uncaught|Refused to|net::ERR", line) and "dbus" not in line.lower()]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(audited_run, tmp_path):
    control = tmp_path / "control.html"
    control.write_text("<html><body><script>console.error('deliberate'); undefinedCall();</script></body></html>")
    assert _console_errors(_chromium(control, tmp_path, tmp_path / "control.png"))  # the check can see errors

    screenshot = tmp_path / "report.png"
    log = _chromium(audited_run.out / "report.html", tmp_path, screenshot)
    assert _console_errors(log) == []
    assert screenshot.is_file() and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_gallery_reads_each_models_fine_texture_ratio():
    """The gallery's last row: the fidelity metric's ratio, with which way it departs from the real slices."""
    from types import SimpleNamespace

    from cmraudit.reports.galleries import _texture

    def model(ratio):
        values = {"fine_texture_gap": {"value": abs(float(np.log2(ratio))), "direction": "lower",
                                       "details": {"ratio": ratio}}}
        return {"metrics": {"fidelity": {"status": "ok", "category": "fidelity", "values": values}}}

    report = SimpleNamespace(models={"noisy": model(5.1), "smooth": model(0.72), "none": {"metrics": {}}})
    assert _texture(report, "noisy") == "5.1× (grainier)"
    assert _texture(report, "smooth") == "0.72× (smoother)"
    assert _texture(report, "none") is None
