"""Contract checks for plugin authors: run a Generator, Attack or Metric on tiny data and check every rule.

    from cmraudit.testing import check_attack, check_generator, check_metric

    def test_my_generator():
        check_generator(MyGenerator)        # raises ContractViolation (a PluginError) naming the broken rule

Each check takes a second or two on one CPU thread. A failure is a ``ContractViolation`` whose message names the
plugin (registered name, module and class) and the rule, e.g. ``generator 'my-gan' (my_pkg.gan.MyGan) breaks the
rule 'sample-range': ...``; ``.rule`` and ``.plugin`` hold the same for assertions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..api import Attack, AttackResult, AuditContext, Batch, Conditioning, Generator, Metric, MetricValue, NotApplicable
from ..data.types import SliceTable
from ..errors import PluginError
from .tiny import PlainRunner, TinyGenerator, make_audit_context, tiny_table, train_steps

__all__ = ["ContractViolation", "check_generator", "check_attack", "check_metric"]

#: signal names become keys in results.json and parts of file names
SIGNAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ContractViolation(PluginError):
    """A plugin that breaks one rule of its base class's contract."""

    def __init__(self, kind: str, cls: type, rule: str, detail: str) -> None:
        self.kind, self.rule, self.detail = kind, rule, detail
        self.plugin = getattr(cls, "name", None) or getattr(cls, "__name__", repr(cls))
        where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', type(cls).__qualname__)}"
        super().__init__(f"{kind} {self.plugin!r} ({where}) breaks the rule "
                         f"'{rule}': {detail}")


def _rule(kind: str, cls: type) -> Callable[[bool, str, str], None]:
    def require(ok: bool, rule: str, detail: str) -> None:
        if not ok:
            raise ContractViolation(kind, cls, rule, detail)
    return require


def _call(kind: str, cls: type, rule: str, what: str, fn: Callable[[], Any]) -> Any:
    """Run plugin code; anything it raises (but NotApplicable) becomes a violation of ``rule`` naming the plugin."""
    try:
        return fn()
    except (ContractViolation, NotApplicable):
        raise
    except Exception as exc:
        raise ContractViolation(kind, cls, rule, f"{what} raised {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------------- generators
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


# --------------------------------------------------------------------------------------------------- audits
def _audit(kind: str, cls: type, method: str, generator: Generator | None, table: SliceTable | None, seed: int,
           options: dict[str, Any] | None) -> tuple[AuditContext, Any]:
    """A fresh context in a temporary folder, then ``cls().<method>(ctx)``."""
    with tempfile.TemporaryDirectory(prefix="cmraudit-check-") as tmp:
        ctx = make_audit_context(generator, table, seed, options=options, workdir=Path(tmp))
        return ctx, _run_audit(kind, cls, method, ctx)


def _run_audit(kind: str, cls: type, method: str, ctx: AuditContext) -> Any:
    instance = _call(kind, cls, "registrable", f"{cls.__name__}()", cls)
    reason = _call(kind, cls, "applies-to", "applies_to(generator)", lambda: instance.applies_to(ctx.generator))
    _rule(kind, cls)(reason is None or isinstance(reason, str), "applies-to",
                     f"applies_to must return None or a reason string, got {reason!r:.80}")
    if reason:
        raise NotApplicable(f"{kind} {cls.name!r}: {reason}")
    return _call(kind, cls, f"{kind}-{method}", f"{method}(ctx)", lambda: getattr(instance, method)(ctx))


def check_attack(cls: type, *, generator: Generator | None = None, table: SliceTable | None = None, seed: int = 0,
                 options: dict[str, Any] | None = None, deterministic: bool = True) -> AttackResult:
    """Run ``cls`` on ``make_audit_context(...)`` twice and check the AttackResult contract.

    Rules: registrable, applies-to, attack-run, attack-result-type, attack-result-lengths, attack-scores-finite,
    attack-level, attack-patient-roles, attack-arrays, attack-details, attack-deterministic. Raises NotApplicable
    when the attack says it does not apply to the generator (pass one it applies to). ``options`` is the run's
    options table, keyed by plugin name: ``{"my-attack": {"shadows": 2}}``.
    """
    require = _rule("attack", cls)
    require(isinstance(cls, type) and issubclass(cls, Attack), "registrable", "is not a cmraudit.Attack subclass")
    ctx, result = _audit("attack", cls, "run", generator, table, seed, options)
    require(isinstance(result, AttackResult), "attack-result-type", f"run() returned {type(result).__name__}, "
            "expected cmraudit.AttackResult")
    roles = {"member": set(ctx.split.members), "nonmember": set(ctx.split.nonmembers)}
    for role, allowed in roles.items():
        scores = np.asarray(getattr(result, f"{role}_scores"))
        patients = np.asarray(getattr(result, f"{role}_patients")).astype(str)
        require(scores.ndim == 1 and len(scores) > 0 and len(scores) == len(patients), "attack-result-lengths",
                f"{role}_scores {scores.shape} and {role}_patients {patients.shape} must be 1-D, non-empty and "
                "of equal length")
        require(np.issubdtype(scores.dtype, np.number) and bool(np.isfinite(scores).all()), "attack-scores-finite",
                f"{role}_scores must be finite numbers")
        stray = sorted(set(patients) - allowed)
        require(not stray, "attack-patient-roles", f"{role}_patients holds {stray[:3]}, not {role}s of the split")
        if result.level == "patient":
            require(len(set(patients)) == len(patients), "attack-level",
                    f"level 'patient' but {role}_patients repeats a patient")
    require(result.level in ("slice", "patient"), "attack-level", f"level must be 'slice' or 'patient', "
            f"got {result.level!r}")
    require(isinstance(result.arrays, dict) and all(isinstance(v, np.ndarray) for v in result.arrays.values()),
            "attack-arrays", "arrays must map names to numpy arrays (they are saved beside the scores)")
    _require_jsonable(require, "attack-details", result.details)
    if deterministic:
        again = _audit("attack", cls, "run", generator, table, seed, options)[1]
        same = all(np.allclose(getattr(result, f), getattr(again, f), rtol=1e-6, atol=1e-9)
                   for f in ("member_scores", "nonmember_scores"))
        require(same, "attack-deterministic", f"two runs with seed {seed} gave different scores; draw randomness "
                "from ctx.seed")
    return result


def check_metric(cls: type, *, generator: Generator | None = None, table: SliceTable | None = None, seed: int = 0,
                 options: dict[str, Any] | None = None, deterministic: bool = True) -> dict[str, MetricValue]:
    """Run ``cls`` on ``make_audit_context(...)`` and check the Metric contract.

    Rules: registrable, metric-category, applies-to, metric-compute, metric-result-type, metric-value-finite,
    metric-direction, metric-ci, metric-details, metric-deterministic.
    """
    require = _rule("metric", cls)
    require(isinstance(cls, type) and issubclass(cls, Metric), "registrable", "is not a cmraudit.Metric subclass")
    require(cls.category in ("fidelity", "utility"), "metric-category",
            f"category must be 'fidelity' or 'utility', got {cls.category!r}")
    values = _audit("metric", cls, "compute", generator, table, seed, options)[1]
    require(isinstance(values, dict) and bool(values) and all(isinstance(k, str) and SIGNAL_NAME.match(k)
                                                              for k in values), "metric-result-type",
            f"compute() must return a non-empty dict of named MetricValues, got {values!r:.80}")
    for name, v in values.items():
        require(isinstance(v, MetricValue), "metric-result-type", f"{name!r} is {type(v).__name__}, not MetricValue")
        require(isinstance(v.value, (int, float, np.number)) and math.isfinite(v.value), "metric-value-finite",
                f"{name!r} has value {v.value!r}")
        require(v.direction in ("higher", "lower"), "metric-direction",
                f"{name!r} direction must be 'higher' or 'lower', got {v.direction!r}")
        ci_ok = v.ci is None or (len(v.ci) == 2 and all(math.isfinite(c) for c in v.ci) and v.ci[0] <= v.ci[1])
        require(ci_ok, "metric-ci", f"{name!r} ci must be None or a finite (low, high), got {v.ci!r}")
        _require_jsonable(require, "metric-details", v.details)
    if deterministic:
        again = _audit("metric", cls, "compute", generator, table, seed, options)[1]
        changed = [n for n in values if n not in again or not math.isclose(values[n].value, again[n].value,
                                                                            rel_tol=1e-6, abs_tol=1e-9)]
        require(not changed, "metric-deterministic", f"{changed} differ between two runs with seed {seed}")
    return values


def _require_jsonable(require: Callable, rule: str, details: Any) -> None:
    from ..results import jsonable

    require(isinstance(details, dict), rule, f"details must be a dict, got {type(details).__name__}")
    try:
        json.dumps(jsonable(dataclasses.asdict(details) if dataclasses.is_dataclass(details) else details))
    except (TypeError, ValueError) as exc:
        require(False, rule, f"details are not JSON-serialisable ({exc})")
