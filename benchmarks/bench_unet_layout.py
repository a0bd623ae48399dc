"""The quick-profile UNet's inference pass with MONAI's own resnet blocks against cmraudit's layout-aware ones
(``cmraudit.plugins._channels_last``), in the layout and precision the default run uses on this CPU.

    python benchmarks/bench_unet_layout.py                 # 2 threads, batch 64
    python benchmarks/bench_unet_layout.py --threads 1 --batch 16

Both variants are the same network object (the blocks' class is switched between rounds, which alternate so that
load from other processes hits both), so the printed ratio is the speed-up of the blocks alone; the largest
difference between their outputs is printed too. glibc's allocator is tuned as the ``cmraudit`` command tunes it.
Also prints the two kernels behind it: a timestep-embedding add and a small-map GroupNorm in channels-last against
NCHW.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from bench_cpu_bf16 import _median_ms  # this folder is on sys.path when the script runs


def kernels(dtype: torch.dtype, rounds: int) -> None:
    f = torch.nn.functional
    for shape in ((64, 16, 64, 64), (64, 32, 16, 16)):
        x = torch.randn(shape).to(dtype)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        emb = torch.randn(shape[:2]).to(dtype)[:, :, None, None]
        weight, bias = torch.ones(shape[1]), torch.zeros(shape[1])
        add = _median_ms(lambda: x_cl + emb, rounds, 1)
        add_full = _median_ms(lambda: x_cl + emb.expand(shape).contiguous(memory_format=torch.channels_last),
                              rounds, 1)
        norm_cl = _median_ms(lambda: f.group_norm(x_cl, 8, weight, bias), rounds, 1)
        norm = _median_ms(lambda: f.group_norm(x, 8, weight, bias), rounds, 1)
        print(f"  {str(shape):18s} embedding add: broadcast {add:5.2f} ms, materialised {add_full:5.2f} ms | "
              f"GroupNorm: channels-last {norm_cl:5.2f} ms, NCHW {norm:5.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from cmraudit.run.allocator import tune_malloc

    tune_malloc()  # as the cmraudit command does: freed activation buffers are reused, not unmapped

    from cmraudit.plugins._channels_last import ResnetBlock
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

    from cmraudit.api import Conditioning
    from cmraudit.registry import get
    from cmraudit.training.device import inference_dtype

    cls = get("generators", "diffusion")
    net = cls(cls.make_config("quick", {}), Conditioning(64)).nets["unet"].eval()
    net.to(memory_format=torch.channels_last)
    dtype = inference_dtype(torch.device("cpu"))
    size, n = 64, args.batch
    inputs = (torch.randn(n, 1, size, size), torch.rand(n) * 1000,
              torch.nn.functional.one_hot(torch.randint(0, 4, (n, size, size)), 4).permute(0, 3, 1, 2).float(),
              torch.zeros(n, 4, dtype=torch.long))
    blocks = [m for m in net.modules() if isinstance(m, DiffusionUNetResnetBlock)]

    def use(block_cls) -> None:
        for m in blocks:
            m.__class__ = block_cls

    @torch.no_grad()
    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return net(*inputs)

    outputs, times = {}, {"monai": [], "cmraudit": []}
    for variant, block_cls in (("monai", DiffusionUNetResnetBlock), ("cmraudit", ResnetBlock)):
        use(block_cls)
        outputs[variant] = forward()
        forward()
    for _ in range(args.rounds):
        for variant, block_cls in (("monai", DiffusionUNetResnetBlock), ("cmraudit", ResnetBlock)):
            use(block_cls)
            times[variant].append(_median_ms(forward, 1, 0) / n)
    monai_ms, ours_ms = statistics.median(times["monai"]), statistics.median(times["cmraudit"])
    print(f"quick UNet inference, batch {n}, {args.threads} thread(s), "
          f"{str(dtype).replace('torch.', '') if dtype else 'fp32'}, channels-last:")
    print(f"  MONAI resnet blocks     {monai_ms:6.3f} ms/image")
    gap = (outputs["monai"].float() - outputs["cmraudit"].float()).abs().max().item()
    print(f"  layout-aware blocks     {ours_ms:6.3f} ms/image   {monai_ms / ours_ms:.2f}x faster; outputs differ by "
          f"at most {gap:.2g} (GroupNorm's summation order)")
    print("kernels:")
    kernels(dtype or torch.float32, args.rounds)


if __name__ == "__main__":
    main()
