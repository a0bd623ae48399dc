"""Wall time and peak memory of the default audit (`cmraudit run` with no options: phantom, quick profile, 64x64,
gan + vae + diffusion + flow + diffusion at epsilon 8, every attack and metric), for one checkout or several side
by side.

    python benchmarks/bench_default_run.py                        # this working tree, in a fresh temporary folder
    python benchmarks/bench_default_run.py --checkout 79babe9 --checkout .   # an older commit against this tree
    python benchmarks/bench_default_run.py --repeat 2             # second run with the per-user cache warm
    python benchmarks/bench_default_run.py --threads 2 -- --profile smoke    # extra args go to `cmraudit run`

Each checkout (a git revision of this repository, or a directory) is copied into a temporary folder laid out as
the installed package (``cmraudit``, with ``plugins``, ``attacks`` and ``reports`` inside it) and run from there
with ``PYTHONPATH``, so two versions run with the same Python, packages and machine. Runs alternate between the
checkouts (A B A B with ``--repeat 2``) so that a background load hits all of them; compare the ratios, not the
seconds, across machines. Every checkout gets its own empty per-user cache (``CMRAUDIT_CACHE_DIR``) at its first
run: the first run is cold, later repeats are warm.

Each run is a child process; its peak resident memory is its own (``os.wait4``'s rusage). Targets on 2 CPU cores:
<= 5 minutes wall, <= 4 GB peak. Also prints where the time went (training per model, then each attack and metric),
from results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TARGET_SECONDS = 300
TARGET_GB = 4.0
REPO = Path(__file__).resolve().parents[1]
#: source folders of the repository and where the installed package has them (pyproject's package-dir)
LAYOUT = {"cmraudit": "cmraudit", "plugins": "cmraudit/plugins", "attacks": "cmraudit/attacks",
          "reports": "cmraudit/reports"}


@dataclass
class Timing:
    checkout: str
    repeat: int
    wall: float
    peak_gb: float
    cpu: float
    exit_code: int
    results: dict | None


def materialise(checkout: str, into: Path) -> Path:
    """The checkout's sources under ``into``/src in the installed layout; returns the folder for PYTHONPATH."""
    src = into / "src"
    tree = into / "tree"
    path = Path(checkout)
    if path.is_dir():
        shutil.copytree(path, tree, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build"))
    else:  # a git revision of this repository
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", checkout],
                                 check=True, capture_output=True).stdout
        tree.mkdir(parents=True)
        tar_path = into / "tree.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tree, filter="data")
    for source, target in LAYOUT.items():
        if (tree / source).is_dir():
            shutil.copytree(tree / source, src / target, dirs_exist_ok=True)
    return src


def run_once(label: str, repeat: int, src: Path, workdir: Path, cache: Path, threads: int,
             run_args: list[str]) -> Timing:
    out = workdir / f"run-{repeat}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CMRAUDIT_THREADS": str(threads), "PYTHONPATH": str(src), "CMRAUDIT_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "cmraudit", "run", "--out", str(out), *run_args]
    start = time.perf_counter()
    with open(workdir / f"stderr-{repeat}.log", "w") as err:
        child = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print((workdir / f"stderr-{repeat}.log").read_text()[-3000:], file=sys.stderr)
    results = out / "results.json"
    return Timing(label, repeat, wall, usage.ru_maxrss / 1024 ** 2, usage.ru_utime + usage.ru_stime, code,
                  json.loads(results.read_text()) if results.exists() else None)


def breakdown(doc: dict) -> None:
    """Seconds per model for training and sampling, then per attack and metric summed over the models."""
    plugins: dict[str, float] = {}
    for name, model in doc.get("models", {}).items():
        train = (model.get("training") or {}).get("seconds") or 0.0
        pretraining = (model.get("training") or {}).get("public_pretraining") or {}
        sample = (model.get("samples") or {}).get("seconds") or 0.0
        if pretraining.get("from_user_cache"):
            extra = " (+ public pretraining from the user cache)"
        else:
            extra = f" (+ public pretraining {pretraining['seconds']:.1f} s)" if pretraining.get("seconds") else ""
        print(f"  {name:<16} train {train:7.1f} s{extra}   sample {sample:6.1f} s   status {model.get('status')}")
        for kind in ("attacks", "metrics"):
            for plugin, entry in (model.get(kind) or {}).items():
                plugins[plugin] = plugins.get(plugin, 0.0) + (entry.get("seconds") or 0.0)
    for name, mask in (doc.get("mask_models") or {}).items():
        print(f"  {name:<16} train {((mask.get('training') or {}).get('seconds') or 0.0):7.1f} s   (mask model)")
    for plugin, seconds in sorted(plugins.items(), key=lambda kv: -kv[1]):
        print(f"  {plugin:<16} {seconds:7.1f} s over all models")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=None,
                        help="a git revision of this repository or a directory (repeatable; default: this tree)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per checkout (later ones with a warm cache)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2: two CPU cores)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders under this directory")
    parser.add_argument("run_args", nargs="*", help="extra arguments for `cmraudit run` (after --)")
    args = parser.parse_args()
    checkouts = args.checkout or [str(REPO)]

    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="cmraudit-bench-") as tmp:
        root = args.keep or Path(tmp)
        prepared = []
        for i, checkout in enumerate(checkouts):
            workdir = root / f"checkout-{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            prepared.append((checkout, materialise(checkout, workdir), workdir, workdir / "cache"))
        for repeat in range(1, args.repeat + 1):
            for checkout, src, workdir, cache in prepared:
                t = run_once(checkout, repeat, src, workdir, cache, args.threads, args.run_args)
                timings.append(t)
                state = "cold cache" if repeat == 1 else "warm cache"
                print(f"\n{checkout} (run {repeat}, {state}): exit {t.exit_code}, wall {t.wall:.1f} s "
                      f"(target <= {TARGET_SECONDS} s), peak {t.peak_gb:.2f} GB (target <= {TARGET_GB} GB), "
                      f"cpu {t.cpu:.1f} s = {t.cpu / max(t.wall, 1e-9):.2f} cores busy, load average "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
                if t.results:
                    breakdown(t.results)
    first = timings[0]
    print(f"\nside by side ({args.threads} threads; ratio = wall / wall of {first.checkout} run 1):")
    print(f"  {'checkout':<30} {'run':>3} {'wall s':>8} {'ratio':>6} {'peak GB':>8} {'cpu s':>8} {'exit':>4}")
    for t in timings:
        print(f"  {t.checkout[-30:]:<30} {t.repeat:>3} {t.wall:8.1f} {t.wall / first.wall:6.2f} {t.peak_gb:8.2f} "
              f"{t.cpu:8.1f} {t.exit_code:>4}")
    return max(t.exit_code for t in timings)


if __name__ == "__main__":
    sys.exit(main())
