"""Wall time of a sweep (gan, vae, diffusion, flow at ε ∞ and 8: eight models) in this process against the same
sweep as tasks on Ray (``cmraudit run --executor ray``), side by side, and whether their numbers agree.

    python benchmarks/bench_ray_sweep.py                               # smoke sweep, a local Ray instance
    python benchmarks/bench_ray_sweep.py --address auto                # on the cluster this machine has joined
    python benchmarks/bench_ray_sweep.py --profile quick --lira 8 -- --set train.steps=200   # extra run args

Each run is a `cmraudit run` child process into its own fresh folder (both with the same fresh per-user cache, warmed
by a first untimed in-process run, so neither pays for public pretraining the other did not). On a machine with
N cores Ray runs up to N models (and LiRA shadows) at once; on 2 cores expect no speed-up — the point there is that
the numbers are identical. Every attack and metric value of every model is compared; any difference is listed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENERATORS = "gan,vae,diffusion,flow"
EPSILONS = "inf,8"


def run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import sys; from cmraudit.cli import main; main(sys.argv[1:])",
                           "run", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: a model failed, which the comparison shows
        sys.exit(f"cmraudit run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def values(out: Path) -> dict[str, object]:
    doc = json.loads((out / "results.json").read_text())
    return {f"{m}/{kind}/{name}": {k: v for k, v in entry.items() if k != "seconds"}
            for m, record in doc["models"].items() for kind in ("attacks", "metrics")
            for name, entry in record[kind].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--data", default="phantom:12")
    parser.add_argument("--address", default="", help="Ray cluster to join (default: start a local instance)")
    parser.add_argument("--lira", type=int, default=0, help="also run LiRA with this many shadows per model")
    parser.add_argument("extra", nargs="*", help="more `cmraudit run` arguments (after --)")
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cmraudit-bench-ray-"))
    threads = os.environ.get("CMRAUDIT_THREADS", "1")
    env = {**os.environ, "CMRAUDIT_CACHE_DIR": str(tmp / "cache"), "CMRAUDIT_THREADS": threads,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
    common = ["--profile", opts.profile, "--data", opts.data, "--canaries", "0", "-g", GENERATORS,
              "--dp-epsilon", EPSILONS, *opts.extra]
    if opts.lira:
        common += ["--attack", "mia,lira", "--set", f"options.lira.shadows={opts.lira}"]
    ray_args = ["--executor", "ray", *(["--address", opts.address] if opts.address else [])]

    print(f"warming the per-user cache in {tmp / 'cache'} ...", flush=True)
    run(["--out", str(tmp / "warm"), *common], env)
    local = run(["--out", str(tmp / "local"), *common], env)
    distributed = run(["--out", str(tmp / "ray"), *common, *ray_args], env)

    a, b = values(tmp / "local"), values(tmp / "ray")
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    print(f"\n{'sweep':<44}{'in-process':>12}{'ray':>12}")
    label = f"{opts.profile}, {GENERATORS} x eps {EPSILONS}" + (f", lira {opts.lira}" if opts.lira else "")
    print(f"{label:<44}{local:>11.1f}s{distributed:>11.1f}s")
    print(f"cores: {os.cpu_count()}, ray address: {opts.address or 'local instance'}, speed-up {local / distributed:.2f}x")
    print(f"attack/metric entries compared: {len(a)}, differing: {len(differ)}")
    for key in differ[:20]:
        print(f"  differs: {key}")
    print(f"run folders: {tmp}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
