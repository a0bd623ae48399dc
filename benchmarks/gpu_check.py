"""One script for whoever has a GPU: the CUDA tests, then a short standard-profile burst per generator family.

    python benchmarks/gpu_check.py                           # on a CUDA machine (~5 min on one GPU)
    python benchmarks/gpu_check.py --cpu --steps 1 --batch 1 # the same code path on the CPU (a smoke check)

It prints the device, runs the tests marked ``cuda`` (``pytest -q -m cuda``), then for each family (gan, vae,
diffusion, flow, and diffusion-dp: the default run's DP model) trains ``--steps`` steps through
``cmraudit.training.loop.train`` with the standard profile's generator and training config (its batch, micro-batch,
AMP: bf16 where the GPU has it) on 128 px slices, and samples ``--samples`` images with the profile's sampler.
Per family it prints training steps/s and examples/s (timed after the first step, which includes kernel set-up,
and before the final checkpoint), sampling images/s, and the peak of ``torch.cuda.max_memory_allocated`` during
training and during sampling (on the CPU: the process's peak RSS). Compare the training peaks with the estimates
in docs/gpu.md (``benchmarks/bench_standard_memory.py``).

Exit status: 0 when the tests pass and every family trains to finite losses and samples finite images in range,
1 otherwise. The data is the tiny synthetic cardiac-like set of ``cmraudit.testing.tiny`` at the profile's size:
speed and memory do not depend on the pixels, and no download is needed.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

#: family label -> (generator name, DP)
FAMILIES: dict[str, tuple[str, bool]] = {"gan": ("gan", False), "vae": ("vae", False),
                                         "diffusion": ("diffusion", False), "flow": ("flow", False),
                                         "diffusion-dp": ("diffusion", True)}
GIB = 2 ** 30
ROOT = Path(__file__).resolve().parent.parent


def describe_device(device: Any) -> str:
    import torch

    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    if device.type != "cuda":
        return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads; {versions})"
    p = torch.cuda.get_device_properties(device)
    return (f"{p.name}, {p.total_memory / GIB:.1f} GiB, compute capability {p.major}.{p.minor}, "
            f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'} ({versions})")


def run_cuda_tests() -> int:
    """``pytest -q -m cuda`` over the test suite; returns its exit status (5, nothing collected, counts as 0)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(ROOT / "tests")]
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    return 0 if rc == 5 else rc


class Memory:
    """Peak memory of a phase: CUDA max_memory_allocated, or the process's peak RSS on the CPU."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def reset(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / GIB
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")) / GIB
        except (OSError, StopIteration):
            return float("nan")


def burst(family: str, device: Any, steps: int, batch: int | None, samples: int, sample_steps: int | None,
          image_size: int, work: Path) -> dict[str, Any]:
    """Train ``family`` for ``steps`` standard-profile steps, then sample; timings, peaks and checks."""
    import torch

    from cmraudit.api import Conditioning
    from cmraudit.registry import registered
    from cmraudit.testing.tiny import tiny_table
    from cmraudit.training.loop import TrainConfig, train
    from cmraudit.training.privacy import DPConfig

    name, private = FAMILIES[family]
    cls = registered("generators")[name]
    overrides: dict[str, Any] = {"steps": steps, "checkpoint_every": steps, "device": str(device)}
    if batch is not None:
        overrides["batch_size"] = batch
    config = TrainConfig.for_profile("standard", cls, overrides)
    per_pass = config.private_batch() if private else min(config.micro_batch or config.batch_size, config.batch_size)
    global_batch = config.private_batch() if private else config.batch_size
    # enough patients that a DP run's expected batch is a small share of them, as in a real cohort
    table = tiny_table(n_patients=max(8 * global_batch, 32), slices_per_patient=1, image_size=image_size, seed=0)
    few_steps = sample_steps and "sample_steps" in cls.Config.__dataclass_fields__
    gconfig = cls.make_config("standard", {"sample_steps": sample_steps} if few_steps else {})
    torch.manual_seed(0)
    gen = cls(gconfig, Conditioning(image_size))

    memory = Memory(device)
    memory.reset()
    marks: dict[int, float] = {}

    def callback(step: int, total: int, logs: dict[str, float]) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks[step] = time.perf_counter()

    started = time.perf_counter()
    result = train(gen, table, config, work / family, dp=DPConfig(noise_multiplier=1.0) if private else None,
                   callback=callback)
    train_peak = memory.peak()
    if steps >= 3:  # steps 2..steps-1: no first-step set-up, no final checkpoint
        steps_per_s = (steps - 2) / (marks[steps - 1] - marks[1])
    else:
        steps_per_s = steps / (time.perf_counter() - started)
    losses_finite = all(math.isfinite(v) for v in result.logs.values())

    memory.reset()
    rows = torch.arange(samples) % len(table)
    masks = table.masks[rows].to(device)
    vendor, pathology = table.vendor_indices()[rows].to(device), table.pathology_indices()[rows].to(device)
    t0 = time.perf_counter()
    images = gen.sample(masks, vendor, pathology, generator=torch.Generator().manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    sample_seconds = time.perf_counter() - t0
    sample_peak = memory.peak()
    images_ok = bool(torch.isfinite(images).all()) and float(images.abs().max()) <= 1.0
    shape_ok = tuple(images.shape) == (samples, 1, image_size, image_size)
    del gen
    return {"family": family, "batch": global_batch, "per_pass": per_pass, "steps_per_s": steps_per_s,
            "examples_per_s": steps_per_s * global_batch, "images_per_s": samples / sample_seconds,
            "train_peak_gib": train_peak, "sample_peak_gib": sample_peak,
            "amp": json.loads((work / family / "training.json").read_text())["amp"] or "fp32",
            "ok": losses_finite and images_ok and shape_ok,
            "problem": "" if losses_finite and images_ok and shape_ok else
            f"finite losses {losses_finite}, images finite and in range {images_ok}, shape {shape_ok}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a smoke check of this script)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per family")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: the standard profile's)")
    parser.add_argument("--samples", type=int, default=None, help="images sampled per family (default 16; CPU 1)")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="sampler steps of the UNet families (default: the profile's; CPU 2)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--skip-tests", action="store_true", help="skip pytest -m cuda")
    args = parser.parse_args(argv)

    import torch

    from cmraudit.run.config import PROFILE_IMAGE_SIZE

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for a CPU smoke check", file=sys.stderr)
        return 1
    device = torch.device("cpu" if args.cpu else "cuda")
    samples = args.samples or (1 if args.cpu else 16)
    sample_steps = args.sample_steps or (2 if args.cpu else None)
    image_size = PROFILE_IMAGE_SIZE["standard"]
    print(f"device: {describe_device(device)}", flush=True)

    failed = []
    if not args.skip_tests:
        rc = run_cuda_tests()
        if rc != 0:
            failed.append(f"pytest -m cuda (exit {rc})")

    rows = []
    with tempfile.TemporaryDirectory(prefix="cmraudit-gpu-check-") as tmp:
        for family in args.families.split(","):
            if family not in FAMILIES:
                parser.error(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
            print(f"# {family}: {args.steps} standard-profile steps, then {samples} samples", flush=True)
            try:
                row = burst(family, device, args.steps, args.batch, samples, sample_steps, image_size, Path(tmp))
            except Exception:  # noqa: BLE001 - one family's failure must not hide the others'
                traceback.print_exc()
                failed.append(family)
                continue
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            if not row["ok"]:
                failed.append(f"{family} ({row['problem']})")

    peak = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
    print(f"\n{'family':<13}{'amp':>9}{'batch':>9}{'steps/s':>9}{'ex/s':>9}{'img/s':>9}{'train GiB':>11}{'sample GiB':>12}"
          f"  ({peak})")
    for r in rows:
        batch = f"{r['per_pass']}x{r['batch'] // max(r['per_pass'], 1)}" if r["per_pass"] != r["batch"] \
            else str(r["batch"])
        print(f"{r['family']:<13}{r['amp']:>9}{batch:>9}{r['steps_per_s']:>9.2f}{r['examples_per_s']:>9.1f}"
              f"{r['images_per_s']:>9.2f}{r['train_peak_gib']:>11.2f}{r['sample_peak_gib']:>12.2f}"
              f"  {'ok' if r['ok'] else 'FAILED'}")
    print("batch: per pass x passes where a step accumulates passes; DP: expected Poisson batch")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
