"""DP-SGD overhead, training throughput and sampling throughput of every registered generator.

For each generator (and the tiny reference denoiser of the tests) on one fixed batch:

* step time without DP and with DP (per-example gradients, clipping, noise) in every grad-sample mode
  (``cmraudit.training.privacy.GRAD_SAMPLE_MODES``: "fast", Opacus "hooks", "functorch"). The headline ratio is
  each DP step against the FASTEST plain step of the same network (target <= 1.5x), of medians over rounds;
  the old ratio (fastest DP step / fastest plain step) is printed beside it for comparison;
* training throughput in images/s on the device in use;
* sampling throughput: ``--n-sample`` images (default 1000) at the profile's image size (quick: 64x64) through
  ``Generator.sample`` (target <= 60 s for 1000 images on CPU).

    OMP_NUM_THREADS=1 python benchmarks/bench_dp_overhead.py --profile quick --threads 1 --n-sample 0
    python benchmarks/bench_dp_overhead.py --generators diffusion --modes fast,hooks --n-sample 0

Every variant (the plain step and one DP step per mode, each on its own copy of the generator) runs once per
round, in an order that rotates from round to round, so load from other processes and cache or allocator state
left by the previous variant hit all variants alike; each variant's cost is the median of ``--rounds`` rounds
(after ``--warmup`` untimed ones). On the CPU steps are timed in process CPU time (``time.process_time``), which
other processes on a shared machine barely disturb; with more than one torch thread it sums the threads' time, so
compare ratios measured with the same ``--threads``. On a GPU: wall time. ``faults`` is the median number of minor
page faults of a DP step (fresh memory the allocator had to map), a cost that process time includes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

try:
    import resource  # page-fault counts; POSIX only
except ImportError:  # pragma: no cover
    resource = None

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


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def timed_step(generator, runner: LoopRunner, batch: Batch) -> tuple[float, int]:
    """(seconds, minor page faults) of one training step."""
    sync(runner.device)
    faults, start = minor_faults(), clock(runner.device)
    runner.begin_step(len(batch))
    generator.training_step(batch, runner)
    sync(runner.device)
    return clock(runner.device) - start, minor_faults() - faults


def make_runner(generator, device, dtype) -> LoopRunner:
    return LoopRunner(generator, generator.make_optimizers(), device, dtype, 1.0,
                      EMA({n: generator.nets[n] for n in generator.ema_networks()}, 0.999))


#: the plain (non-DP) training steps the code offers: one path, fp32 or the device's AMP dtype; more variants
#: (another precision or layout) would go here, and DP is compared with the fastest
PLAIN_VARIANTS = ("plain",)


def bench_training(cls, args, table, device) -> list[dict]:
    """Every variant on its own copy of the generator, one step each per round in rotating order; medians."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="In CPU autocast")  # Opacus' functorch mode on the CPU
        return _bench_training(cls, args, table, device)


def _bench_training(cls, args, table, device) -> list[dict]:
    batch = Batch.from_table(table, list(range(args.batch))).to(device)
    dtype = amp_dtype(device, enabled=not args.no_amp, private=True)  # same precision for all, for a fair ratio
    variants, errors = {}, []
    for name in [*PLAIN_VARIANTS, *args.modes]:
        generator = build_generator(cls, args.profile, table.image_size).to(device).train()
        runner = make_runner(generator, device, dtype)
        if name not in PLAIN_VARIANTS:
            try:
                runner.make_private(generator.private_networks(), noise_multiplier=1.0, max_grad_norm=1.0,
                                    expected_batch=float(args.batch), grad_sample_mode=name)
                timed_step(generator, runner, batch)  # a mode Opacus cannot apply fails here, before the rounds
            except Exception as exc:
                runner.release()
                errors.append({"generator": cls.name, "mode": name, "error": f"{type(exc).__name__}: {exc}"[:100]})
                continue
        variants[name] = (generator, runner)
    times: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[int]] = {name: [] for name in variants}
    order = list(variants)
    for i in range(args.warmup + args.rounds):
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            seconds, step_faults = timed_step(*variants[name], batch)
            if i >= args.warmup:
                times[name].append(seconds)
                faults[name].append(step_faults)
    for name, (_, runner) in variants.items():
        runner.release()
    median = {name: statistics.median(t) for name, t in times.items()}
    fastest_plain = min(PLAIN_VARIANTS, key=lambda n: median[n])
    rows = [{"generator": cls.name, "mode": name, "ms": median[name] * 1e3, "faults": statistics.median(faults[name]),
             "img_s": args.batch / median[name], "plain": name in PLAIN_VARIANTS,
             "ratio": median[name] / median[fastest_plain],
             # the old figure: fastest DP step over the fastest plain step
             "old_ratio": min(times[name]) / min(times[fastest_plain])} for name in variants]
    return rows + errors


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
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (one step of every variant each)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--n-sample", type=int, default=1000)
    parser.add_argument("--sample-batch", type=int, default=250)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if args.threads:
        torch.set_num_threads(args.threads)

    from tiny_generator import TinyDenoiser

    from cmraudit.registry import registered

    generators = {**registered("generators"), "tiny-denoiser": TinyDenoiser}
    if args.generators:
        generators = {n: generators[n] for n in args.generators.split(",")}
    device = select_device(args.device)
    table, source = load_table(SIZES[args.profile], patients=max(8, args.batch))
    print(f"device {device} ({'process CPU time' if device.type == 'cpu' else 'wall time'}), "
          f"torch threads {torch.get_num_threads()}, profile {args.profile}, "
          f"{table.image_size}x{table.image_size}, batch {args.batch}, data {source}")

    print(f"\n{'generator':<14} {'variant':<12} {'ms':>8} {'/ plain':>8} {'old way':>8} {'faults':>7} {'img/s':>7}")
    for name, cls in generators.items():
        for row in bench_training(cls, args, table, device):
            label = row["mode"] if row.get("plain") else f"dp-{row['mode']}"
            if "error" in row:
                print(f"{name:<14} {label:<12} error: {row['error']}")
                continue
            flag = "" if row["plain"] or row["ratio"] <= 1.5 else "  (> 1.5x)"
            print(f"{name:<14} {label:<12} {row['ms']:8.1f} {row['ratio']:7.2f}x {row['old_ratio']:7.2f}x "
                  f"{row['faults']:7.0f} {row['img_s']:7.1f}{flag}")

    if args.n_sample:
        print(f"\n{'generator':<14} {'images':>7} {'seconds':>8} {'CPU s':>8} {'img/s':>8}")
        for name, cls in generators.items():
            row = bench_sampling(cls, args, table, device)
            flag = "" if row["seconds"] * 1000 / row["n"] <= 60 else "  (> 60 s per 1000)"
            print(f"{name:<14} {row['n']:7d} {row['seconds']:8.1f} {row['cpu_seconds']:8.1f} {row['img_s']:8.1f}{flag}")


if __name__ == "__main__":
    main()
