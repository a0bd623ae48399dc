"""Sample quality of the built-in generators: fidelity, utility and training time side by side, plus a gallery.

    python benchmarks/bench_generator_quality.py --out /tmp/q                      # gan,vae,diffusion,flow
    python benchmarks/bench_generator_quality.py --out /tmp/q -g gan -- --set generator.gan.lr_generator=1e-4
    python benchmarks/bench_generator_quality.py --out /tmp/q --summarize --also before=/tmp/before/run

Trains the chosen families on the default data (phantom, quick profile, seed 0) through the normal `cmraudit run`
with no attacks, no canaries and no DP variant, measuring only the ``fidelity`` and ``utility`` metrics, then prints
per model: training seconds, Fréchet distance on the in-domain encoder features (Heusel et al. 2017), PRDC
precision / recall / coverage (Naeem et al. 2020) and TSTR Dice (Esteban et al. 2017: a segmenter trained on the
synthetic set, scored on real test patients), with the real-vs-real references. It writes ``gallery.png`` in the
output folder: one row of real slices, then one row per model, each column conditioned on the same mask, two slices
per vendor, so models (and, with ``--also``, earlier runs) can be compared by eye.

Training seconds depend on the machine's load: compare them only between runs made in the same sitting, with the
same ``--threads``. ``--time-only`` trains each family on the run's member slices in a child process and prints its
wall and CPU seconds (CPU time is far less sensitive to other people's jobs on a shared machine); run it once per
source tree (``PYTHONPATH=/old/tree``) to compare recipes' costs. Extra arguments after ``--`` go to `cmraudit run`
(``--set`` recipe overrides, ``--profile``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FAMILIES = "gan,vae,diffusion,flow"
COLUMNS = ("train_s", "fd", "coverage", "precision", "recall", "tstr_dice")
PER_VENDOR = 2
TILE_SCALE = 3


def run_audit(out: Path, generators: str, threads: int, extra: list[str]) -> int:
    """`cmraudit run` in a child process (the thread settings must be in place before torch is imported)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CMRAUDIT_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "cmraudit", "run", "--out", str(out), "--generator", generators,
           "--attack", "none", "--metric", "fidelity,utility", "--canaries", "0", "--profile", "quick",
           "--seed", "0", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    print(f"command: {' '.join(cmd[1:])}  (exit {done.returncode}, {time.perf_counter() - start:.0f} s wall, "
          f"{threads} threads, load average {os.getloadavg()[0]:.1f})")
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    return done.returncode


TIMING_CHILD = """
import json, resource, sys, tempfile, time
from cmraudit.api import Conditioning
from cmraudit.data.sources import open_source
from cmraudit.data.splits import make_split
from cmraudit.registry import registered
from cmraudit.training.loop import TrainConfig, train

name, data, measured = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = open_source(data).load(64)
members = table.select_patients(make_split(table, seed=0).members)
cls = registered("generators")[name]
generator = cls(cls.make_config("quick"), Conditioning(64))
steps = TrainConfig.for_profile("quick", cls).steps
overrides = {"device": "cpu", **({"steps": measured, "checkpoint_every": measured} if measured else {})}
with tempfile.TemporaryDirectory() as tmp:
    cpu, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = train(generator, members, TrainConfig.for_profile("quick", cls, overrides), tmp)
    after = resource.getrusage(resource.RUSAGE_SELF)
scale = steps / result.steps  # a step's cost does not depend on its index: extrapolate to the profile's steps
print(json.dumps({"steps": steps, "measured_steps": result.steps, "wall_s": (time.perf_counter() - wall) * scale,
                  "cpu_s": (after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime) * scale}))
"""


def time_training(generators: str, threads: int, data: str, measured: int) -> None:
    """Wall and CPU seconds of each family's quick-profile training, one child process per family; with
    ``measured`` > 0 only that many steps run and the seconds are scaled to the profile's step count."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CMRAUDIT_THREADS": str(threads)}
    print(f"  {'model':<12}{'steps':>7}{'wall_s':>9}{'cpu_s':>9}   ({threads} threads)")
    for name in generators.split(","):
        done = subprocess.run([sys.executable, "-c", TIMING_CHILD, name, data, str(measured)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  {name:<12} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        t = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {name:<12}{t['steps']:>7}{t['wall_s']:>9.1f}{t['cpu_s']:>9.1f}", flush=True)


def _value(model: dict, metric: str, name: str) -> dict:
    return ((model.get("metrics") or {}).get(metric) or {}).get("values", {}).get(name) or {}


def summary(run: Path) -> dict[str, dict[str, float | None]]:
    """{model: {column: number}} from a run folder's results.json, plus a ``real`` row of real-vs-real references."""
    doc = json.loads((run / "results.json").read_text())
    rows: dict[str, dict[str, float | None]] = {}
    reference: dict[str, float | None] = {}
    for name, model in doc.get("models", {}).items():
        row: dict[str, float | None] = {"train_s": (model.get("training") or {}).get("seconds")}
        for column in COLUMNS[1:]:
            entry = _value(model, "utility" if column == "tstr_dice" else "fidelity", column)
            row[column] = entry.get("value")
            details = entry.get("details") or {}
            reference.setdefault(column, details.get("trtr") if column == "tstr_dice" else details.get("real_vs_real"))
        rows[name] = row
    rows["real (reference)"] = {"train_s": None, **reference}
    return rows


def print_table(label: str, rows: dict[str, dict[str, float | None]]) -> None:
    print(f"\n{label}")
    print(f"  {'model':<18}" + "".join(f"{c:>11}" for c in COLUMNS))
    for name, row in rows.items():
        cells = "".join(f"{'-':>11}" if row.get(c) is None else f"{row[c]:>11.3f}" for c in COLUMNS)
        print(f"  {name:<18}{cells}")


def _pick_columns(samples: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of PER_VENDOR conditioning slices per vendor, mid-ventricular first (the most anatomy per tile)."""
    picks = []
    for vendor in sorted(set(samples["vendors"].tolist())):
        idx = np.flatnonzero(samples["vendors"] == vendor)
        # slices whose mask has the most foreground: mid-ventricular rather than apical or basal
        area = (samples["masks"][idx] > 0).reshape(len(idx), -1).sum(1)
        order = idx[np.argsort(-area, kind="stable")]
        seen: set[str] = set()
        for i in order:  # different patients where possible
            if samples["patients"][i] not in seen:
                picks.append(i)
                seen.add(samples["patients"][i])
            if len(seen) == PER_VENDOR:
                break
    return np.asarray(picks)


def _real_images(run: Path, samples: dict[str, np.ndarray], picks: np.ndarray) -> np.ndarray:
    from cmraudit.run.folder import RunFolder

    table, _ = RunFolder(run).real_data()
    key = {(p, ph, int(s)): i for i, (p, ph, s) in enumerate(zip(table.patients, table.phases, table.slice_index))}
    rows = [key[(samples["patients"][i], samples["phases"][i], int(samples["slice_index"][i]))] for i in picks]
    return table.images[rows].numpy()


def gallery(run: Path, path: Path, also: list[tuple[str, Path]]) -> None:
    """Real row, then each model of ``run`` and of every ``also`` run, on the same conditioning masks."""
    from PIL import Image, ImageDraw

    runs = [("", run), *[(f"{label}:", other) for label, other in also]]
    first = None
    rows: list[tuple[str, np.ndarray]] = []
    for prefix, folder in runs:
        for model_dir in sorted((folder / "models").iterdir()):
            file = model_dir / "samples.npz"
            if not file.is_file():
                continue
            with np.load(file) as npz:
                samples = {k: npz[k] for k in npz.files}
            if first is None:
                first, picks = samples, _pick_columns(samples)
                rows.append(("real", _real_images(folder, samples, picks)))
            keys = list(zip(samples["patients"], samples["phases"], samples["slice_index"].tolist()))
            where = {k: i for i, k in enumerate(keys)}
            wanted = [where[(first["patients"][i], first["phases"][i], int(first["slice_index"][i]))] for i in picks]
            rows.append((prefix + model_dir.name, samples["images"][wanted]))
    if first is None:
        raise SystemExit(f"{run}: no samples.npz under models/")
    size = first["images"].shape[-1] * TILE_SCALE
    label_w, header_h = 150, 18
    canvas = Image.new("L", (label_w + size * len(picks), header_h + size * len(rows)), color=255)
    draw = ImageDraw.Draw(canvas)
    for c, i in enumerate(picks):
        draw.text((label_w + c * size + 4, 3), f"vendor {first['vendors'][i]}", fill=0)
    for r, (name, images) in enumerate(rows):
        draw.text((4, header_h + r * size + size // 2), name, fill=0)
        for c, image in enumerate(images):
            tile = ((np.clip(image[0], -1, 1) + 1) * 127.5).round().astype(np.uint8)
            tile = Image.fromarray(tile).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (label_w + c * size, header_h + r * size))
    canvas.save(path)
    print(f"gallery: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (the run goes to OUT/run)")
    parser.add_argument("-g", "--generators", default=FAMILIES, help=f"families to train (default {FAMILIES})")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (default 1)")
    parser.add_argument("--summarize", action="store_true", help="only read OUT/run: table and gallery")
    parser.add_argument("--time-only", action="store_true", help="only time each family's training (wall and CPU)")
    parser.add_argument("--data", default="phantom", help="data spec for --time-only (default: phantom)")
    parser.add_argument("--time-steps", type=int, default=0,
                        help="--time-only: train this many steps and scale to the profile's count (0: all)")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=RUN",
                        help="add another run folder's models to the table and gallery (e.g. before=/tmp/b/run)")
    parser.add_argument("run_args", nargs="*", help="extra arguments for `cmraudit run` (after --)")
    args = parser.parse_args()

    if args.time_only:
        time_training(args.generators, args.threads, args.data, args.time_steps)
        return 0
    run = args.out / "run"
    if not args.summarize:
        args.out.mkdir(parents=True, exist_ok=True)
        code = run_audit(run, args.generators, args.threads, args.run_args)
        if code != 0:
            return code
    also = [(label, Path(path)) for label, _, path in (a.partition("=") for a in args.also)]
    for label, other in also:
        print_table(f"{label} ({other})", summary(other))
    rows = summary(run)
    print_table(f"this run ({run})", rows)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    gallery(run, args.out / "gallery.png", also)
    return 0


if __name__ == "__main__":
    sys.exit(main())
