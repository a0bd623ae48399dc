"""The one training loop for every generator family, with or without DP, on CPU or GPU, resumable.

    result = train(generator, members_table, TrainConfig.for_profile("quick", type(generator)), run / "diffusion",
                   dp=DPConfig(epsilon=8.0), callback=progress)
    generator = load_trained(run / "diffusion")          # later, in another process

``train`` writes ``checkpoints/step_*.pt`` every ``checkpoint_every`` steps and at the end, then ``training.json``.
Calling it again on the same folder resumes from the newest checkpoint (same step counter, same RNG streams, same
privacy accountant), or returns the recorded result at once when the run has finished. The library prints nothing:
progress goes to ``callback(step=, total=, logs=)`` (called with keywords).

Batches: non-DP runs draw ``batch_size`` random slices per step; DP runs use Poisson sampling of patients (one slice
each) with expected batch ``batch_size``, see ``cmraudit.training.privacy``. ``micro_batch`` bounds the examples per
forward/backward pass: a non-DP step then accumulates the gradients of several passes before its one update
(``cmraudit.training.accumulation``); a DP run draws Poisson batches of expected size ``micro_batch`` instead, because the Poisson
batch is the unit the privacy analysis is about and its noisy, clipped sum cannot be split into separate updates.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..api import PROFILES, Batch, Conditioning, Generator
from ..data.types import SliceTable
from ..dataclass_config import as_dict, build_dataclass
from ..errors import ConfigError, DataError
from ..io import atomic_write_text
from .accumulation import accumulated_step
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from .device import amp_dtype, describe, select_device
from .distributed import World, device_rng_state, is_leading, set_device_rng_state, world
from .privacy import DPConfig, UniformSampler, epsilon_spent, make_accountant, plan_private_training
from .saved_run import existing, plain, read_summary
from .sharding import sharded_step
from .step_runner import EMA, LoopRunner

Callback = Callable[[int, int, dict[str, float]], None]

#: Per-profile defaults; a generator may change them through ``Generator.train_overrides(profile)``.
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "ema_decay": 0.9},
    "quick": {"steps": 300, "batch_size": 16, "checkpoint_every": 100, "ema_decay": 0.995},
    "standard": {"steps": 20000, "batch_size": 64, "checkpoint_every": 1000, "ema_decay": 0.9999},
}
#: TrainConfig fields that must match for a run folder to be resumed (device and checkpoint_every may change).
_RUN_IDENTITY = ("steps", "batch_size", "ema_decay", "grad_clip", "seed")
_LOG_WINDOW = 20


@dataclass
class TrainConfig:
    """Loop settings shared by every generator (learning rates live in each generator's Config).

    amp: bf16/fp16 autocast, used on CUDA only. grad_clip: global gradient-norm clip for non-DP updates (0 = off;
    DP clips per example to ``DPConfig.max_grad_norm`` instead). device: None = cuda > mps > cpu.
    micro_batch: examples per forward/backward pass (0 = the whole batch). Non-DP steps accumulate the passes'
    gradients into one update, equal to the whole batch's for a generator that optimises once per step (a GAN's
    second update depends on its first, so it is refused); DP runs use ``min(batch_size, micro_batch)`` as their
    expected Poisson batch.
    finetune_steps: steps on the members for a model that starts from public pretraining (DP variants, see
    ``cmraudit.run.train_stage.public_pretraining``); 0 = ``steps``. The pretraining runs ``steps``.
    """

    steps: int = 300
    batch_size: int = 16
    checkpoint_every: int = 100
    ema_decay: float = 0.995
    amp: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    device: str | None = None
    micro_batch: int = 0
    finetune_steps: int = 0

    @classmethod
    def for_profile(cls, profile: str = "quick", generator_cls: type[Generator] | None = None,
                    overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """Profile defaults, then the generator's ``train_overrides(profile)``, then ``overrides`` (TOML / CLI)."""
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
        hints = getattr(generator_cls, "train_overrides", None)
        values = {**PROFILE_DEFAULTS[profile], **(hints(profile) if hints else {}), **(overrides or {})}
        return build_dataclass(cls, values, owner="train").validate()

    def validate(self) -> "TrainConfig":
        for key in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.finetune_steps < 0:
            raise ConfigError(f"train.finetune_steps must be >= 0 (0 = steps), got {self.finetune_steps}")
        if self.micro_batch < 0:
            raise ConfigError(f"train.micro_batch must be >= 0 (0 = the whole batch), got {self.micro_batch}")
        return self

    def for_finetuning(self) -> "TrainConfig":
        """The loop's settings for training on the members after public pretraining."""
        return dataclasses.replace(self, steps=self.finetune_steps or self.steps, finetune_steps=0)

    def private_batch(self) -> int:
        """The expected Poisson batch of a DP run: a DP step is never split into accumulated passes."""
        return min(self.batch_size, self.micro_batch) if self.micro_batch else self.batch_size


@dataclass
class TrainResult:
    steps: int
    seconds: float
    dp: dict[str, Any] | None
    logs: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainResult":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def train(generator: Generator, table: SliceTable, config: TrainConfig, out_dir: Path,
          dp: DPConfig | None = None, callback: Callback | None = None) -> TrainResult:
    """Train ``generator`` on every slice of ``table`` (pass members only), resuming whatever ``out_dir`` holds.

    On return the generator holds its sampling weights (EMA where it has ``ema_networks()``), unwrapped and in eval
    mode: exactly what ``load_trained(out_dir)`` rebuilds.

    In an initialised process group (``torchrun``, see ``cmraudit.training.distributed``) every rank calls ``train``
    with the same arguments (or rank 0 alone, leading, and the others ``follow``); the ranks share each step's
    global batch, and rank 0 alone reads and writes ``out_dir`` and reports to ``callback``.
    """
    out_dir, config = Path(out_dir), config.validate()
    if len(table) == 0:
        raise DataError(f"{out_dir}: no training slices")
    identity = _identity(generator, config, dp)
    ranks = world()
    if ranks is not None and is_leading():
        ranks.broadcast((generator, table, config, out_dir, dp))  # to the other ranks' ``follow``
    kind, where, state = existing(out_dir, identity, generator, ranks)
    device = select_device(config.device)
    if ranks is not None:
        device = ranks.training_device(device)
    if kind == "finished":
        _load_final(generator, state)
        generator.to(device).eval()
        return TrainResult.from_dict(where)  # where: the finished run's training.json
    if kind == "fresh":
        if ranks is not None:  # rank 0's initial weights everywhere, however the other ranks built theirs
            for name, sd in state.items():
                generator.nets[name].load_state_dict(sd)
        state = None
    main = ranks is None or ranks.main

    dtype = amp_dtype(device, config.amp, private=dp is not None)
    generator.to(device).train()
    optimizers = generator.make_optimizers()
    runner = LoopRunner(generator, optimizers, device, dtype, config.grad_clip,
                        EMA({n: generator.nets[n] for n in generator.ema_networks()}, config.ema_decay))
    runner.distribute(ranks)
    rng = torch.Generator()
    plan = functools.partial(plan_private_training, generator, optimizers, table, config.private_batch(),
                             config.steps, dp, rng, state)
    # one calibration: rank 0's σ on every rank
    private = plan() if ranks is None or dp is None else plan(sigma=ranks.from_main(lambda: plan().sigma))
    sampler = private.sampler if private else UniformSampler(table, config.batch_size, rng)
    accountant = make_accountant(dp.accountant, state["dp"]["history"] if state else None) if private else None

    step, seconds, window = 0, 0.0, collections.deque(maxlen=_LOG_WINDOW)
    last = where  # a run killed between its final checkpoint and training.json
    if state:
        for name, sd in state["nets"].items():
            generator.nets[name].load_state_dict(sd)
        runner.load_state_dict(state["runner"])
        set_rng_state(state["rng"], rng)
        set_device_rng_state(state.get("device_rng"), device)
        step, seconds = state["step"], state["seconds"]
        window.extend(state["logs"])
    else:
        seed_everything(config.seed, rng)

    columns = (table.images, table.masks, table.vendor_indices(), table.pathology_indices(), table.phase_indices(),
               table.relative_positions())
    started = time.perf_counter()

    def checkpoint() -> Path:
        ckpt = {"identity": identity, "seconds": seconds + time.perf_counter() - started, "logs": list(window),
                "generator": generator.name, "generator_config": plain(as_dict(generator.config)),
                "conditioning": dataclasses.asdict(generator.conditioning),
                "nets": {n: _unwrapped(generator, n).state_dict() for n in generator.nets},
                "runner": runner.state_dict(), "rng": rng_state(rng), "device_rng": device_rng_state(device),
                "dp": private.checkpoint_state(accountant) if private else None}
        return save_checkpoint(out_dir / "checkpoints", step, ckpt)

    try:
        if private:
            runner.make_private(private.networks, private.per_network_sigma, dp.max_grad_norm,
                                private.sampler.expected_batch, dp.grad_sample_mode)
        while step < config.steps:
            rows = sampler()
            if len(rows) == 0:
                runner.noise_only_step()
                logs: dict[str, float] = {}
            elif ranks is not None:
                logs = sharded_step(generator, runner, ranks, columns, rows, config.micro_batch, private is not None)
            else:
                runner.begin_step(len(rows))
                passes = [rows] if private or not config.micro_batch else rows.split(config.micro_batch)
                batches = [Batch(*(c[part] for c in columns)).to(device) for part in passes]
                logs = accumulated_step(generator, runner, batches)
            if accountant is not None:
                accountant.step(noise_multiplier=private.sigma, sample_rate=sampler.sample_rate)
            step += 1
            window.append(logs)
            logs = {**logs, "batch": float(len(rows))}
            if main and (step % config.checkpoint_every == 0 or step == config.steps):
                last = checkpoint()
                if private:
                    logs["epsilon"] = private.dp.record(private.sigma, sampler.sample_rate, step)["epsilon"]
            if callback and main:
                callback(step=step, total=config.steps, logs=logs)
    finally:
        runner.release()

    seconds += time.perf_counter() - started
    _use_sampling_weights(generator, runner.ema.state_dict()["nets"])
    if not main:  # rank 0's record, once it is on disk
        return TrainResult.from_dict(ranks.broadcast(None))
    record = private.dp.record(private.sigma, sampler.sample_rate, step, epsilon_spent(
        private.dp.accountant, accountant.history, private.dp.delta)) if private else None
    result = TrainResult(step, round(seconds, 3), record, _mean_logs(window), describe(device))
    summary = {**result.to_dict(), "generator": generator.name, "checkpoint": str(last.relative_to(out_dir)),
               "amp": str(dtype).replace("torch.", "") if dtype else None, "identity": identity,
               "dp_mechanism": private.mechanism() if private else None}
    atomic_write_text(out_dir / "training.json", json.dumps(summary, indent=2) + "\n")
    if ranks is not None:
        ranks.broadcast(summary)
    return result


def follow(ranks: World) -> None:
    """On a rank other than 0: train whatever rank 0, ``leading``, trains, until it lets go."""
    while (job := ranks.broadcast(None)) is not None:
        generator, table, config, out_dir, dp = job
        train(generator, table, config, out_dir, dp=dp)
    ranks.close()


def load_trained(out_dir: Path, generator_cls_or_name: type[Generator] | str | None = None,
                 device: str | None = None) -> Generator:
    """Rebuild a finished run's generator from its saved config with its sampling (EMA) weights, in eval mode."""
    out_dir = Path(out_dir)
    summary = read_summary(out_dir)
    state = load_checkpoint(out_dir / summary["checkpoint"])
    cls = generator_cls_or_name
    if cls is None or isinstance(cls, str):
        from ..registry import get

        cls = get("generators", cls or state["generator"])
    config = build_dataclass(cls.Config, state["generator_config"], owner=cls.name)
    generator = cls(config, Conditioning(**state["conditioning"]))
    _load_final(generator, state)
    return generator.to(select_device(device)).eval()


# --------------------------------------------------------------------------------------------------- helpers
def _identity(generator: Generator, config: TrainConfig, dp: DPConfig | None) -> dict[str, Any]:
    """What makes two calls the same run: generator, its config, loop settings and DP settings as given."""
    dp_dict = None if dp is None else {k: v for k, v in dataclasses.asdict(dp).items() if k != "grad_sample_mode"}
    train = {k: getattr(config, k) for k in _RUN_IDENTITY}
    if config.micro_batch:  # only when set, so that folders from before the setting existed still resume
        train["micro_batch"] = config.micro_batch
    return plain({"generator": generator.name, "generator_config": as_dict(generator.config),
                   "train": train, "dp": dp_dict})


def _load_final(generator: Generator, state: dict[str, Any]) -> None:
    for name, sd in state["nets"].items():
        generator.nets[name].load_state_dict(sd)
    _use_sampling_weights(generator, state["runner"]["ema"]["nets"])


def _use_sampling_weights(generator: Generator, ema_nets: dict[str, dict]) -> None:
    for name, sd in ema_nets.items():
        generator.nets[name].load_state_dict(sd)
    generator.eval()


def _unwrapped(generator: Generator, name: str) -> torch.nn.Module:
    from .step_runner import unwrap

    return unwrap(generator.nets[name])


def _mean_logs(window: Any) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for logs in window:
        for k, v in logs.items():
            sums.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in sums.items()}
