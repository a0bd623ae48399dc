"""The plugin core: built-ins, entry points, -p files, blocking, broken plugins, duplicate names, misspelled hooks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmraudit import DatasetSource, hookimpl
from cmraudit.errors import PluginError
from cmraudit.registry import describe_plugins, get, registered

FIXTURES = Path(__file__).parent / "fixtures"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cmraudit", *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


class _Source(DatasetSource):
    name = "throwaway"

    def volumes(self):
        return iter(())


class _ThrowawayPlugin:
    @hookimpl
    def cmraudit_register_datasets(self, register):
        register(_Source)


def test_builtin_datasets_registered():
    assert {"phantom", "acdc", "mnms"} <= set(registered("datasets"))


def test_throwaway_plugin_registers_and_unregisters(register_plugin):
    register_plugin(_ThrowawayPlugin(), name="throwaway-plugin")
    assert get("datasets", "throwaway") is _Source
    info = {i.name: i for i in describe_plugins()}["throwaway-plugin"]
    assert info.registers == {"datasets": ["throwaway"]}


def test_unknown_name_lists_known(register_plugin):
    with pytest.raises(PluginError, match="no dataset named 'nope'.*phantom"):
        get("datasets", "nope")


def test_duplicate_name_names_both_plugins(register_plugin):
    class Clash:
        @hookimpl
        def cmraudit_register_datasets(self, register):
            register(_Source, name="phantom")

    register_plugin(Clash(), name="clashing-plugin")
    with pytest.raises(PluginError, match=r"'phantom' is registered twice: by cmraudit\.data\.sources and by clashing-plugin"):
        registered("datasets")


def test_plugin_raising_in_hook_is_skipped_with_warning(register_plugin, capsys):
    class Raises:
        @hookimpl
        def cmraudit_register_datasets(self, register):
            raise RuntimeError("boom")

    register_plugin(Raises(), name="raising-plugin")
    assert "phantom" in registered("datasets")
    assert "skipping plugin raising-plugin: RuntimeError: boom" in capsys.readouterr().err


def test_misspelled_hook_is_an_error(tmp_path):
    plugin = tmp_path / "typo_plugin.py"
    plugin.write_text(textwrap.dedent("""
        from cmraudit import hookimpl

        @hookimpl
        def cmraudit_register_generator(register):  # missing the final s
            pass
    """))
    result = _cli("-p", str(plugin), "plugins")
    assert result.returncode == 1
    assert "cmraudit_register_generator" in result.stderr and "Traceback" not in result.stderr


def test_p_file_plugin_and_env_var(tmp_path):
    plugin = tmp_path / "local_plugin.py"
    plugin.write_text(textwrap.dedent("""
        from cmraudit import DatasetSource, hookimpl

        class Local(DatasetSource):
            name = "local"
            def volumes(self):
                return iter(())

        @hookimpl
        def cmraudit_register_datasets(register):
            register(Local)
    """))
    for args, env in ((("-p", str(plugin), "plugins", "--json"), None),
                      (("plugins", "--json"), {"CMRAUDIT_PLUGINS": str(plugin)})):
        result = _cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        infos = {i["name"]: i for i in json.loads(result.stdout)}
        assert infos[str(plugin)]["source"] == "-p"
        assert infos[str(plugin)]["registers"] == {"datasets": ["local"]}


def test_entry_point_plugin_installed_with_pip_and_broken_one_skipped(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(FIXTURES / "entrypoint_plugin")],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    result = _cli("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    infos = {i["name"]: i for i in json.loads(result.stdout)}
    assert infos["toy"]["source"] == "entry point" and infos["toy"]["version"] == "0.0.1"
    assert infos["toy"]["registers"] == {"datasets": ["toy"]}
    assert "toy-broken" not in infos
    warnings = [line for line in result.stderr.splitlines() if "toy-broken" in line]
    assert warnings == ["cmraudit: skipping plugin toy-broken: ImportError: this plugin is deliberately broken"]
    # --help keeps working with the broken plugin installed, and blocking removes the warning
    assert _cli("--help", env=env).returncode == 0
    blocked = _cli("plugins", "--json", env={**env, "CMRAUDIT_DISABLE_PLUGINS": "toy-broken,toy"})
    assert "toy-broken" not in blocked.stderr
    assert "toy" not in {i["name"] for i in json.loads(blocked.stdout)}


def test_plugins_json_lists_builtin_datasets():
    result = _cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    infos = {i["name"]: i for i in json.loads(result.stdout)}
    assert infos["cmraudit.data.sources"]["source"] == "built-in"
    assert set(infos["cmraudit.data.sources"]["registers"]["datasets"]) >= {"phantom", "acdc", "mnms"}


def test_plugin_adds_a_command(tmp_path):
    plugin = tmp_path / "command_plugin.py"
    plugin.write_text(textwrap.dedent("""
        from cmraudit import hookimpl

        @hookimpl
        def cmraudit_register_commands(app):
            @app.command("hello")
            def hello(name: str = "heart"):
                \"\"\"Greet someone.\"\"\"
                print(f"hello {name}")
    """))
    result = _cli("-p", str(plugin), "hello", "--name", "LV")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello LV"
    assert "hello" in _cli("-p", str(plugin), "--help").stdout
