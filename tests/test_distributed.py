"""One model trained by two processes (Gloo, CPU) takes the steps one process takes with the same global batch.

Two ranks are spawned once and run every two-process case; the one-process references run in the test process.
Cases: a GAN without DP (two updates per step, EMA, shards of 3 and 2 rows), the GAN with DP-SGD (fast per-example
gradients, two private networks, Poisson batches that leave a rank empty), and a checkpoint the two processes wrote
resumed by one.
"""
from __future__ import annotations

import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmraudit.api import Conditioning
from cmraudit.registry import get
from cmraudit.testing.tiny import tiny_table
from cmraudit.training.checkpoint import seeded_init
from cmraudit.training.distributed import ShardedDraws, shard
from cmraudit.training.loop import TrainConfig, train
from cmraudit.training.privacy import DPConfig

CASES = {  # name: (train settings, DP)
    "gan": ({"steps": 3, "batch_size": 5}, None),
    "gan-dp": ({"steps": 4, "batch_size": 4, "checkpoint_every": 2}, DPConfig(epsilon=8.0)),
}


def _run(case: str, out, seed: int = 0):
    settings, dp = CASES[case]
    cls = get("generators", "gan")
    with seeded_init(seed):
        gen = cls(cls.make_config("smoke", {}), Conditioning(16))
    # fp32: bf16 autocast (CPUs with AMX) rounds each process's shard differently, so only fp32 steps agree to 1e-5
    config = TrainConfig.for_profile("smoke", cls, {"device": "cpu", "amp": False, **settings})
    result = train(gen, tiny_table(12, 2, 16), config, out, dp=dp)
    return _weights(gen), result


def _weights(gen):
    return {f"{n}.{k}": v.detach().clone() for n, net in gen.nets.items() for k, v in net.state_dict().items()}


def _rank(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case in CASES:
            weights, result = _run(case, os.path.join(root, case))
            torch.save({"weights": weights, "result": result.to_dict()}, os.path.join(root, f"{case}.rank{rank}.pt"))
        # leave together, as World.close does: a rank torn down while the other is still inside the last
        # collective makes Gloo abort it ("terminate called without an active exception", SIGABRT)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-ranks")
    mp.start_processes(_rank, args=(2, _free_port(), str(root)), nprocs=2, start_method="spawn")
    return root


def _load(root, case, rank=0):
    return torch.load(root / f"{case}.rank{rank}.pt", weights_only=True)


def _assert_weights_close(a, b, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-5, atol=atol, msg=key)


# --------------------------------------------------------------------------------------------------- units
def test_shards_are_contiguous_cover_the_batch_and_differ_by_at_most_one_row():
    for n in range(0, 9):
        bounds = [shard(n, r, 3) for r in range(3)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(bounds[i][1] == bounds[i + 1][0] for i in range(2))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_per_example_draws_are_the_global_draws_rows():
    torch.manual_seed(3)
    whole = (torch.randn(5, 2), torch.randint(0, 9, (5,)), torch.rand(5), torch.randn(7), torch.randn(5, 3))
    torch.manual_seed(3)
    like = torch.zeros(2, 3)
    with ShardedDraws(rows=5, start=3, count=2):
        part = (torch.randn(2, 2), torch.randint(0, 9, (2,)), torch.rand(2), torch.randn(7), torch.randn_like(like))
    for w, p, rows in zip(whole, part, (slice(3, 5),) * 3 + (slice(None),) + (slice(3, 5),)):
        assert torch.equal(w[rows], p)  # per-example draws sliced; other shapes drawn whole, as in one process


# --------------------------------------------------------------------------------------------------- two ranks
def test_two_processes_take_the_single_process_steps(two_ranks, tmp_path):
    weights, result = _run("gan", tmp_path / "gan")
    ranks = [_load(two_ranks, "gan", r) for r in (0, 1)]
    _assert_weights_close(ranks[0]["weights"], ranks[1]["weights"], atol=0)  # every rank holds the same model
    # Adam normalises each coordinate's step, so float summation order shows up where a gradient is near zero
    _assert_weights_close(weights, ranks[0]["weights"], atol=1e-5)
    assert ranks[0]["result"]["steps"] == result.steps == 3
    assert ranks[0]["result"]["logs"]["loss_d"] == pytest.approx(result.logs["loss_d"], rel=1e-4)
    assert (two_ranks / "gan" / "training.json").is_file()


def test_dp_with_two_processes_spends_the_single_process_budget(two_ranks, tmp_path):
    weights, result = _run("gan-dp", tmp_path / "gan-dp")
    two = _load(two_ranks, "gan-dp")
    _assert_weights_close(two["weights"], _load(two_ranks, "gan-dp", 1)["weights"], atol=0)
    _assert_weights_close(weights, two["weights"], atol=1e-6)
    for key in ("epsilon", "noise_multiplier", "sample_rate", "steps", "delta"):
        assert two["result"]["dp"][key] == result.dp[key], key


def test_a_checkpoint_written_by_two_processes_resumes_in_one(two_ranks, tmp_path):
    folder = tmp_path / "resumed"
    shutil.copytree(two_ranks / "gan-dp", folder)
    (folder / "training.json").unlink()
    (folder / "checkpoints" / "step_00000004.pt").unlink()  # as if stopped after the step-2 checkpoint
    weights, result = _run("gan-dp", folder)
    two = _load(two_ranks, "gan-dp")
    _assert_weights_close(weights, two["weights"], atol=1e-6)
    assert result.dp == two["result"]["dp"]


def test_the_documented_torchrun_command_trains_what_one_process_trains(tmp_path):
    """docs/scaling.md's command, as a user types it: ``torchrun -m cmraudit train`` with two CPU processes, against
    ``cmraudit train`` in one, on the same run settings."""
    import subprocess
    import sys

    from cmraudit.training.loop import load_trained

    settings = ["--model", "vae", "--generator", "vae", "--profile", "smoke", "--data", "phantom:12", "--canaries", "0",
                "--device", "cpu"]
    # fp32 (see _run): bf16 autocast, on by default on CPUs with AMX, agrees across process counts only to ~1e-2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CMRAUDIT_THREADS": "1", "CMRAUDIT_CPU_BF16": "0"}
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cmraudit",
           "train", str(tmp_path / "two"), *settings]
    one = [sys.executable, "-m", "cmraudit", "train", str(tmp_path / "one"), *settings]
    for cmd in (two, one):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (load_trained(tmp_path / name / "models" / "vae", device="cpu") for name in ("two", "one"))
    _assert_weights_close(_weights(a), _weights(b), atol=1e-5)
