"""Wall time and peak memory of the default audit (`cmraudit run` with no options: phantom, quick profile, 64x64,
gan + vae + diffusion + flow + diffusion at epsilon 8, every attack and metric), for one checkout or several side
by side.

    python benchmarks/bench_default_run.py                        # this working tree, in a fresh temporary folder
    python benchmarks/bench_default_run.py --checkout 79babe9 --checkout .   # an older commit against this tree
    python benchmarks/bench_default_run.py --repeat 2             # second run with the per-user cache warm
    python benchmarks/bench_default_run.py --threads 2 -- --profile smoke    # extra args go to `cmraudit run`
    python benchmarks/bench_default_run.py --concurrent --checkout 79babe9 --checkout .   # same minutes, one core each

Each checkout (a git revision of this repository, or a directory) is copied into a temporary folder laid out as
the installed package (``cmraudit``, with ``plugins``, ``attacks`` and ``reports`` inside it) and run from there
with ``PYTHONPATH``, so two versions run with the same Python, packages and machine. Runs alternate between the
checkouts (A B A B with ``--repeat 2``) so that a background load hits all of them; compare the ratios, not the
seconds, across machines. Every checkout gets its own empty per-user cache (``CMRAUDIT_CACHE_DIR``) at its first
run: the first run is cold, later repeats are warm.

The speed of a shared machine drifts, by a quarter or more within an hour on the 2-core boxes this was written
on, so a run's wall time alone compares badly with one taken ten minutes earlier. Before every run and after the
last, a fixed probe (``PROBE``: convolution, GroupNorm and SiLU forward and backward in bf16 or fp32, the default
run's kind of work, ~8 s with its start-up) times the machine; each run's wall time is also given divided by the
mean of the probes just before and after it ("probe units"), and each later checkout's runs are compared with the
first checkout's run of the same repeat, raw and in probe units. A run whose probes differ by more than 15 % ran on
a machine that changed speed under it: its row is marked.

``--concurrent`` takes the drift out instead of measuring it: the two checkouts run at the same time, each on a
core of its own with one thread. The first runs ``--repeat`` times; the second runs again and again until the
first is done (its first run cold, later ones warm), so both share whatever the machine does in those minutes.
The second checkout's runs that started and ended within the first's are compared with it; a run of one thread
is not the default run of two, so this gives the ratio, and the sequential mode the seconds.

A ``--keep`` folder can be reused: its per-user caches stay, so a checkout whose cache is already filled starts
warm (the cache state printed is what the folder held, not the repeat number).

Each run is a child process; its peak resident memory is its own (``os.wait4``'s rusage). Targets on 2 CPU cores:
<= 5 minutes wall, <= 4 GB peak. Also prints where the time went (training per model, then each attack and metric),
from results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
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
    warm: bool = False
    #: probe seconds just before and just after the run (``PROBE``)
    probes: tuple[float, float] = (float("nan"), float("nan"))
    #: start and end, seconds since the sitting began (``--concurrent`` matches runs by them)
    span: tuple[float, float] = (0.0, 0.0)

    @property
    def probe(self) -> float:
        return sum(self.probes) / 2

    @property
    def drift(self) -> float:
        """Relative change of the machine's speed across the run (after / before - 1)."""
        return self.probes[1] / self.probes[0] - 1


#: the machine-speed probe, run in a child process with the benchmark's thread count: a small conv net's training
#: steps on 64x64 maps (bf16 autocast where the CPU has bf16 matrix units, as cmraudit uses it), the median of three
#: timed rounds after a warm-up (back to back, single rounds varied by +-12 % on a shared 2-core box)
PROBE = """
import sys, time, torch
torch.manual_seed(0)
bf16 = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
layers = []
for _ in range(4):
    layers += [torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.GroupNorm(8, 16), torch.nn.SiLU()]
net = torch.nn.Sequential(*layers)
opt = torch.optim.AdamW(net.parameters(), 1e-3)
x = torch.randn(16, 16, 64, 64)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = net(x).float().square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(5):
    step()
rounds = []
for _ in range(3):
    start = time.perf_counter()
    for _ in range(int(sys.argv[1])):
        step()
    rounds.append(time.perf_counter() - start)
print(sorted(rounds)[1])
"""
PROBE_STEPS = 25


def probe(threads: int) -> float:
    """Seconds of the fixed probe workload on this machine now."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", f"import torch; torch.set_num_threads({threads})\n" + PROBE,
                          str(PROBE_STEPS)], env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def materialise(checkout: str, into: Path) -> Path:
    """The checkout's sources under ``into``/src in the installed layout; returns the folder for PYTHONPATH."""
    src = into / "src"
    tree = into / "tree"
    for stale in (src, tree):  # a reused --keep folder: fresh sources, the cache stays
        shutil.rmtree(stale, ignore_errors=True)
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
             run_args: list[str], core: int | None = None, epoch: float = 0.0,
             stopper: "Stopper | None" = None) -> Timing:
    out = workdir / f"run-{repeat}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CMRAUDIT_THREADS": str(threads), "PYTHONPATH": str(src), "CMRAUDIT_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "cmraudit", "run", "--out", str(out), *run_args]
    shutil.rmtree(out, ignore_errors=True)
    warm = cache.is_dir() and any(cache.iterdir())
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    start = time.perf_counter()
    with open(workdir / f"stderr-{repeat}.log", "w") as err:
        child = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=pin)
        if stopper is not None:  # --concurrent stops the second checkout's last run when the first is done
            stopper.started(child)
        _, status, usage = os.wait4(child.pid, 0)
        if stopper is not None:
            stopper.finished()
    end = time.perf_counter()
    wall = end - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, -15):  # -15: stopped by --concurrent, not a failure
        print((workdir / f"stderr-{repeat}.log").read_text()[-3000:], file=sys.stderr)
    results = out / "results.json"
    return Timing(label, repeat, wall, usage.ru_maxrss / 1024 ** 2, usage.ru_utime + usage.ru_stime, code,
                  json.loads(results.read_text()) if results.exists() else None, warm,
                  span=(start - epoch, end - epoch))


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


def report_run(t: Timing) -> None:
    state = "warm cache" if t.warm else "cold cache"
    print(f"\n{t.checkout} (run {t.repeat}, {state}): exit {t.exit_code}, wall {t.wall:.1f} s "
          f"(target <= {TARGET_SECONDS} s), peak {t.peak_gb:.2f} GB (target <= {TARGET_GB} GB), "
          f"cpu {t.cpu:.1f} s = {t.cpu / max(t.wall, 1e-9):.2f} cores busy, load average "
          f"{os.getloadavg()[0]:.1f}" + ("" if math.isnan(t.probes[0]) else  # no probe with --concurrent
                                        f", probe {t.probes[0]:.2f} s before, {t.probes[1]:.2f} s after"), flush=True)
    if t.results:
        breakdown(t.results)


class Stopper:
    """Stops the second checkout's run in progress when the first checkout is done (``--concurrent``). The child is
    signalled only between its start and its reaping (``os.wait4``), under one lock, so no stale pid is ever hit."""

    def __init__(self) -> None:
        self.lock, self.done, self.child = threading.Lock(), False, None

    def started(self, child: subprocess.Popen) -> None:
        with self.lock:
            self.child = child
            if self.done:
                child.terminate()

    def finished(self) -> None:
        with self.lock:
            self.child = None

    def stop(self) -> None:
        with self.lock:
            self.done = True
            if self.child is not None:
                self.child.terminate()


def concurrent(prepared: list[tuple[str, Path, Path, Path]], repeat: int, run_args: list[str]) -> int:
    """The first checkout ``repeat`` times on one core while the second runs back to back on another, one thread
    each; the second's runs inside the first's window are its comparison (see the module docstring)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(prepared) != 2 or len(cores) < 2:
        sys.exit("--concurrent needs exactly two --checkout and two CPU cores")
    (base_label, base_src, base_dir, base_cache), (label, src, workdir, cache) = prepared
    epoch = time.perf_counter()
    base_runs: list[Timing] = []
    runs: list[Timing] = []
    stopper = Stopper()

    def baseline() -> None:
        for i in range(1, repeat + 1):
            base_runs.append(run_once(base_label, i, base_src, base_dir, base_cache, 1, run_args, cores[0], epoch))
        stopper.stop()  # the second checkout's run in progress would end outside the window

    def contender() -> None:
        i = 0
        while not stopper.done:
            i += 1
            runs.append(run_once(label, i, src, workdir, cache, 1, run_args, cores[1], epoch, stopper))

    threads = [threading.Thread(target=baseline), threading.Thread(target=contender)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for t in base_runs + runs:
        if t.exit_code != -15:
            report_run(t)

    window = (min(t.span[0] for t in base_runs), max(t.span[1] for t in base_runs))
    base_wall = sum(t.wall for t in base_runs) / len(base_runs)
    print(f"\nconcurrent (1 thread each; {base_label} on core {cores[0]}, {label} on core {cores[1]}; "
          f"ratio = wall / mean wall of {base_label}'s runs, for runs inside their window "
          f"{window[0]:.0f}-{window[1]:.0f} s):")
    print(f"  {'checkout':<24} {'run':>3} {'cache':>5} {'start s':>8} {'end s':>8} {'wall s':>8} {'ratio':>6} "
          f"{'peak GB':>8} {'cpu s':>8} {'exit':>4}")

    def compared(t: Timing) -> bool:
        return t.exit_code == 0 and window[0] <= t.span[0] and t.span[1] <= window[1]

    for t in base_runs + runs:
        note = "" if any(t is b for b in base_runs) or compared(t) else (
            "  (stopped when the first checkout finished)" if t.exit_code == -15 else
            "  (failed: not compared)" if t.exit_code else "  (outside the window: not compared)")
        print(f"  {t.checkout[-24:]:<24} {t.repeat:>3} {'warm' if t.warm else 'cold':>5} {t.span[0]:8.0f} "
              f"{t.span[1]:8.0f} {t.wall:8.1f} {t.wall / base_wall:6.2f} {t.peak_gb:8.2f} {t.cpu:8.1f} "
              f"{t.exit_code:>4}{note}")
    for state, warm in (("cold", False), ("warm", True)):
        walls = [t.wall for t in runs if t.warm == warm and compared(t)]
        if walls:
            print(f"  {label}, {state} cache: mean {sum(walls) / len(walls):.1f} s over {len(walls)} run(s), "
                  f"{sum(walls) / len(walls) / base_wall:.2f}x {base_label}")
    return max(t.exit_code for t in base_runs + runs if t.exit_code != -15)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=None,
                        help="a git revision of this repository or a directory (repeatable; default: this tree)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per checkout (later ones with a warm cache)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2: two CPU cores)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders under this directory")
    parser.add_argument("--concurrent", action="store_true",
                        help="run two checkouts at the same time, one core and one thread each (see above)")
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
        if args.concurrent:
            return concurrent(prepared, args.repeat, args.run_args)
        before = probe(args.threads)
        for repeat in range(1, args.repeat + 1):
            for checkout, src, workdir, cache in prepared:
                t = run_once(checkout, repeat, src, workdir, cache, args.threads, args.run_args)
                after = probe(args.threads)
                t.probes, before = (before, after), after
                timings.append(t)
                report_run(t)
    first = checkouts[0]
    baseline = {t.repeat: t for t in timings if t.checkout == first}
    print(f"\nside by side ({args.threads} threads; ratio = wall / wall of {first}'s run of the same repeat; "
          "probe units = wall / mean of the probes around the run):")
    print(f"  {'checkout':<24} {'run':>3} {'cache':>5} {'wall s':>8} {'ratio':>6} {'probe units':>11} {'ratio':>6} "
          f"{'drift':>6} {'peak GB':>8} {'cpu s':>8} {'exit':>4}")
    for t in timings:
        base = baseline.get(t.repeat, timings[0])
        marked = " *" if abs(t.drift) > 0.15 else ""
        units, base_units = t.wall / t.probe, base.wall / base.probe
        print(f"  {t.checkout[-24:]:<24} {t.repeat:>3} {'warm' if t.warm else 'cold':>5} {t.wall:8.1f} "
              f"{t.wall / base.wall:6.2f} {units:11.1f} {units / base_units:6.2f} "
              f"{t.drift:+6.0%} {t.peak_gb:8.2f} {t.cpu:8.1f} {t.exit_code:>4}{marked}")
    if any(abs(t.drift) > 0.15 for t in timings):
        print("  * the machine's speed changed by more than 15 % during this run: compare with care")
    return max(t.exit_code for t in timings)


if __name__ == "__main__":
    sys.exit(main())
