"""bf16 autocast against fp32 on this CPU, for the networks the default run spends its time in.

    python benchmarks/bench_cpu_bf16.py                 # 2 threads, quick-profile sizes
    python benchmarks/bench_cpu_bf16.py --threads 1 --batch 32

cmraudit autocasts to bf16 on CPUs with bf16 matrix units (Intel AMX; ``cmraudit.training.device``). This prints,
for the quick-profile diffusion UNet and the segmenter, the training step (forward, backward, AdamW) and the
inference forward pass in fp32 and in bf16, each in the contiguous (NCHW) and the channels-last layout, as
milliseconds per example (medians over rounds, after a warm-up) and as ratios against the fastest fp32 variant
measured in the same run. On a CPU without AMX bf16 is emulated and slower than fp32, which is why cmraudit only
turns it on where ``torch.cpu._is_amx_tile_supported()`` says the tiles exist (printed first).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def unet(size: int) -> torch.nn.Module:
    """The diffusion generator's own network at the quick profile: what the default run trains and samples."""
    from cmraudit.api import Conditioning
    from cmraudit.registry import get

    cls = get("generators", "diffusion")
    return cls(cls.make_config("quick", {}), Conditioning(size)).nets["unet"]


def segmenter() -> torch.nn.Module:
    from cmraudit.measure.segmenter import SegmenterConfig, build_segmenter

    return build_segmenter(SegmenterConfig())


def _median_ms(fn, rounds: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(name: str, make, inputs, batch: int, rounds: int, warmup: int) -> None:
    rows = {}
    for train in (True, False):
        for bf16 in (False, True):
            for channels_last in (False, True):
                torch.manual_seed(0)
                net = make()
                layout = torch.channels_last if channels_last else torch.contiguous_format
                net = net.to(memory_format=layout).train(train)
                args = [a.contiguous(memory_format=layout) if a.dim() == 4 else a for a in inputs]
                opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

                def step(net=net, args=args, opt=opt, bf16=bf16, train=train):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(train):
                        out = net(*args)
                    if train:
                        loss = out.float().pow(2).mean()
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()

                rows[(train, bf16, channels_last)] = _median_ms(step, rounds, warmup) / batch
    for train in (True, False):
        fastest_fp32 = min(rows[(train, False, cl)] for cl in (False, True))
        for bf16 in (False, True):
            for channels_last in (False, True):
                ms = rows[(train, bf16, channels_last)]
                label = f"{'train step' if train else 'inference'} {'bf16' if bf16 else 'fp32'} " \
                        f"{'channels-last' if channels_last else 'NCHW'}"
                print(f"  {name:<10} {label:<34} {ms:7.2f} ms/example   {fastest_fp32 / ms:5.2f}x the fastest fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.size}x{args.size}; "
          f"AMX tiles: {bool(probe and probe())}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    b, s = args.batch, args.size
    from cmraudit.api import Conditioning

    conditioning = Conditioning(s)
    n_labels, n_vendors = conditioning.n_labels, conditioning.n_vendors
    onehot = torch.nn.functional.one_hot(torch.randint(0, n_labels, (b, s, s)), n_labels).permute(0, 3, 1, 2).float()
    labels = torch.stack([torch.randint(0, n_vendors, (b,)), torch.zeros(b, dtype=torch.long)], dim=1)
    measure("unet", lambda: unet(s), [torch.randn(b, 1, s, s), torch.rand(b) * 1000, onehot, labels], b, args.rounds,
            args.warmup)
    measure("segmenter", segmenter, [torch.randn(b, 1, s, s)], b, args.rounds, args.warmup)


if __name__ == "__main__":
    main()
