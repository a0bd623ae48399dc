"""Kill-and-resume: a DP run killed with SIGKILL and started again continues its step counter, RNG streams and
privacy accountant, losing at most one checkpoint interval and ending where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_generator import TinyDenoiser, build, tiny_table

from cmraudit.training.checkpoint import latest_checkpoint
from cmraudit.training.loop import TrainConfig, train
from cmraudit.training.privacy import DPConfig

TESTS = Path(__file__).parent
STEPS, EVERY = 16, 4
CONFIG = dict(steps=STEPS, batch_size=3, checkpoint_every=EVERY, seed=7)
DP = dict(noise_multiplier=1.1, accountant="rdp")

CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from cmraudit.training.privacy import DPConfig
    from cmraudit.training.loop import TrainConfig, train
    from tiny_generator import TinyDenoiser, build, tiny_table

    def progress(step, total, logs):
        with open({progress!r}, "a") as fh:
            fh.write(f"{{step}}\\n")
        time.sleep(0.15)  # slow enough to be killed between checkpoints

    train(build(TinyDenoiser), tiny_table(), TrainConfig(**{config!r}), {out!r}, dp=DPConfig(**{dp!r}),
          callback=progress)
""")


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    _, state = latest_checkpoint(run / "checkpoints")
    return {**state["nets"]["net"], **{f"ema.{k}": v for k, v in state["runner"]["ema"]["nets"]["net"].items()}}


def _killed_run(out: Path, progress: Path) -> int:
    """Start training in a subprocess, SIGKILL it after its first checkpoint; return the last step it finished."""
    script = CHILD.format(tests=str(TESTS), progress=str(progress), out=str(out), config=CONFIG, dp=DP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            done = [int(s) for s in progress.read_text().split()] if progress.exists() else []
            if done and done[-1] >= EVERY + 2:
                break
            if child.poll() is not None:
                pytest.fail(f"training subprocess ended early: {child.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("training subprocess made no progress")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return max(int(s) for s in progress.read_text().split())


def test_sigkilled_dp_run_resumes_where_it_stopped(tmp_path):
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    last_done = _killed_run(killed_dir, tmp_path / "progress.txt")
    assert last_done < STEPS and not (killed_dir / "training.json").exists()

    steps_after_restart: list[int] = []
    resumed = train(build(TinyDenoiser, seed=99), tiny_table(), TrainConfig(**CONFIG), killed_dir,
                    dp=DPConfig(**DP), callback=lambda step, total, logs: steps_after_restart.append(step))
    first = steps_after_restart[0]
    assert (first - 1) % EVERY == 0 and first - 1 > 0  # continued from a checkpoint, not from scratch
    assert last_done - (first - 1) <= EVERY  # lost at most one checkpoint interval
    assert steps_after_restart == list(range(first, STEPS + 1))

    straight = train(build(TinyDenoiser), tiny_table(), TrainConfig(**CONFIG), straight_dir, dp=DPConfig(**DP))
    assert resumed.dp == straight.dp  # same σ, q, steps: the same ε, accounted across the restart
    assert resumed.dp["steps"] == STEPS
    summary = json.loads((killed_dir / "training.json").read_text())
    assert summary["steps"] == STEPS and summary["seconds"] > 0
    # same batches, noise and optimiser state after the restart: the very same weights (and EMA) at the end
    a, b = _final_weights(killed_dir), _final_weights(straight_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_run_resumes_in_process_with_identical_result(tmp_path):
    """The same without a subprocess and without DP: an exception mid-run, then the same call again."""
    class Interrupt(Exception):
        pass

    def stop_at_7(step, total, logs):
        if step == 7:
            raise Interrupt

    config = TrainConfig(steps=10, batch_size=4, checkpoint_every=3, seed=3)
    with pytest.raises(Interrupt):
        train(build(TinyDenoiser), tiny_table(), config, tmp_path / "a", callback=stop_at_7)
    gen = build(TinyDenoiser, seed=5)
    train(gen, tiny_table(), config, tmp_path / "a")
    train(build(TinyDenoiser), tiny_table(), config, tmp_path / "b")
    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "net" in gen.nets and not gen.nets["net"].training
