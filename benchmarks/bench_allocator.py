"""glibc malloc tuning (``cmraudit.run.allocator``) on and off, for the networks the default run spends its time in.

    python benchmarks/bench_allocator.py                 # 2 threads, quick-profile sizes, 3 rounds each
    python benchmarks/bench_allocator.py --threads 1 --rounds 5

Each measurement is a fresh child process (the tuning is process-wide and only affects later allocations), run with
``CMRAUDIT_MALLOC_TUNING=1`` and ``=0`` in alternation so a background load hits both. A child times, as
milliseconds per example (median over repeats after a warm-up), the quick-profile UNet's inference at batch 64
(sampling and white-box scoring, under the run's own inference settings: channels-last, bf16 where the CPU has AMX),
its training step at batch 16, and the segmenter's inference at batch 64. Prints each setting's median over rounds
and the ratio tuned/default; below 1 is faster. For the whole effect, time the default run with both settings
(``bench_default_run.py`` passes the environment on).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, sys, time
from cmraudit.run.allocator import tune_malloc
tuned = tune_malloc()
import torch
torch.set_num_threads(int(sys.argv[1]))
from cmraudit.api import Conditioning
from cmraudit.registry import get
from cmraudit.measure.segmenter import SegmenterConfig, build_segmenter
from cmraudit.training.device import inference_autocast, training_autocast

def median_ms(fn, n, per):
    for _ in range(2):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / per

size = 64
conditioning = Conditioning(size)
cls = get("generators", "diffusion")
torch.manual_seed(0)
unet = cls(cls.make_config("quick", {}), conditioning).nets["unet"]
def inputs(b):
    onehot = torch.nn.functional.one_hot(torch.randint(0, conditioning.n_labels, (b, size, size)),
                                         conditioning.n_labels).permute(0, 3, 1, 2).float()
    labels = torch.stack([torch.randint(0, conditioning.n_vendors, (b,)), torch.zeros(b, dtype=torch.long)], 1)
    return [torch.randn(b, 1, size, size), torch.rand(b) * 1000, onehot, labels]
out = {"tuned": tuned}
big, small = inputs(64), inputs(16)
opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
def train_step():
    with training_autocast("cpu"):
        loss = unet(*small).float().pow(2).mean()
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
out["unet train step, batch 16"] = median_ms(train_step, 7, 16)
unet.eval().to(memory_format=torch.channels_last)
def infer():
    with torch.no_grad(), inference_autocast("cpu"):
        unet(*big)
out["unet inference, batch 64"] = median_ms(infer, 7, 64)
seg = build_segmenter(SegmenterConfig()).eval().to(memory_format=torch.channels_last)
x = torch.randn(64, 1, size, size).contiguous(memory_format=torch.channels_last)
def seg_infer():
    with torch.no_grad(), inference_autocast("cpu"):
        seg(x)
out["segmenter inference, batch 64"] = median_ms(seg_infer, 7, 64)
print(json.dumps(out))
"""


def child(threads: int, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(CMRAUDIT_MALLOC_TUNING="1" if tuned else "0", OMP_NUM_THREADS=str(threads))
    run = subprocess.run([sys.executable, "-c", CHILD, str(threads)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(args.rounds):
        for tuned in (True, False):
            results[tuned].append(child(args.threads, tuned))
    if not all(r["tuned"] for r in results[True]):
        print("malloc tuning did not apply here (not glibc, or MALLOC_* / LD_PRELOAD set): nothing to compare")
    print(f"{args.threads} threads, {args.rounds} rounds, ms/example (median over rounds)")
    for key in (k for k in results[True][0] if k != "tuned"):
        on = statistics.median(r[key] for r in results[True])
        off = statistics.median(r[key] for r in results[False])
        print(f"  {key:<32} default {off:6.2f}   tuned {on:6.2f}   tuned/default {on / off:5.2f}")


if __name__ == "__main__":
    main()
