"""``check_generator``: a Generator plugin trained, sampled and DP-wrapped on tiny data, every rule checked."""
from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..api import Batch, Conditioning, Generator
from ..data.types import SliceTable
from .contracts import SIGNAL_NAME, _call, _rule
from .tiny import tiny_table, train_steps


def check_generator(cls: type, profile: str = "smoke", *, image_size: int = 16, steps: int = 3,
                    batch_size: int = 4, overrides: dict[str, Any] | None = None, seed: int = 0,
                    table: SliceTable | None = None) -> Generator:
    """Build ``cls`` with its ``profile`` config, train it ``steps`` steps, sample, and check the Generator contract.

    Rules: registrable, config, build, optimizers, private-networks, opacus-compatible, training-step,
    training-updates-weights, sample, sample-shape, sample-dtype, sample-finite, sample-range, sample-device,
    sample-deterministic and, when implemented, membership-signal. Returns the trained generator (eval mode).
    """
    require = _rule("generator", cls)
    call = lambda rule, what, fn: _call("generator", cls, rule, what, fn)  # noqa: E731
    require(isinstance(cls, type) and issubclass(cls, Generator), "registrable", "is not a cmraudit.Generator subclass")
    require(isinstance(getattr(cls, "name", None), str) and bool(cls.name), "registrable", "has no `name`")
    table = table if table is not None else tiny_table(image_size=image_size, seed=seed)
    conditioning = Conditioning(table.image_size)
    config = call("config", f"make_config({profile!r})", lambda: cls.make_config(profile, overrides))

    def build() -> Generator:
        torch.manual_seed(seed)
        gen = call("build", "__init__(config, conditioning)", lambda: cls(config, conditioning))
        nets = getattr(gen, "nets", None)
        require(isinstance(nets, dict) and bool(nets) and all(isinstance(n, torch.nn.Module) for n in nets.values()),
                "build", f"self.nets must be a non-empty dict of torch.nn.Module, got {nets!r:.80}")
        return gen

    gen = build()
    private = call("private-networks", "private_networks()", lambda: tuple(gen.private_networks()))
    require(set(private) <= set(gen.nets), "private-networks",
            f"private_networks() names {sorted(set(private) - set(gen.nets))}, not in self.nets {sorted(gen.nets)}")
    optimizers = call("optimizers", "make_optimizers()", gen.make_optimizers)
    require(isinstance(optimizers, dict) and bool(optimizers) and set(optimizers) <= set(gen.nets)
            and all(isinstance(o, torch.optim.Optimizer) for o in optimizers.values()), "optimizers",
            f"make_optimizers() must map names in self.nets {sorted(gen.nets)} to optimizers, got {optimizers!r:.80}")

    before = {n: [p.detach().clone() for p in net.parameters()] for n, net in gen.nets.items()}
    logs = call("training-step", "training_step(batch, runner)",
                lambda: train_with_loop(gen, table, profile, steps, batch_size, seed))
    for step_logs in logs:
        require(isinstance(step_logs, dict) and all(isinstance(k, str) for k in step_logs), "training-step",
                f"training_step must return a dict of named floats, got {step_logs!r:.80}")
        bad = {k: v for k, v in step_logs.items() if not (isinstance(v, (int, float)) and math.isfinite(v))}
        require(not bad, "training-step", f"training_step logged non-finite or non-float values {bad!r:.80}")
    changed = [n for n, net in gen.nets.items()
               if any(not torch.equal(a, p) for a, p in zip(before[n], net.parameters()))]
    require(bool(changed), "training-updates-weights", f"no parameter of {sorted(gen.nets)} changed in {steps} steps "
            "(does training_step call runner.optimize(network, loss)?)")
    _check_opacus(cls, build(), private, table, profile, batch_size, seed)

    gen.eval()
    batch = Batch.from_table(table, np.arange(min(batch_size, len(table))))
    out = _sample(gen, batch, seed, call)
    b, size = len(batch), table.image_size
    require(isinstance(out, torch.Tensor), "sample-shape", f"sample() must return a tensor, got {type(out).__name__}")
    require(tuple(out.shape) == (b, 1, size, size), "sample-shape",
            f"sample() returned shape {tuple(out.shape)} for {b} masks of {size}x{size}; expected {(b, 1, size, size)}")
    require(out.dtype.is_floating_point, "sample-dtype", f"sample() returned dtype {out.dtype}; expected a float")
    require(bool(torch.isfinite(out).all()), "sample-finite", "sample() returned NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    require(lo >= -1 - 1e-6 and hi <= 1 + 1e-6, "sample-range", f"sample() values span [{lo:.4g}, {hi:.4g}]; "
            "images must lie within [-1, 1]")
    require(out.device == batch.masks.device, "sample-device", f"sample() returned a tensor on {out.device}, "
            f"masks were on {batch.masks.device}")
    again = _sample(gen, batch, seed, call)
    require(torch.equal(out, again), "sample-deterministic", "two sample() calls with torch.Generator seeded "
            f"{seed} differ (max |diff| {float((out - again).abs().max()):.3g}); draw all randomness from `generator`")
    if cls.has_membership_signal():
        _check_membership_signal(gen, batch, seed, require, call)
    return gen


def _sample(gen: Generator, batch: Batch, seed: int, call: Callable) -> torch.Tensor:
    torch.rand(97)  # move the global RNG: a sampler that ignores `generator` then differs between calls
    rng = torch.Generator(device=batch.masks.device).manual_seed(seed)
    with torch.no_grad():
        return call("sample", "sample(masks, vendor, pathology, generator)",
                    lambda: gen.sample(batch.masks, batch.vendor, batch.pathology, generator=rng))


def _check_membership_signal(gen: Generator, batch: Batch, seed: int, require: Callable, call: Callable) -> None:
    def signal() -> dict:
        torch.rand(97)
        rng = torch.Generator(device=batch.masks.device).manual_seed(seed)
        return call("membership-signal", "membership_signal(batch, generator)",
                    lambda: gen.membership_signal(batch, generator=rng))

    first, second = signal(), signal()
    require(isinstance(first, dict) and bool(first), "membership-signal",
            f"membership_signal must return a non-empty dict of named (B,) tensors, got {first!r:.80}")
    for name, value in first.items():
        require(isinstance(name, str) and bool(SIGNAL_NAME.match(name)), "membership-signal",
                f"signal name {name!r} must match {SIGNAL_NAME.pattern} (it becomes a results key and a file name)")
        require(isinstance(value, torch.Tensor) and tuple(value.shape) == (len(batch),), "membership-signal",
                f"signal {name!r} must be a ({len(batch)},) tensor, one score per example, got "
                f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        require(bool(torch.isfinite(value).all()), "membership-signal", f"signal {name!r} has NaN or infinite values")
        require(torch.equal(value, second[name]), "membership-signal",
                f"signal {name!r} differs between two calls with the same seeded generator")


def _check_opacus(cls: type, gen: Generator, private: tuple[str, ...], table: SliceTable, profile: str,
                  batch_size: int, seed: int) -> None:
    """Private networks must train under DP-SGD: no BatchNorm or in-place modules (checked statically), and a
    DP training step must give every parameter a finite per-example gradient (Opacus clips those)."""
    from opacus.validators import ModuleValidator

    require = _rule("generator", cls)
    for name in private:
        net = gen.nets[name]
        problems = [str(e).splitlines()[0] for e in ModuleValidator.validate(net, strict=False)]
        problems += [f"{sub or name}: {type(m).__name__}(inplace=True)" for sub, m in net.named_modules()
                     if getattr(m, "inplace", False) is True]
        require(not problems, "opacus-compatible", f"private network {name!r}: {'; '.join(problems)[:300]} "
                "(use GroupNorm/LayerNorm instead of BatchNorm and no in-place operations)")
    if not private:
        return
    with warnings.catch_warnings():  # Opacus' hooks warn when no input requires a gradient: expected here
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        if training_loop() is not None:
            from ..training.privacy import DPConfig

            dp = DPConfig(noise_multiplier=1.0, accountant="rdp")
            _call("generator", cls, "opacus-compatible", "two DP-SGD training steps",
                  lambda: train_with_loop(gen, table, profile, 2, batch_size, seed, dp=dp))
        else:
            _check_per_example_gradients(cls, gen, private, table, batch_size, seed)


def _check_per_example_gradients(cls: type, gen: Generator, private: tuple[str, ...], table: SliceTable,
                                 batch_size: int, seed: int) -> None:
    gaps = _call("generator", cls, "opacus-compatible", "a training step with Opacus per-example gradients",
                 lambda: per_example_gradient_gaps(gen, private, table, batch_size, seed))
    _rule("generator", cls)(not gaps, "opacus-compatible", f"no finite per-example gradient for {', '.join(gaps[:5])}")


# --------------------------------------------------------------------------------------------------- training
def training_loop() -> Any:
    """cmraudit.training.loop when this installation has it, else None (the checks then use a PlainRunner)."""
    try:
        from ..training import loop as train
    except ImportError:
        return None
    return train


def train_with_loop(gen: Generator, table: SliceTable, profile: str, steps: int, batch_size: int, seed: int,
                    dp: Any = None) -> list[dict[str, float]]:
    """Train through the real training loop (its runner, EMA and DP wrapping) when available; return the logs."""
    loop = training_loop()
    if loop is None:
        return train_steps(gen, table, steps, batch_size=batch_size, seed=seed)
    config = loop.TrainConfig.for_profile(profile, type(gen), overrides={
        "steps": steps, "batch_size": batch_size, "checkpoint_every": steps, "seed": seed, "device": "cpu"})
    with tempfile.TemporaryDirectory(prefix="cmraudit-check-") as tmp:
        result = loop.train(gen, table, config, Path(tmp), dp=dp)
    return [result.logs]


def per_example_gradient_gaps(gen: Generator, private: tuple[str, ...], table: SliceTable, batch_size: int = 4,
                              seed: int = 0) -> list[str]:
    """Wrap the private networks in Opacus' GradSampleModule, take one step with a PlainRunner, and list the
    parameters that received a gradient but no finite per-example gradient (DP-SGD could not clip them)."""
    from opacus.grad_sample import GradSampleModule

    for name in private:
        gen.nets[name] = GradSampleModule(gen.nets[name], batch_first=True, loss_reduction="mean")
    gaps: list[str] = []

    def after_backward(network: str) -> None:
        if network not in private:
            return
        for pname, p in gen.nets[network].named_parameters():
            if p.requires_grad and p.grad is not None:
                gs = getattr(p, "grad_sample", None)
                gs = torch.stack(gs).sum(0) if isinstance(gs, list) else gs
                if gs is None or tuple(gs.shape[1:]) != tuple(p.shape) or not bool(torch.isfinite(gs).all()):
                    gaps.append(f"{network}.{pname.removeprefix('_module.')}")

    train_steps(gen, table, 1, batch_size=batch_size, seed=seed, after_backward=after_backward)
    return gaps
