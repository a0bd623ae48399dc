"""Wall time and peak memory of the default audit (`cmraudit run` with no options: phantom, quick profile, 64x64,
gan + vae + diffusion + flow + diffusion at epsilon 8, every attack and metric).

    python benchmarks/bench_default_run.py                 # the default run, in a fresh temporary folder
    python benchmarks/bench_default_run.py --threads 2 -- --profile smoke   # extra args go to `cmraudit run`

The run happens in a child process, so the peak resident memory reported is that of the run alone
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Targets on 2 CPU cores: <= 5 minutes wall, <= 4 GB peak.
Also prints where the time went (training per model, then each attack and metric), from results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 300
TARGET_GB = 4.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2: two CPU cores)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a fresh temporary one)")
    parser.add_argument("run_args", nargs="*", help="extra arguments for `cmraudit run` (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cmraudit-bench-") as tmp:
        out = args.out or Path(tmp) / "run"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "CMRAUDIT_THREADS": str(args.threads)}
        cmd = [sys.executable, "-m", "cmraudit", "run", "--out", str(out), *args.run_args]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_gb = usage.ru_maxrss / 1024 ** 2  # ru_maxrss is KiB on Linux
        cpu = usage.ru_utime + usage.ru_stime
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
        print(f"command: {' '.join(cmd[1:])}  (exit {done.returncode}, {args.threads} threads)")
        print(f"wall time: {wall:.1f} s  (target <= {TARGET_SECONDS} s: {'ok' if wall <= TARGET_SECONDS else 'over'})")
        print(f"peak memory: {peak_gb:.2f} GB  (target <= {TARGET_GB} GB: {'ok' if peak_gb <= TARGET_GB else 'over'})")
        # CPU time / wall time well below the thread count means the machine was shared: the wall time is inflated
        print(f"cpu time: {cpu:.1f} s  ({cpu / max(wall, 1e-9):.2f} cores busy on average, {os.cpu_count()} present, "
              f"load average {os.getloadavg()[0]:.1f})")
        results = out / "results.json"
        if results.exists():
            breakdown(json.loads(results.read_text()))
    return done.returncode


def breakdown(doc: dict) -> None:
    """Seconds per model for training and sampling, then per attack and metric summed over the models."""
    plugins: dict[str, float] = {}
    for name, model in doc.get("models", {}).items():
        train = (model.get("training") or {}).get("seconds") or 0.0
        sample = (model.get("samples") or {}).get("seconds") or 0.0
        print(f"  {name:<16} train {train:7.1f} s   sample {sample:6.1f} s   status {model.get('status')}")
        for kind in ("attacks", "metrics"):
            for plugin, entry in (model.get(kind) or {}).items():
                plugins[plugin] = plugins.get(plugin, 0.0) + (entry.get("seconds") or 0.0)
    for plugin, seconds in sorted(plugins.items(), key=lambda kv: -kv[1]):
        print(f"  {plugin:<16} {seconds:7.1f} s over all models")


if __name__ == "__main__":
    sys.exit(main())
