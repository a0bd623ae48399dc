"""`cmraudit run --executor ray`: the run's models as tasks on a (local, multi-node) Ray cluster give the numbers
the in-process run gives, a task killed mid-training is recorded and resumed by rerunning the command, and
results.json stays whole when several processes write it."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmraudit import results as R
from cmraudit.errors import ConfigError
from cmraudit.run.config import merge_layers
from cmraudit.run.records import ModelRecords

try:
    import ray
except ImportError:  # the optional extra: pip install -e ".[ray]"
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason='Ray is not installed (pip install -e ".[ray]")')

#: the command the tests run, and docs/scaling.md shows: two generators at ε ∞ and 8, LiRA with 4 shadows
RUN_ARGS = ["--profile", "smoke", "--data", "phantom:12", "--canaries", "0", "-g", "vae,diffusion",
            "--dp-epsilon", "inf,8", "--attack", "mia,lira", "--set", "options.lira.shadows=4"]
KILLED = "vae"  # the model whose training worker dies at step 3 (checkpoints every 2 steps on smoke)


# ------------------------------------------------------------------------------------------ results.json merge
def _writer(path: str, model: str, n: int) -> None:
    doc = R.load(path)
    records = ModelRecords(Path(path), doc)
    for i in range(n):
        records.record(model, "metrics", f"m{i}", {"status": "ok", "values": {}})
    records.finish(model, "audit")


def test_concurrent_writers_keep_each_others_records(tmp_path):
    path = tmp_path / "results.json"
    doc = R.new_document({"seed": 0}, {}, {})
    for name in ("a", "b"):
        doc["models"][name] = R.new_model(name, "vae", "vae", None)
    R.write(path, doc)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), name, 25)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    final = R.load(path)
    for name in ("a", "b"):  # without the lock and merge, one writer's stale copy overwrites the other's records
        assert sorted(final["models"][name]["metrics"]) == sorted(f"m{i}" for i in range(25))
        assert final["models"][name]["status"] == "ok"
    assert (tmp_path / "results.json.lock").exists()


def test_a_lone_writer_reads_back_what_it_wrote(tmp_path):
    path = tmp_path / "results.json"
    doc = R.new_document({"seed": 0}, {}, {})
    doc["models"]["a"] = R.new_model("a", "vae", "vae", None)
    records = ModelRecords(path, doc)
    records.refresh_status(["a"])
    records.record("a", "metrics", "m", {"status": "ok", "values": {}})
    records.finish("a", "audit")
    records.refresh_status(["a"])
    on_disk = R.load(path)
    assert on_disk == json.loads(json.dumps(R.jsonable(records.doc)))
    assert on_disk["status"] == "complete"


def test_executor_settings():
    config = merge_layers([("t", {"executor": "ray", "ray_address": "auto"}),
                           ("u", {"executor_resources": {"num_cpus": 2}}),
                           ("v", {"executor_resources": {"num_gpus": 1}})])
    assert config.executor_resources == {"num_cpus": 2, "num_gpus": 1}
    assert config.to_toml_dict()["executor"] == "ray"
    assert "executor" not in merge_layers([]).to_toml_dict()  # the in-process run's config.toml is unchanged
    with pytest.raises(ConfigError, match="executor must be one of"):
        merge_layers([("t", {"executor": "slurm"})])
    with pytest.raises(ConfigError, match="unknown key"):
        merge_layers([("t", {"executor_resources": {"cpus": 1}})])


def test_shadow_plan_is_what_lira_trains():
    from cmraudit.attacks.lira import shadow_plan, shadow_subsets

    reference = [f"p{i}" for i in range(6)]
    plan = shadow_plan(reference, 3, seed=5)
    assert [p for p, _ in plan] == shadow_subsets(reference, 3, 5)
    assert [s for _, s in plan] == [1005, 1006, 1007]
    assert shadow_plan(reference[:1], 3, seed=5) == []


# ------------------------------------------------------------------------------------------------ on a cluster
def _cmraudit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import sys; from cmraudit.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=400)


def _values(out: Path) -> dict[tuple[str, str, str], dict]:
    """Every attack's and metric's entry of every model, without its run time."""
    doc = R.load(out)
    return {(model, kind, name): {k: v for k, v in entry.items() if k != "seconds"}
            for model, record in doc["models"].items() for kind in ("attacks", "metrics")
            for name, entry in record[kind].items()}


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory):
    """The in-process run, then the same command on a local Ray cluster (a head without CPUs and two one-CPU
    worker nodes) whose worker training KILLED dies at step 3, then that command again."""
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("ray")
    marker = tmp / "killed-once"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CMRAUDIT_THREADS": "1"}
    saved = os.environ.get("CMRAUDIT_FAULT_KILL")
    os.environ["CMRAUDIT_FAULT_KILL"] = f"{KILLED}:3:{marker}"  # the nodes' workers inherit it
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        local = _cmraudit(["run", "--out", str(tmp / "local"), *RUN_ARGS], env)
        assert local.returncode == 0, local.stderr[-3000:]
        ray_cmd = ["run", "--out", str(tmp / "ray"), *RUN_ARGS, "--executor", "ray", "--address", cluster.address]
        first = _cmraudit(ray_cmd, env)
        first_doc = R.load(tmp / "ray")
        checkpoint = tmp / "ray" / "models" / KILLED / "checkpoints" / "step_00000002.pt"
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        second = _cmraudit(ray_cmd, env)
        yield {"local": tmp / "local", "ray": tmp / "ray", "first": first, "first_doc": first_doc,
               "second": second, "marker": marker, "checkpoint": checkpoint, "stamp": stamp}
    finally:
        cluster.shutdown()
        if saved is None:
            os.environ.pop("CMRAUDIT_FAULT_KILL", None)
        else:
            os.environ["CMRAUDIT_FAULT_KILL"] = saved


@needs_ray
@pytest.mark.slow
def test_killed_task_is_recorded_and_the_others_go_on(cluster_runs):
    first, doc = cluster_runs["first"], cluster_runs["first_doc"]
    assert cluster_runs["marker"].exists(), "the fault was never injected"
    assert first.returncode == 1, first.stderr[-3000:]
    killed = doc["models"][KILLED]
    assert killed["status"] == "failed" and killed["error"].startswith("train: ray task")
    assert "\n" not in killed["error"]
    assert f"{KILLED}: train: ray task" in first.stderr
    assert doc["status"] == "complete"  # every model finished, one of them failed
    local = _values(cluster_runs["local"])
    others = [m for m in doc["models"] if m != KILLED]
    assert all(doc["models"][m]["status"] == "ok" for m in others)
    for key, value in local.items():  # the models that ran through give the in-process numbers exactly
        if key[0] in others:
            assert {k: v for k, v in doc["models"][key[0]][key[1]][key[2]].items() if k != "seconds"} == value, key


@needs_ray
@pytest.mark.slow
def test_rerun_resumes_and_equals_the_in_process_run(cluster_runs):
    second = cluster_runs["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert cluster_runs["stamp"] is not None, "the killed training left no checkpoint"
    # resumed from its step-2 checkpoint, not retrained from scratch (which would rewrite that checkpoint)
    assert cluster_runs["checkpoint"].stat().st_mtime_ns == cluster_runs["stamp"]
    doc = R.load(cluster_runs["ray"])
    assert doc["status"] == "complete"
    assert all(e["status"] == "ok" for e in doc["models"].values())
    local, distributed = _values(cluster_runs["local"]), _values(cluster_runs["ray"])
    assert set(local) == set(distributed)
    assert any(k[2] == "lira" and v["status"] == "ok" for k, v in distributed.items())
    for key, value in local.items():
        assert distributed[key] == value, key
    assert (cluster_runs["ray"] / "report.html").exists()
    assert "train vae" in second.stderr  # workers' progress reached the driver's display
