"""Two generators with a known answer, run through the whole pipeline by tests/test_audit_validity.py.

``fresh-phantom`` returns slices of phantom patients drawn with another seed: the same population, never a
member, never a canary. Whatever an audit says about it beyond chance is the audit's error. ``verbatim`` stores
every training slice it is shown (members and canaries drawn in alike) and returns them unchanged: every attack
that works must catch it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from cmraudit.api import Batch, Conditioning, Generator
from cmraudit.hookspecs import hookimpl

#: the phantom seed of the fresh patients: the audited default phantom is seed 0, public data 1, canaries 2
FRESH_SEED = 7


@functools.lru_cache(maxsize=4)
def fresh_pool(image_size: int) -> torch.Tensor:
    from cmraudit.data.sources import open_source

    return open_source(f"phantom:60,seed={FRESH_SEED}").load(image_size).images.float()


@dataclass
class NoConfig:
    pass


class FreshPhantom(Generator):
    name = "fresh-phantom"
    family = "other"
    Config = NoConfig

    def __init__(self, config, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        self.nets = {"none": torch.nn.Linear(1, 1)}  # nothing is learnt: the loop still wants a network

    def make_optimizers(self):
        return {"none": torch.optim.SGD(self.nets["none"].parameters(), lr=0.0)}

    def training_step(self, batch: Batch, runner) -> dict[str, float]:
        return {"loss": 0.0}

    def sample(self, masks, vendor, pathology, generator=None):
        pool = fresh_pool(self.conditioning.image_size)
        return pool[torch.randint(0, len(pool), (masks.shape[0],), generator=generator)].to(masks.device)


class _Memory(torch.nn.Module):
    """A fixed-size store of training slices (a buffer, so checkpoints keep it)."""

    def __init__(self, capacity: int, size: int) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(capacity, 1, size, size))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


class Verbatim(Generator):
    name = "verbatim"
    family = "other"
    Config = NoConfig
    CAPACITY = 4096

    def __init__(self, config, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        self.nets = {"memory": _Memory(self.CAPACITY, conditioning.image_size)}

    def make_optimizers(self):
        return {}

    def training_step(self, batch: Batch, runner) -> dict[str, float]:
        memory = self.nets["memory"]
        n = int(memory.count)
        take = min(len(batch), self.CAPACITY - n)
        memory.images[n:n + take] = batch.images[:take].detach().float().cpu()
        memory.count += take
        return {"stored": float(memory.count)}

    def sample(self, masks, vendor, pathology, generator=None):
        memory = self.nets["memory"]
        index = torch.randint(0, max(int(memory.count), 1), (masks.shape[0],), generator=generator)
        return memory.images[index].to(masks.device)


class ValidityPlugins:
    @hookimpl
    def cmraudit_register_generators(self, register):
        register(FreshPhantom)
        register(Verbatim)
