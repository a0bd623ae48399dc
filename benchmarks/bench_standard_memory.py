"""Peak training memory of every generator family on the standard profile, estimated on the CPU for a GPU.

No GPU is needed. Each measurement point (family, precision, batch) runs in a fresh subprocess that builds the
generator exactly as ``cmraudit run --profile standard`` does (the profile's generator config and image size, the
training loop's ``LoopRunner`` with EMA, gradient clipping and, for ``diffusion-dp``, Opacus DP-SGD with the fast
per-example gradients), takes one warm-up step at batch 1 (so the optimiser state exists and oneDNN has set up its
kernels), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and takes one step at the point's batch.

    step memory(B) = peak RSS during that step - RSS before the warm-up step
                   = gradients + optimiser state + activations(B) + per-example gradients(B, DP) + transients

is linear in B; a least-squares line through B = 1, 2, 4 gives bytes per example (slope) and the fixed part
(intercept, which should be close to the analytic gradients + Adam state = 3 x parameter bytes). The GPU estimate
at the training batch is the parameters and their EMA copy (analytic) + intercept + slope x batch. The same step's
tensors saved for backward (``torch.autograd.graph.saved_tensors_hooks``) are counted as a cross-check of the slope:
activations are what grows with the batch in a non-DP step.

The training batch is the loop's per-pass batch for the family: ``TrainConfig.micro_batch`` where set (non-DP runs
accumulate ``batch_size / micro_batch`` passes per step), else ``batch_size``. A DP run draws Poisson batches whose
size varies around the expected batch (Abadi et al. 2016; Mironov et al. 2019); its estimate is at the Poisson
quantile that a whole standard run exceeds with probability 1 %, since one oversized batch is enough to run out of
memory.

bf16 is measured with CPU autocast (the CPU's bf16 kernels), which casts the same op classes as CUDA autocast
(convolutions, matmuls to bf16; normalisation and losses in fp32). A point is "fits" when the estimate leaves 20 %
of the budget for what max_memory_allocated does not see: the CUDA context, cuDNN workspaces and the caching
allocator's fragmentation.

    OMP_NUM_THREADS=1 CMRAUDIT_THREADS=1 python benchmarks/bench_standard_memory.py          # ~3-4 min
    python benchmarks/bench_standard_memory.py --families diffusion --set use_flash_attention=false
    python benchmarks/bench_standard_memory.py --budget-gib 48 --json memory.json
    python benchmarks/bench_standard_memory.py --points memory.json     # the table again, from saved measurements
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

#: family label -> (generator name, DP)
FAMILIES: dict[str, tuple[str, bool]] = {"gan": ("gan", False), "vae": ("vae", False),
                                         "diffusion": ("diffusion", False), "flow": ("flow", False),
                                         "diffusion-dp": ("diffusion", True)}
PRECISIONS = ("fp32", "bf16")
GIB, MIB = 2 ** 30, 2 ** 20
#: share of the budget an estimate may use (the rest: CUDA context, cuDNN workspaces, allocator fragmentation)
USABLE = 0.8
#: probability that a whole DP run ever draws a Poisson batch above the one the estimate is made at
DP_RUN_TAIL = 0.01


# --------------------------------------------------------------------------------------------------- child side
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM); False where /proc/self/clear_refs is not writable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss(resettable: bool) -> int:
    if resettable:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _SavedTensors:
    """Bytes of the distinct storages autograd saves for backward inside the context."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def measure_point(family: str, precision: str, batch: int, image_size: int, overrides: dict[str, Any]) -> dict:
    """One training step of ``family`` at ``batch`` on the CPU: the measurements the parent fits (see module doc)."""
    import torch

    from cmraudit.api import Batch, Conditioning
    from cmraudit.registry import registered
    from cmraudit.testing.tiny import tiny_table
    from cmraudit.training.loop import TrainConfig
    from cmraudit.training.step_runner import EMA, LoopRunner

    name, private = FAMILIES[family]
    cls = registered("generators")[name]
    known = set(cls.Config.__dataclass_fields__)
    torch.manual_seed(0)
    gen = cls(cls.make_config("standard", {k: v for k, v in overrides.items() if k in known}),
              Conditioning(image_size))
    train = TrainConfig.for_profile("standard", cls)
    gen.train()
    runner = LoopRunner(gen, gen.make_optimizers(), torch.device("cpu"),
                        torch.bfloat16 if precision == "bf16" else None, 0.0 if private else train.grad_clip,
                        EMA({n: gen.nets[n] for n in gen.ema_networks()}, train.ema_decay))
    if private:
        runner.make_private(gen.private_networks(), 1.0, 1.0, float(batch), "fast")
    params = sum(p.numel() for net in gen.nets.values() for p in net.parameters())
    ema_params = sum(p.numel() for n in gen.ema_networks() for p in gen.nets[n].parameters())
    table = tiny_table(n_patients=batch, slices_per_patient=1, image_size=image_size, seed=1)
    data = Batch.from_table(table)

    def step(b: Batch) -> None:
        runner.begin_step(len(b))
        gen.training_step(b, runner)

    gc.collect()
    before = _rss()
    step(Batch.from_table(table, [0]))  # warm-up: optimiser state, kernel set-up
    gc.collect()
    resettable = _reset_peak()
    saved = _SavedTensors()
    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        step(data)
    seconds = time.perf_counter() - started
    return {"family": family, "precision": precision, "batch": batch, "params": params, "ema_params": ema_params,
            "param_bytes": 4 * params, "ema_bytes": 4 * ema_params,
            "step_bytes": max(0, _peak_rss(resettable) - before), "saved_bytes": saved.nbytes,
            "seconds": round(seconds, 2), "peak_reset": resettable}


# --------------------------------------------------------------------------------------------------- parent side
def training_batch(family: str, overrides: dict[str, Any] | None = None) -> tuple[int, int]:
    """(examples per forward/backward pass, global batch) of the standard profile for ``family``."""
    from cmraudit.registry import registered
    from cmraudit.training.loop import TrainConfig

    name, private = FAMILIES[family]
    train = TrainConfig.for_profile("standard", registered("generators")[name], overrides)
    micro = getattr(train, "micro_batch", 0) or train.batch_size
    per_pass = min(micro, train.batch_size)
    # DP: the Poisson batch is the privacy unit and cannot be split into accumulated passes (see loop.py)
    return (per_pass, per_pass) if private else (per_pass, train.batch_size)


def poisson_tail_batch(expected: float, steps: int, tail: float = DP_RUN_TAIL) -> int:
    """The batch that a run of ``steps`` Poisson(``expected``) draws exceeds with probability about ``tail``."""
    from scipy.stats import poisson

    return int(poisson.ppf(1.0 - tail / steps, expected))


def fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of bytes against batch."""
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((b - mean_b) ** 2 for b, _ in points)
    slope = sum((b - mean_b) * (y - mean_y) for b, y in points) / var if var else 0.0
    return mean_y - slope * mean_b, slope


def run_point(family: str, precision: str, batch: int, image_size: int, sets: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--point", family, precision, str(batch), "--image-size", str(image_size)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{family} {precision} batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def estimate(family: str, precision: str, points: list[dict], budget: float) -> dict:
    from cmraudit.training.loop import TrainConfig

    intercept, slope = fit_line([(p["batch"], p["step_bytes"]) for p in points])
    _, saved_slope = fit_line([(p["batch"], p["saved_bytes"]) for p in points])
    per_pass, global_batch = training_batch(family)
    at = per_pass
    if FAMILIES[family][1]:
        name = FAMILIES[family][0]
        from cmraudit.registry import registered

        at = poisson_tail_batch(per_pass, TrainConfig.for_profile("standard", registered("generators")[name]).steps)
    first = points[0]
    peak = first["param_bytes"] + first["ema_bytes"] + max(intercept, 0.0) + slope * at
    # the largest per-pass batch that still leaves the margin, with the same model of memory
    fixed = first["param_bytes"] + first["ema_bytes"] + max(intercept, 0.0)
    max_batch = int((USABLE * budget - fixed) // slope) if slope > 0 else 0
    return {"family": family, "precision": precision, "params": first["params"], "fixed_bytes": fixed,
            "intercept_bytes": intercept, "adam_and_grads_bytes": 3 * first["param_bytes"],
            "bytes_per_example": slope, "saved_per_example": saved_slope, "per_pass_batch": per_pass,
            "global_batch": global_batch, "estimated_at": at, "peak_bytes": peak,
            "fits": peak <= USABLE * budget, "max_per_pass_batch": max_batch,
            "seconds": round(sum(p["seconds"] for p in points), 1), "points": points}


def print_table(rows: list[dict], budget: float) -> None:
    head = (f"{'family':<13}{'prec':<6}{'params':>8}{'fixed':>9}{'MiB/ex':>9}{'saved/ex':>10}{'batch':>11}"
            f"{'est. peak':>11}{'max batch':>11}  fits {budget / GIB:g} GiB")
    print(head)
    print("-" * len(head))
    for r in rows:
        batch = f"{r['estimated_at']}" + (f" ({r['global_batch']})" if r["global_batch"] != r["per_pass_batch"]
                                           else "")
        print(f"{r['family']:<13}{r['precision']:<6}{r['params'] / 1e6:>7.1f}M{r['fixed_bytes'] / GIB:>8.2f}G"
              f"{r['bytes_per_example'] / MIB:>9.0f}{r['saved_per_example'] / MIB:>10.0f}{batch:>11}"
              f"{r['peak_bytes'] / GIB:>10.1f}G{r['max_per_pass_batch']:>11}  {'yes' if r['fits'] else 'NO'}")
    print("fixed: weights + EMA + gradients + optimiser state (measured intercept); MiB/ex: measured slope; "
          "saved/ex: autograd-saved tensors per example; batch: per pass (global batch); DP: Poisson tail batch; "
          f"max batch: largest per-pass batch within {USABLE:.0%} of the budget.")


def parse_sets(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batches", default="1,2,4", help="measured batches (at least two)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the standard profile's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="generator config override, applied to every family that has the key")
    parser.add_argument("--budget-gib", type=float, default=24.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement point")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--points", default=None, metavar="JSON",
                        help="re-estimate from the points of an earlier --json (e.g. after changing a default batch)")
    parser.add_argument("--point", nargs=3, metavar=("FAMILY", "PRECISION", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from cmraudit.run.config import PROFILE_IMAGE_SIZE

    image_size = args.image_size or PROFILE_IMAGE_SIZE["standard"]
    if args.point:
        family, precision, batch = args.point
        print(json.dumps(measure_point(family, precision, int(batch), image_size, parse_sets(args.set))))
        return 0

    budget = args.budget_gib * GIB
    batches = sorted({int(b) for b in args.batches.split(",")})
    if len(batches) < 2:
        parser.error("--batches needs at least two different batches to fit a line")
    rows = []
    if args.points:
        with open(args.points) as f:
            saved = json.load(f)
        rows = [estimate(r["family"], r["precision"], r["points"], budget) for r in saved]
    for family in ([] if args.points else args.families.split(",")):
        if family not in FAMILIES:
            parser.error(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
        for precision in args.precisions.split(","):
            points = [run_point(family, precision, b, image_size, args.set, args.timeout) for b in batches]
            rows.append(estimate(family, precision, points, budget))
            r = rows[-1]
            print(f"# {family} {precision}: {r['seconds']} s of steps, intercept {r['intercept_bytes'] / GIB:.2f} GiB "
                  f"(analytic gradients + Adam {r['adam_and_grads_bytes'] / GIB:.2f} GiB)", file=sys.stderr)
    source = f"re-estimated from {args.points}" if args.points else f"overrides {parse_sets(args.set) or 'none'}"
    print(f"standard profile, {image_size} px, {source}")
    print_table(rows, budget)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
