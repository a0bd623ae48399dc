"""Shared test set-up: one torch thread (CI machines have two cores), no network, throwaway plugins."""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# the per-user cache (phantom tables, public pretraining) lives in a fresh folder per test session, never in the
# user's home: every session starts cold, and its tests share what they render
os.environ["CMRAUDIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="cmraudit-test-cache-")
# ...and removed when the session ends: about 85 MB per session would otherwise pile up in the temp folder
atexit.register(shutil.rmtree, os.environ["CMRAUDIT_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


class _NoNetwork(socket.socket):
    """Everything must work offline: any attempt to open an internet socket fails the test."""

    def connect(self, address):  # type: ignore[override]
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise RuntimeError(f"network access attempted in a test: {address!r}")
        return super().connect(address)


socket.socket = _NoNetwork  # type: ignore[misc]


@pytest.fixture
def register_plugin():
    """Register throwaway plugin objects for one test; always unregistered afterwards.

        def test_x(register_plugin):
            register_plugin(MyPluginClassOrModule, name="test-plugin")
    """
    from cmraudit.registry import load_plugins

    pm = load_plugins()
    added: list[object] = []

    def _register(plugin: object, name: str | None = None) -> object:
        pm.register(plugin, name=name)
        added.append(plugin)
        return plugin

    try:
        yield _register
    finally:
        for plugin in added:
            if pm.is_registered(plugin):
                pm.unregister(plugin)


@pytest.fixture(scope="session")
def phantom_table_32():
    """A small phantom at 32x32 shared across tests (generation is deterministic)."""
    from cmraudit.data.sources import open_source

    return open_source("phantom:20").load(32)


@pytest.fixture
def validated_results(monkeypatch):
    """Every results.json written while the test runs is checked against the schema as it is written."""
    from cmraudit import results

    monkeypatch.setattr(results, "VALIDATE_ON_WRITE", True)


@pytest.fixture
def fakes(register_plugin):
    """The throwaway run plugins of ``run_fakes`` (tiny data, fast generators, known attacks), registered."""
    import run_fakes

    register_plugin(run_fakes.FakePlugins(), name="run-fakes")
    run_fakes.CALLS.clear()
    return run_fakes
