"""The wheel carries every built-in plugin module, the command-line package and every report template."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from cmraudit.registry import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_builtin_plugins_and_templates(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("cmraudit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in DEFAULT_PLUGINS:
        assert module.replace(".", "/") + ".py" in names, f"{module} missing from the wheel"
    templates = [p.relative_to(ROOT / "reports") for p in (ROOT / "reports" / "templates").glob("*") if p.is_file()]
    for template in templates:
        assert f"cmraudit/reports/{template.as_posix()}" in names, f"template {template} missing from the wheel"
    assert "cmraudit/cli/__init__.py" in names and "cmraudit/__main__.py" in names
    schemas = [p.name for p in (ROOT / "cmraudit").glob("*.json")]
    for schema in schemas:
        assert f"cmraudit/{schema}" in names


def test_installed_code_imports_only_runtime_dependencies():
    """`pip install -e .` (no dev extra) must be enough to run: no test-only package is imported by package code."""
    import re

    dev_only = ("sklearn", "faiss")
    for folder in ("cmraudit", "plugins", "attacks", "reports"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "testing.py":  # the pytest helpers for plugin authors import pytest on demand
                continue
            for line in path.read_text().splitlines():
                m = re.match(r"\s*(?:from|import)\s+(\w+)", line)
                assert not (m and m.group(1) in dev_only), f"{path.relative_to(ROOT)} imports {m.group(1)}"
