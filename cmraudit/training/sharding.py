"""One training step of a distributed run: the global batch's rows sharded over the ranks.

Every rank sees the same global rows (``rows``) and trains on its contiguous shard; the step runner sums the
gradients (or, under DP, the clipped sums) over the ranks, see ``cmraudit.training.distributed``. With
``micro_batch`` the global batch is first split into passes exactly as one process splits it, and each pass is
sharded: the update then equals one process's accumulated update, and ``micro_batch`` bounds the examples per pass
summed over the ranks (each rank runs about ``micro_batch / world size`` of them per pass).
"""
from __future__ import annotations

import torch

from ..api import Batch, Generator
from .accumulation import AccumulatingRunner
from .distributed import ShardedDraws, World, shard
from .step_runner import LoopRunner


def sharded_step(generator: Generator, runner: LoopRunner, world: World, columns: tuple, rows: torch.Tensor,
                 micro_batch: int, private: bool) -> dict[str, float]:
    """One step over the global batch ``rows`` (non-empty); returns the global batch's logs on every rank.

    Each rank's mean loss is weighted by its share of the global batch, n_r / B, so the summed gradient is the
    gradient of the global batch's mean loss. Under DP the loss is left unweighted (Opacus' per-example gradients
    are of each example's own loss; the clipped sum is divided by the expected global batch). A rank with no rows
    in a pass runs it on one row with weight 0, so that it joins the collectives and draws what the others draw.
    """
    total = len(rows)
    passes = [rows] if private or not micro_batch else list(rows.split(micro_batch))
    accumulating = AccumulatingRunner(runner, generator.name) if len(passes) > 1 else None
    device = runner.device
    logs: dict[str, float] = {}
    for i, part in enumerate(passes):
        lo, hi = shard(len(part), world.rank, world.size)
        empty = hi == lo
        local = part[:1] if empty else part[lo:hi]
        share = 0.0 if empty else (hi - lo) / total
        batch = Batch(*(c[local] for c in columns)).to(device)
        runner.begin_step(len(local))
        if accumulating is not None:
            accumulating.begin_pass(share, first=i == 0, final=i == len(passes) - 1)
            runner.loss_weight, step_runner = 1.0, accumulating
        else:
            runner.loss_weight = (0.0 if empty else 1.0) if private else share
            step_runner = runner
        with ShardedDraws(len(part), 0 if empty else lo, len(local)):
            out = generator.training_step(batch, step_runner)
        for k, v in out.items():
            logs[k] = logs.get(k, 0.0) + float(v) * share
    runner.loss_weight = 1.0
    return world.sum_logs(logs)
