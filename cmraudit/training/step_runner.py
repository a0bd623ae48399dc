"""The StepRunner handed to ``Generator.training_step``: AMP, gradient clipping, DP-SGD (Opacus) and EMA in one place.

A generator's ``training_step`` computes losses and calls ``runner.optimize(network, loss)``; it never sees Opacus.

DP contract for a generator's private networks (``Generator.private_networks()``):
  * each private network is optimised at most once per step (one Gaussian release per network per step; the
    accountant counts k = len(private_networks()) releases per step, see ``privacy.releases_noise``);
  * rows of every forward pass through a private network are in batch order, in whole blocks of the batch size:
    ``net(torch.cat([real, fake]))`` with ``fake[j]`` conditioned on ``batch.masks[j]``, or several separate calls.
    Row j of every block is attributed to the batch's example j; their gradients are summed *before* clipping, so
    one patient moves a network by at most C per step however many rows it influenced;
  * no cross-example layers (BatchNorm, minibatch statistics), no in-place activations (checked at wrap time);
  * when another network's loss flows through a private network that is not being updated (a GAN's generator step
    through its discriminator), freeze it and pause its Opacus hooks (``net.disable_hooks()`` where present), and
    run grad-enabled training-mode forwards through a private network only when a backward pass follows.
"""
from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from ..api import Generator, StepRunner
from ..errors import PluginError
from .device import autocast
from .distributed import World, all_reduce_grads, paused_draws, reduced_noise

if TYPE_CHECKING:
    from .grad_sample import FactoredGrad


def unwrap(net: nn.Module) -> nn.Module:
    """The user's module inside an Opacus GradSampleModule (or the module itself)."""
    from opacus.grad_sample import AbstractGradSampleModule

    return net._module if isinstance(net, AbstractGradSampleModule) else net


def check_private_network(generator: str, name: str, net: nn.Module) -> None:
    """Raise PluginError naming the generator when Opacus cannot compute exact per-example gradients of ``net``."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    problems = [str(e) for e in ModuleValidator.validate(net, strict=False)]
    problems += [str(e) for e in GradSampleModule.validate(net, strict=False)]
    problems += [f"in-place activation {sub_name or name} ({type(m).__name__}(inplace=True))"
                 for sub_name, m in net.named_modules() if getattr(m, "inplace", False) is True]
    if problems:
        listed = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise PluginError(f"generator {generator!r}: network {name!r} cannot be trained with DP by Opacus "
                          f"(replace BatchNorm by GroupNorm, use non-in-place activations): {listed}")


class EMA:
    """Exponential moving average of a network's weights (Polyak & Juditsky 1992), used for sampling.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow's ExponentialMovingAverage
    with num_updates), so short runs are not dominated by the random initialisation.
    """

    def __init__(self, nets: dict[str, nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {name: copy.deepcopy(unwrap(net)).eval().requires_grad_(False) for name, net in nets.items()}
        self.updates = {name: 0 for name in nets}

    @torch.no_grad()
    def update(self, name: str, net: nn.Module) -> None:
        self.updates[name] += 1
        n = self.updates[name]
        decay = min(self.decay, (1 + n) / (10 + n))
        shadow, live = self.shadow[name], unwrap(net)
        torch._foreach_lerp_(list(shadow.parameters()), list(live.parameters()), 1.0 - decay)
        for b_shadow, b_live in zip(shadow.buffers(), live.buffers()):
            b_shadow.copy_(b_live)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": dict(self.updates), "nets": {n: m.state_dict() for n, m in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates.update(state["updates"])
        for name, sd in state["nets"].items():
            self.shadow[name].load_state_dict(sd)


def fold_grad_samples(module: nn.Module, batch_size: int, where: str, scale_by_rows: bool = False) -> None:
    """Make each parameter's per-example gradients one (B, ...) tensor: blocks of B rows summed, missing = 0.

    scale_by_rows: the gradients were taken of a mean over R rows without Opacus' rescaling (FastGradSampleModule);
    multiply each by its R, as Opacus' ``loss_reduction="mean"`` would have done to the (larger) backprops. A single
    block is not multiplied (a copy of every per-example gradient): its R goes to ``p.grad_sample_scale`` instead,
    which ``FastDPOptimizer`` applies to the norms and the clip factors. Every folded parameter gets a scale.
    """
    from .grad_sample import FactoredGrad  # imports Opacus: only DP runs pay for it
    for p in module.parameters():
        if not p.requires_grad:
            continue
        parts = getattr(p, "grad_sample", None)
        p.grad_sample_scale = 1.0
        if parts is None:  # parameter unused this step: its per-example gradient is exactly zero
            p.grad_sample = torch.zeros((batch_size, *p.shape), device=p.device, dtype=p.dtype)
            continue
        parts = parts if isinstance(parts, list) else [parts]
        if any(isinstance(part, FactoredGrad) for part in parts):
            factored = _fold_factored(parts, batch_size, where, scale_by_rows)
            if factored is not None:
                p.grad_sample = factored
                continue
            parts = [part.per_row() if isinstance(part, FactoredGrad) else part for part in parts]
        if len(parts) == 1 and parts[0].shape[0] == batch_size and parts[0].dtype == p.dtype:
            # never scaled in place: a per-example gradient may alias a backprop shared with another parameter's
            p.grad_sample = parts[0]
            p.grad_sample_scale = float(batch_size) if scale_by_rows else 1.0
            continue
        total = torch.zeros((batch_size, *p.shape), device=p.device, dtype=p.dtype)
        for part in parts:
            rows = part.shape[0]
            if rows % batch_size:
                raise PluginError(f"{where}: a forward pass had {rows} rows for a batch of {batch_size}; "
                                  "DP needs whole blocks of the batch, in batch order")
            block_sum = part.to(p.dtype).reshape(rows // batch_size, batch_size, *p.shape).sum(0)
            total.add_(block_sum, alpha=rows if scale_by_rows else 1)
        p.grad_sample = total


def _fold_factored(parts: list, batch_size: int, where: str, scale_by_rows: bool) -> FactoredGrad | None:
    """Blocks of factored Linear gradients stacked as (R, B, ·) factors; None when mixed with ordinary tensors."""
    from .grad_sample import FactoredGrad

    if not all(isinstance(part, FactoredGrad) for part in parts):
        return None
    a_blocks, g_blocks = [], []
    for part in parts:
        a, g = part.a.flatten(0, 1), part.g.flatten(0, 1)
        rows = a.shape[0]
        if rows % batch_size:
            raise PluginError(f"{where}: a forward pass had {rows} rows for a batch of {batch_size}; "
                              "DP needs whole blocks of the batch, in batch order")
        a_blocks.append(a.reshape(rows // batch_size, batch_size, -1))
        g_blocks.append((g * rows if scale_by_rows else g).reshape(rows // batch_size, batch_size, -1))
    return FactoredGrad(torch.cat(a_blocks), torch.cat(g_blocks))


def _unscaled(net: nn.Module) -> bool:
    from .grad_sample import FastGradSampleModule

    return isinstance(net, FastGradSampleModule)


class LoopRunner(StepRunner):
    """One runner per training run. ``begin_step(B)`` before each ``training_step``."""

    def __init__(self, generator: Generator, optimizers: dict[str, torch.optim.Optimizer], device: torch.device,
                 amp_dtype: torch.dtype | None, grad_clip: float, ema: EMA) -> None:
        self.generator = generator
        self.raw_optimizers = dict(optimizers)
        self.optimizers: dict[str, Any] = dict(optimizers)
        self._device = device
        self.amp_dtype = amp_dtype
        self.grad_clip = grad_clip
        self.ema = ema
        self.scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        self.private: tuple[str, ...] = ()
        self.batch_size = 0
        self._released: set[str] = set()
        #: the process group when one model trains on several ranks (``distribute``); None alone
        self.world: World | None = None
        #: what ``optimize`` multiplies the loss by: a rank's share of the global batch (``training.sharding``)
        self.loss_weight = 1.0

    def distribute(self, world: World | None) -> None:
        """Sum every update's gradients (DP: clipped sums, before the noise) over ``world``'s ranks."""
        self.world = world

    @property
    def device(self) -> torch.device:
        return self._device

    def autocast(self) -> Any:
        return autocast(self._device, self.amp_dtype)

    # ---------------------------------------------------------------------------------------------- DP set-up
    def make_private(self, names: Iterable[str], noise_multiplier: float, max_grad_norm: float,
                     expected_batch: float, grad_sample_mode: str = "fast") -> None:
        """Wrap ``names`` in GradSampleModule + DPOptimizer (per-example clipping to C, N(0, σ²C²) noise)."""
        from opacus.grad_sample import GradSampleModule
        from opacus.optimizers import DPOptimizer

        from .grad_sample import FastDPOptimizer, FastGradSampleModule

        gen = self.generator
        for name in names:
            check_private_network(gen.name, name, gen.nets[name])
            if grad_sample_mode == "fast":
                gen.nets[name] = FastGradSampleModule(gen.nets[name])
            else:
                gen.nets[name] = GradSampleModule(gen.nets[name], batch_first=True, loss_reduction="mean",
                                                  strict=True, force_functorch=grad_sample_mode == "functorch")
            # the loss is a mean over the actual batch; Opacus re-weights to a sum and divides by the *expected*
            # batch size, as the analysis of Poisson-sampled DP-SGD requires
            optimizer_cls = FastDPOptimizer if grad_sample_mode == "fast" else DPOptimizer
            if self.world is not None:
                optimizer_cls = reduced_noise(optimizer_cls)
            self.optimizers[name] = optimizer_cls(self.raw_optimizers[name], noise_multiplier=noise_multiplier,
                                                max_grad_norm=max_grad_norm, expected_batch_size=expected_batch,
                                                loss_reduction="mean")
        self.private = tuple(names)

    def release(self) -> None:
        """Remove Opacus' hooks and put the plain modules back into ``generator.nets``."""
        for name in self.private:
            net = self.generator.nets[name]
            if net is not unwrap(net):
                self.generator.nets[name] = net.to_standard_module()
            self.optimizers[name] = self.raw_optimizers[name]
        self.private = ()

    # ---------------------------------------------------------------------------------------------- steps
    def begin_step(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._released.clear()

    def optimize(self, network: str | Iterable[str], loss: torch.Tensor) -> None:
        """zero_grad, backward, clip (per example under DP), step, EMA — for one network or several sharing a loss.

        In a distributed run the gradients are summed over the ranks after the backward pass: the non-private
        networks' here, the private networks' clipped sums inside their DP optimiser (``reduced_noise``)."""
        with paused_draws():
            self._optimize((network,) if isinstance(network, str) else tuple(network),
                           loss if self.loss_weight == 1.0 else loss * self.loss_weight)

    def _optimize(self, names: tuple[str, ...], loss: torch.Tensor) -> None:
        for name in names:
            if name not in self.optimizers:
                raise PluginError(f"generator {self.generator.name!r}: optimize({name!r}) but make_optimizers() "
                                  f"returned optimisers for {sorted(self.optimizers)}")
            if name in self.private:
                if name in self._released:
                    raise PluginError(f"generator {self.generator.name!r}: private network {name!r} was optimised "
                                      "twice in one step; DP accounting allows one release per network per step")
                self._released.add(name)
            self.optimizers[name].zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # Opacus' hooks on a private network's first layer fire although its input needs no gradient: expected
            warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.world is not None:  # before unscaling and clipping: every rank then sees the global gradient
            all_reduce_grads([p for name in names if name not in self.private
                              for p in unwrap(self.generator.nets[name]).parameters()])
        for name in names:
            optimizer = self.optimizers[name]
            if name in self.private:
                net = self.generator.nets[name]
                fold_grad_samples(unwrap(net), self.batch_size, f"generator {self.generator.name!r}, network {name!r}",
                                  scale_by_rows=_unscaled(net))
                optimizer.step()
            else:
                if self.scaler:
                    self.scaler.unscale_(optimizer)
                if self.grad_clip > 0:
                    nn.utils.clip_grad_norm_(unwrap(self.generator.nets[name]).parameters(), self.grad_clip)
                (self.scaler.step(optimizer) if self.scaler else optimizer.step())
            self._update_ema(name)
        if self.scaler:
            self.scaler.update()

    def noise_only_step(self) -> None:
        """An empty Poisson batch: no data pass, but every private network still gets its noise-only update.

        The analysed mechanism (Poisson-subsampled Gaussian) releases noise even when no example was sampled.
        Skipping the update instead would reveal that the batch was empty, an event whose probability depends on
        whether a given patient is in the data, which the accountant does not cover.
        """
        for name in self.private:
            optimizer = self.optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            for p in unwrap(self.generator.nets[name]).parameters():
                if p.requires_grad:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            optimizer.step()
            self._update_ema(name)

    def _update_ema(self, name: str) -> None:
        if name in self.ema.shadow:
            self.ema.update(name, self.generator.nets[name])

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {n: o.state_dict() for n, o in self.raw_optimizers.items()},
                "ema": self.ema.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, sd in state["optimizers"].items():
            self.raw_optimizers[name].load_state_dict(sd)
        self.ema.load_state_dict(state["ema"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
