"""One model trained by several processes (``torchrun``): the process group, row shards and the collectives.

    torchrun --nproc-per-node 2 -m cmraudit train RUN --model diffusion

Data parallelism as in PyTorch's DistributedDataParallel (Li et al., "PyTorch Distributed: Experiences on
Accelerating Data Parallel Training", VLDB 2020), arranged so that N processes take exactly the step one process
takes with the same seed:

* every rank holds the whole table and draws the *global* batch from the same sampler stream; rank r trains on its
  contiguous shard of the rows (``shard``);
* random draws a generator makes per example inside ``training_step`` (noise, timesteps, latents: any
  ``torch.rand/randn/randint/normal/*_like`` whose leading dimension is the local batch) are drawn at the global
  batch's size and sliced (``ShardedDraws``), so each example gets the numbers it would get in one process and
  every rank's RNG advances exactly as one process's does. Draws of other shapes are made whole, identically on
  every rank; in-place fills (``x.normal_()``) and dropout are not sharded and differ from one process;
* non-DP: each rank weights its mean loss by its share of the global batch and the gradients are summed
  (``all_reduce_grads``) before clipping and the optimiser step, in ``StepRunner.optimize``, once per update
  (a GAN's two updates are two reductions);
* DP-SGD: each rank clips its examples' gradients; the clipped sums are summed across ranks and the Gaussian noise is
  added once, the same draw on every rank from the shared RNG stream (``reduced_noise``), then divided by the
  expected *global* batch. This is the mechanism of Opacus' ``DistributedDPOptimizer`` (noise on rank 0, then a
  sum) and one process's DPOptimizer alike, so σ, q, the steps and ε are those of one process.

A rank whose shard of a step is empty (a Poisson batch smaller than the world) still runs the step on one row with
weight 0: it takes part in every collective and advances its RNG like the others. Rank 0 alone reads and writes the
run folder and hands the others what they need (``World.broadcast``), so no shared file system is required and a
checkpoint written with N processes resumes with M.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

#: how long a rank waits in a collective: rank 0 alone loads data and fetches caches between models
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the initialised process group (world size ≥ 2)."""

    rank: int
    size: int
    local_rank: int
    #: where collective tensors live: the local GPU under NCCL, the CPU under Gloo
    comm_device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def training_device(self, device: torch.device) -> torch.device:
        """The local rank's GPU when training on CUDA (``cuda`` or ``cuda:K`` both mean one GPU per process)."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; tensors keep their device)."""
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` run on rank 0, its value on every rank; its error raised on every rank (rather than the
        others waiting for a value that never comes)."""
        value = None
        if self.main:
            try:
                value = compute()
            except Exception as exc:
                value = exc
        value = self.broadcast(value)
        if isinstance(value, Exception):
            raise value
        return value

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Leave the group together: a rank that exits while another is still inside the last collective makes
        Gloo abort that one (seen as a SIGABRT of a rank at the very end of a torchrun launch)."""
        dist.barrier()
        dist.destroy_process_group()

    def sum_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Every rank's share-weighted logs summed: the global batch's logs (same keys on every rank)."""
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))


def world() -> World | None:
    """The process group this process belongs to, or None when it trains alone (no group, or a world of one)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    nccl = dist.get_backend() == "nccl"
    return World(dist.get_rank(), dist.get_world_size(), local_rank,
                 torch.device("cuda", local_rank) if nccl else torch.device("cpu"))


def init_from_env(device: str | None = None) -> World | None:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL when
    training on CUDA, Gloo on the CPU. None when not launched that way or with one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device in (None, "", "auto") or str(device).startswith("cuda"))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return world()


# --------------------------------------------------------------------------------------------------- leading
_leading = False


def is_leading() -> bool:
    """Rank 0 drives the others: each ``train`` call first hands them its arguments (see ``leading``)."""
    return _leading


@contextlib.contextmanager
def leading(w: World) -> Iterator[None]:
    """On rank 0: run the ordinary pipeline; every ``train`` call inside sends its job to the other ranks, which
    wait in ``cmraudit.training.loop.follow``. Leaving the block releases them."""
    global _leading
    _leading = True
    try:
        yield
    finally:
        _leading = False
        w.broadcast(None)
        w.close()


# --------------------------------------------------------------------------------------------------- shards
def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a batch of ``n`` that ``rank`` trains on: contiguous, sizes differing by at most one."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def all_reduce_grads(params: Iterable[torch.Tensor]) -> None:
    """Sum ``p.grad`` over the ranks in place, one collective per dtype. A parameter no rank gave a gradient
    keeps ``grad = None`` (optimisers skip those), as in one process."""
    params = [p for p in params if p.requires_grad]
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    for (dtype, device), members in groups.items():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in members]
        present = torch.tensor([float(p.grad is not None) for p in members], dtype=dtype, device=device)
        reduced = _all_reduce_flat([*grads, present])
        for p, grad, has in zip(members, reduced[:-1], reduced[-1].tolist()):
            p.grad = grad.view_as(p) if has else None


def all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` (same dtype and device) over the ranks, in place."""
    for tensor, reduced in zip(tensors, _all_reduce_flat(tensors)):
        tensor.copy_(reduced.view_as(tensor))


def _all_reduce_flat(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if dist.get_backend() == "nccl" and flat.device.type != "cuda":
        flat = flat.cuda()
    dist.all_reduce(flat)
    flat = flat.to(tensors[0].device)
    return list(flat.split([t.numel() for t in tensors]))


def reduced_noise(optimizer_cls: type) -> type:
    """``optimizer_cls`` (an Opacus DPOptimizer) whose clipped per-example gradient sums are summed over the ranks
    before its one Gaussian noise draw. Every rank draws the same noise from the shared RNG stream, so every rank
    holds the same noisy sum and takes the same step. (Noise added on every rank and then summed would be √N times
    what the accountant assumes: valid but needlessly noisier, and not one process's update.)"""

    class ReducedNoise(optimizer_cls):
        def add_noise(self) -> None:
            all_reduce_([p.summed_grad for p in self.params])
            super().add_noise()

    ReducedNoise.__name__ = ReducedNoise.__qualname__ = f"Distributed{optimizer_cls.__name__}"
    return ReducedNoise


# --------------------------------------------------------------------------------------------------- draws
_active: list["ShardedDraws"] = []


class ShardedDraws(TorchFunctionMode):
    """Inside a sharded ``training_step``: per-example random draws made at the global size, this rank's rows kept.

    ``rows``: the global batch (or pass) size; ``start``, ``count``: this rank's rows in it. A draw whose leading
    dimension is ``count`` is taken as per example. Paused while the step runner optimises (``paused_draws``), so
    the DP noise and anything else an update draws is made whole.
    """

    def __init__(self, rows: int, start: int, count: int) -> None:
        super().__init__()
        self.rows, self.start, self.count = rows, start, count
        self.paused = False

    def __enter__(self) -> "ShardedDraws":
        _active.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        _active.remove(self)
        super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if self.paused or handler is None or "out" in kwargs:
            return func(*args, **kwargs)
        return handler(self, func, args, kwargs)

    def _rows(self, out: torch.Tensor) -> torch.Tensor:
        return out[self.start:self.start + self.count]

    def _sized(self, func, args, kwargs, at: int | None):
        """rand/randn(*size | size), randint(..., size), normal(mean, std, size): ``at`` = the size's position."""
        if "size" in kwargs:
            size, where = tuple(kwargs["size"]), "kw"
        elif at is None:  # rand/randn: the sizes are the positional ints, or one sequence
            size = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else tuple(args)
            where = "args"
        elif len(args) > at and isinstance(args[at], (tuple, list, torch.Size)):
            size, where = tuple(args[at]), at
        else:
            return func(*args, **kwargs)
        if not size or size[0] != self.count:
            return func(*args, **kwargs)
        full = (self.rows, *size[1:])
        if where == "kw":
            return self._rows(func(*args, **{**kwargs, "size": full}))
        if where == "args":
            return self._rows(func(full, **kwargs))
        return self._rows(func(*args[:where], full, *args[where + 1:], **kwargs))

    def _like(self, func, args, kwargs):
        like = args[0]
        if like.dim() == 0 or like.shape[0] != self.count:
            return func(*args, **kwargs)
        layout = torch.channels_last if (like.dim() == 4 and not like.is_contiguous()
                                         and like.is_contiguous(memory_format=torch.channels_last)) \
            else torch.contiguous_format
        template = torch.empty((self.rows, *like.shape[1:]), dtype=like.dtype, device=like.device,
                               memory_format=layout)
        return self._rows(func(template, *args[1:], **kwargs))


def _randint_size_at(args: tuple) -> int:
    return 2 if len(args) >= 3 else 1


_HANDLERS = {
    torch.rand: lambda m, f, a, k: m._sized(f, a, k, None),
    torch.randn: lambda m, f, a, k: m._sized(f, a, k, None),
    torch.randint: lambda m, f, a, k: m._sized(f, a, k, _randint_size_at(a)),
    torch.normal: lambda m, f, a, k: m._sized(f, a, k, 2) if all(isinstance(x, (int, float)) for x in a[:2])
    else f(*a, **k),
    torch.rand_like: lambda m, f, a, k: m._like(f, a, k),
    torch.randn_like: lambda m, f, a, k: m._like(f, a, k),
    torch.randint_like: lambda m, f, a, k: m._like(f, a, k),
}


@contextlib.contextmanager
def paused_draws() -> Iterator[None]:
    """Draws made whole (not sharded) inside this block: the optimiser's DP noise, EMA, anything an update does."""
    if not _active:
        yield
        return
    mode, before = _active[-1], _active[-1].paused
    mode.paused = True
    try:
        yield
    finally:
        mode.paused = before


# --------------------------------------------------------------------------------------------------- device RNG
def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The training GPU's RNG state (a rank's GPU is not always GPU 0, so the checkpoint keeps it by role)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_device_rng_state(state: torch.Tensor | None, device: torch.device) -> None:
    if state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
