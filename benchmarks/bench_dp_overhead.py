"""DP-SGD overhead, training throughput and sampling throughput of every registered generator.

For each generator (and the tiny reference denoiser of the tests) on one fixed batch:

* step time without DP and with DP (Opacus per-example gradients, clipping, noise) for each grad-sample mode,
  printed as the ratio DP / non-DP (target <= 1.5x);
* training throughput in images/s on the device in use;
* sampling throughput: ``--n-sample`` images (default 1000) at the profile's image size (quick: 64x64) through
  ``Generator.sample`` (target <= 60 s for 1000 images on CPU).

    OMP_NUM_THREADS=2 python benchmarks/bench_dp_overhead.py --profile quick
    python benchmarks/bench_dp_overhead.py --generators diffusion --modes hooks,functorch --n-sample 0

Plain and DP steps alternate on two copies of the generator; the ratio is of the fastest of ``--steps`` timed steps
(after ``--warmup`` untimed ones), with the ratio of medians beside it. On the CPU steps are timed in process CPU
time (``time.process_time``), which other processes on a shared machine barely disturb; with more than one torch
thread it sums the threads' time, so compare ratios measured with the same ``--threads``. On a GPU: wall time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny reference denoiser

from cmraudit.api import Batch, Conditioning  # noqa: E402
from cmraudit.training.device import amp_dtype, select_device  # noqa: E402
from cmraudit.training.step_runner import EMA, LoopRunner  # noqa: E402

SIZES = {"smoke": 32, "quick": 64, "standard": 128}


def load_table(size: int, patients: int):
    try:
        from cmraudit.data.sources import open_source

        return open_source(f"phantom:{patients}").load(size), "phantom"
    except Exception as exc:  # the phantom is optional for this benchmark
        from tiny_generator import tiny_table

        return tiny_table(n_patients=patients, slices=6, size=size), f"blobs ({type(exc).__name__})"


def build_generator(cls, profile: str, size: int):
    torch.manual_seed(0)
    if cls.name == "tiny-denoiser":
        from tiny_generator import TinyConfig

        return cls(TinyConfig(channels=32), Conditioning(image_size=size))
    return cls(cls.make_config(profile), Conditioning(image_size=size))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """CPU time of this process on the CPU (robust to other processes on a shared machine), wall time on a GPU."""
    return time.perf_counter() if device.type != "cpu" else time.process_time()


def timed_step(generator, runner: LoopRunner, batch: Batch) -> float:
    sync(runner.device)
    start = clock(runner.device)
    runner.begin_step(len(batch))
    generator.training_step(batch, runner)
    sync(runner.device)
    return clock(runner.device) - start


def make_runner(generator, device, dtype) -> LoopRunner:
    return LoopRunner(generator, generator.make_optimizers(), device, dtype, 1.0,
                      EMA({n: generator.nets[n] for n in generator.ema_networks()}, 0.999))


def bench_training(cls, args, table, device) -> list[dict]:
    """Plain and DP copies of the generator take turns on the same batch, so load from other processes hits both
    alike; the fastest of ``--steps`` steps estimates each one's cost."""
    batch = Batch.from_table(table, list(range(args.batch))).to(device)
    dtype = amp_dtype(device, enabled=not args.no_amp, private=True)  # same precision for both, for a fair ratio
    plain_gen = build_generator(cls, args.profile, table.image_size).to(device).train()
    plain_runner = make_runner(plain_gen, device, dtype)
    rows = []
    for mode in args.modes:
        dp_gen = build_generator(cls, args.profile, table.image_size).to(device).train()
        dp_runner = make_runner(dp_gen, device, dtype)
        plain, private = [], []
        try:
            dp_runner.make_private(dp_gen.private_networks(), noise_multiplier=1.0, max_grad_norm=1.0,
                                   expected_batch=float(args.batch), grad_sample_mode=mode)
            for i in range(args.warmup + args.steps):
                p, d = timed_step(plain_gen, plain_runner, batch), timed_step(dp_gen, dp_runner, batch)
                if i >= args.warmup:
                    plain.append(p)
                    private.append(d)
        except Exception as exc:  # a mode Opacus cannot apply to this network
            rows.append({"generator": cls.name, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:100]})
            continue
        finally:
            dp_runner.release()
        rows.append({"generator": cls.name, "mode": mode, "plain_ms": min(plain) * 1e3, "dp_ms": min(private) * 1e3,
                     "ratio": min(private) / min(plain),
                     "median_ratio": statistics.median(private) / statistics.median(plain),
                     "plain_img_s": args.batch / min(plain), "dp_img_s": args.batch / min(private)})
    return rows


@torch.no_grad()
def bench_sampling(cls, args, table, device) -> dict:
    generator = build_generator(cls, args.profile, table.image_size).to(device).eval()
    n, chunk = args.n_sample, args.sample_batch
    rows = torch.arange(n) % len(table)
    masks, vendor, pathology = table.masks[rows], table.vendor_indices()[rows], table.pathology_indices()[rows]
    rng = torch.Generator().manual_seed(0)
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for i in range(0, n, chunk):
        images = generator.sample(masks[i:i + chunk].to(device), vendor[i:i + chunk].to(device),
                                  pathology[i:i + chunk].to(device), generator=rng)
        assert images.shape == (min(chunk, n - i), 1, table.image_size, table.image_size)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return {"generator": cls.name, "n": n, "seconds": seconds, "cpu_seconds": cpu_seconds, "img_s": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=sorted(SIZES))
    parser.add_argument("--generators", default="", help="comma-separated names (default: every registered one)")
    parser.add_argument("--modes", default="fast,hooks,functorch", help="Opacus grad-sample modes to compare")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--n-sample", type=int, default=1000)
    parser.add_argument("--sample-batch", type=int, default=250)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if args.threads:
        torch.set_num_threads(args.threads)

    from cmraudit.registry import registered
    from tiny_generator import TinyDenoiser

    generators = {**registered("generators"), "tiny-denoiser": TinyDenoiser}
    if args.generators:
        generators = {n: generators[n] for n in args.generators.split(",")}
    device = select_device(args.device)
    table, source = load_table(SIZES[args.profile], patients=max(8, args.batch))
    print(f"device {device} ({'process CPU time' if device.type == 'cpu' else 'wall time'}), "
          f"torch threads {torch.get_num_threads()}, profile {args.profile}, "
          f"{table.image_size}x{table.image_size}, batch {args.batch}, data {source}")

    print(f"\n{'generator':<14} {'mode':<10} {'plain ms':>9} {'DP ms':>9} {'DP/plain':>9} {'(median)':>9} "
          f"{'plain img/s':>12} {'DP img/s':>9}")
    for name, cls in generators.items():
        for row in bench_training(cls, args, table, device):
            if "error" in row:
                print(f"{name:<14} {row['mode']:<10} error: {row['error']}")
                continue
            flag = "" if row["ratio"] <= 1.5 else "  (> 1.5x)"
            print(f"{name:<14} {row['mode']:<10} {row['plain_ms']:9.1f} {row['dp_ms']:9.1f} {row['ratio']:8.2f}x {row['median_ratio']:8.2f}x "
                  f"{row['plain_img_s']:12.1f} {row['dp_img_s']:9.1f}{flag}")

    if args.n_sample:
        print(f"\n{'generator':<14} {'images':>7} {'seconds':>8} {'CPU s':>8} {'img/s':>8}")
        for name, cls in generators.items():
            row = bench_sampling(cls, args, table, device)
            flag = "" if row["seconds"] * 1000 / row["n"] <= 60 else "  (> 60 s per 1000)"
            print(f"{name:<14} {row['n']:7d} {row['seconds']:8.1f} {row['cpu_seconds']:8.1f} {row['img_s']:8.1f}{flag}")


if __name__ == "__main__":
    main()
