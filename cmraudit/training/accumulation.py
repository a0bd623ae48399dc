"""Gradient accumulation: one non-DP training step taken as several forward/backward passes (``micro_batch``).

A step over a batch of B examples split into passes of n_i examples makes the same update as one pass over all B:
the loss is the batch mean, so pass i's mean loss is weighted by n_i / B and the gradients are summed before the
one clip-and-step (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", section 2).
That holds for generators that call ``runner.optimize`` once per step; one that updates a second network from a
loss through the first network's fresh update (a GAN) is refused, since accumulated passes would change its step.
Generators that count their steps (the VAE's KL warm-up) count on the pass whose runner ``completes_step``: every
pass of one step sees the same count.

DP runs never come here: their Poisson batch is the unit of the privacy analysis (see ``loop.py``).
"""
from __future__ import annotations

from typing import Any

import torch

from ..api import Batch, Generator, StepRunner
from ..errors import ConfigError
from .step_runner import LoopRunner


def accumulated_step(generator: Generator, runner: LoopRunner, batches: list[Batch]) -> dict[str, float]:
    """One training step over ``batches`` (the passes of one batch): one optimiser update from their summed
    gradients, each pass's mean loss weighted by its share of the examples; logs are weighted the same way."""
    if len(batches) == 1:
        return {k: float(v) for k, v in generator.training_step(batches[0], runner).items()}
    total = sum(len(b) for b in batches)
    accumulating = AccumulatingRunner(runner, generator.name)
    logs: dict[str, float] = {}
    for i, batch in enumerate(batches):
        accumulating.begin_pass(len(batch) / total, first=i == 0, final=i == len(batches) - 1)
        for k, v in generator.training_step(batch, accumulating).items():
            logs[k] = logs.get(k, 0.0) + float(v) * len(batch) / total
    return logs


class AccumulatingRunner(StepRunner):
    """The StepRunner the passes of one accumulated step see, in front of the loop's ``LoopRunner``.

    Passes before the last back-propagate their weighted loss and keep the gradients. The last pass hands the
    loop's own runner (which zeroes, clips, steps and updates the EMA) its weighted loss plus ``<p, g_acc>`` for
    every parameter p with accumulated gradient g_acc: that term's gradient is exactly g_acc, so clipping, loss
    scaling and the update act on the whole batch's gradient, with no second copy of that logic.
    """

    def __init__(self, runner: LoopRunner, generator: str) -> None:
        self.runner, self.generator = runner, generator
        self.weight, self.first, self.final, self.optimized = 1.0, True, True, 0

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def autocast(self) -> Any:
        return self.runner.autocast()

    def begin_pass(self, weight: float, first: bool, final: bool) -> None:
        self.weight, self.first, self.final, self.optimized = weight, first, final, 0

    @property
    def completes_step(self) -> bool:  # type: ignore[override]
        return self.final

    def optimize(self, network: Any, loss: torch.Tensor) -> None:
        self.optimized += 1
        if self.optimized > 1:
            raise ConfigError(f"train.micro_batch: generator {self.generator!r} updates its networks more than once "
                              "per step, and a later update sees the earlier one, which accumulated passes would "
                              "change; set train.micro_batch = 0 (whole batches) for it")
        names = (network,) if isinstance(network, str) else tuple(network)
        params = [p for name in names for group in self.runner.optimizers[name].param_groups
                  for p in group["params"]]
        scaler = self.runner.scaler
        if not self.final:
            if self.first:  # the previous step's gradients are still there
                for name in names:
                    self.runner.optimizers[name].zero_grad(set_to_none=True)
            weighted = loss * self.weight
            (scaler.scale(weighted) if scaler else weighted).backward()
            return
        scale = scaler.get_scale() if scaler else 1.0  # the passes' gradients carry the (unchanged) loss scale
        carried = sum((p * (p.grad.detach() / scale)).sum() for p in params if p.grad is not None)
        self.runner.optimize(network, loss * self.weight + carried)
