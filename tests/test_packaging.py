"""The wheel carries every built-in plugin module, the command-line package and every report template."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from cmraudit.registry import DEFAULT_PLUGINS

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_builtin_plugins_and_templates(tmp_path):
    # built from a clean copy: setuptools would otherwise reuse a stale build/ folder and hide a missing package
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("build", ".git", ".ci-venv", "*.egg-info", "__pycache__",
                                                                 ".pytest_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("cmraudit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in DEFAULT_PLUGINS:
        assert module.replace(".", "/") + ".py" in names, f"{module} missing from the wheel"
    templates = [p.relative_to(ROOT / "reports") for p in (ROOT / "reports" / "templates").glob("*") if p.is_file()]
    for template in templates:
        assert f"cmraudit/reports/{template.as_posix()}" in names, f"template {template} missing from the wheel"
    assert "cmraudit/cli/__init__.py" in names and "cmraudit/__main__.py" in names
    for path in (ROOT / "cmraudit").rglob("*.py"):  # every core module, in whatever subpackage
        module = path.relative_to(ROOT).as_posix()
        assert module in names, f"{module} missing from the wheel (list its package in pyproject.toml)"
    schemas = [p.name for p in (ROOT / "cmraudit").glob("*.json")]
    for schema in schemas:
        assert f"cmraudit/{schema}" in names


def test_installed_code_imports_only_runtime_dependencies():
    """`pip install -e .` (no dev extra) must be enough to run: no test-only package is imported by package code."""
    import re

    dev_only = ("sklearn", "faiss")
    for folder in ("cmraudit", "plugins", "attacks", "reports"):
        for path in (ROOT / folder).rglob("*.py"):
            if "testing" in path.parts:  # the pytest helpers for plugin authors import pytest on demand
                continue
            for line in path.read_text().splitlines():
                m = re.match(r"\s*(?:from|import)\s+(\w+)", line)
                assert not (m and m.group(1) in dev_only), f"{path.relative_to(ROOT)} imports {m.group(1)}"
