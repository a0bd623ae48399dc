"""Test-only helpers for the DP step: one near-noiseless DP-SGD step, to compare grad-sample modes."""
from __future__ import annotations

import torch

from cmraudit.api import Batch, Generator
from cmraudit.training.step_runner import EMA, LoopRunner


def parameters_after_one_dp_step(gen: Generator, batch: Batch, grad_sample_mode: str,
                                 max_grad_norm: float = 0.05) -> dict[str, torch.Tensor]:
    """Every network's flattened parameters after one DP-SGD step (SGD, lr 1) with clipping active and noise ~0:
    the step of one grad-sample mode, to compare with another's on the same generator and batch."""
    gen.train()
    runner = LoopRunner(gen, {n: torch.optim.SGD(gen.nets[n].parameters(), lr=1.0) for n in gen.nets},
                        torch.device("cpu"), None, 0.0, EMA({}, 0.9))
    runner.make_private(gen.private_networks(), 1e-9, max_grad_norm, float(len(batch)), grad_sample_mode)
    torch.manual_seed(1)  # the step's own draws (noise levels, latents) are the same in every mode
    runner.begin_step(len(batch))
    gen.training_step(batch, runner)
    runner.release()
    return {n: torch.cat([p.detach().flatten() for p in gen.nets[n].parameters()]) for n in gen.nets}
