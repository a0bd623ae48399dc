"""Same data, seed and command ⇒ the same results.json numbers: in a fresh process, and after SIGKILL + resume.

Each run is a separate ``python -m cmraudit run`` process (torch seeds its global RNG differently in every
process, so an in-process repeat would miss exactly the bug these tests are for): a VAE with and without DP
(public pretraining included), the smoke profile's canaries, two attacks and the fidelity metric.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cmraudit import results as R
from cmraudit.run.builders import build_generator
from cmraudit.run.config import ModelSpec, RunConfig

# timings, and where the public pretraining came from: the first run trains it, later ones find it in the per-user
# cache, and the numbers must not tell the difference
TIMINGS = {"seconds", "updated", "created", "environment", "from_user_cache"}


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "cmraudit", "run", "--profile", "smoke", "--data", "phantom:12",
            "--generator", "vae", "--dp-epsilon", "inf,8", "--dp-pretrain", "phantom:8,seed=1",
            "--attack", "gan-leaks,elbo", "--metric", "fidelity", "--set", "train.steps=30",
            "--set", "train.checkpoint_every=10", "--out", str(out)]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CMRAUDIT_THREADS": "1"}


def numbers(doc, path: str = "") -> dict[str, float | str]:
    """Every leaf of a results document except timings, keyed by its path."""
    if isinstance(doc, dict):
        return {k: v for key, value in doc.items() if key not in TIMINGS
                for k, v in numbers(value, f"{path}/{key}").items()}
    if isinstance(doc, list):
        return {k: v for i, value in enumerate(doc) for k, v in numbers(value, f"{path}[{i}]").items()}
    return {path: doc}


def differences(a: dict, b: dict) -> list[str]:
    out = [f"{k}: only in one" for k in set(a) ^ set(b)]
    for key in set(a) & set(b):
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, float) and math.isfinite(x):
            if abs(x - y) > 1e-6 * max(1.0, abs(x)):
                out.append(f"{key}: {x} vs {y}")
        elif x != y:
            out.append(f"{key}: {x!r} vs {y!r}")
    return sorted(out)


def run(out: Path) -> dict:
    done = subprocess.run(command(out), env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return numbers(R.load(out))


def test_generators_start_from_seeded_weights():
    """Initial weights depend on the seed only, never on the caller's global RNG, which building leaves as it was."""
    config = RunConfig(profile="smoke", models=[ModelSpec("vae", "vae")])
    spec = config.models[0]
    torch.manual_seed(1)
    first = build_generator(config, spec)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    again, other = build_generator(config, spec), build_generator(config, spec, seed=config.seed + 1)
    assert torch.equal(torch.get_rng_state(), state)
    pairs = list(zip(first.nets["vae"].parameters(), again.nets["vae"].parameters(), other.nets["vae"].parameters()))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


def test_same_command_same_numbers_in_fresh_processes_and_after_sigkill(tmp_path):
    first = run(tmp_path / "first")
    assert any("/training/logs/" in k for k in first) and any(k.endswith("/epsilon") for k in first)
    assert differences(first, run(tmp_path / "second")) == []

    # killed while training (after its first checkpoint), then the same command again: it resumes and loses nothing
    out = tmp_path / "killed"
    process = subprocess.Popen(command(out), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = out / "models" / "vae" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step_*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed_midway = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed_midway, "the run finished before it could be killed: make it longer"
    assert not (checkpoints / "step_00000030.pt").exists()  # it really stopped before the end of training
    assert differences(first, run(out)) == []
