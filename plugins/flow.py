"""Mask-conditioned flow matching / rectified flow on the same MONAI backbone as the diffusion generator.

Convention (Lipman et al. 2023, "Flow Matching for Generative Modeling", optimal-transport path with
sigma_min = 0; Liu, Gong & Liu 2023, "Flow Straight and Fast", rectified flow):

    x0 ~ N(0, I) (noise at t = 0),  x1 = data (t = 1),  x_t = (1 - t) x0 + t x1,  target v = x1 - x0,

so the learned velocity points from noise to data and sampling integrates ``dx/dt = v(x, t)`` forward from t = 0
to t = 1. The network sees ``1000 t``.

diffusers' flow-matching schedulers (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, as in SD3)
use the opposite direction: ``sigma = 1 - t`` runs from 1 (noise) to 0 (data), and their ``step`` expects
``d x / d sigma = x0 - x1 = -v``. ``integrate`` therefore hands them ``-v`` and converts their timestep back to
``t``; ``tests/plugins/test_flow_sign.py`` checks this with an analytic velocity field whose answer is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from cmraudit.errors import ConfigError
from cmraudit.hookspecs import hookimpl

from ._unet import UNetConfig, UNetGenerator

SOLVERS = ("euler", "heun")
TIME_SAMPLING = ("uniform", "logit_normal")
MODEL_TIME_SCALE = 1000.0


@dataclass
class FlowConfig(UNetConfig):
    solver: str = "euler"  # "euler" | "heun" (Heun: two network calls per step)
    #: training time distribution: uniform (Lipman 2023) or logit-normal (Esser et al. 2024, SD3), which puts
    #: more weight on intermediate times where the velocity is hardest to predict
    time_sampling: str = "uniform"


def velocity_target(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, v)`` on the straight path from noise ``x0`` to data ``x1`` at per-example times ``t`` (B,)."""
    t_ = t.view(-1, *([1] * (x1.ndim - 1)))
    return (1.0 - t_) * x0 + t_ * x1, x1 - x0


def integrate_velocity(noise: torch.Tensor, velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       steps: int, solver: str = "euler") -> torch.Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` (t in [0, 1], B-vector) from noise at t = 0 to t = 1 with a diffusers
    flow-matching scheduler, translating between our t and its sigma = 1 - t (see the module docstring)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    if solver == "euler":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=int(MODEL_TIME_SCALE))
        # uniform steps in t; the default spacing would spend its last step between sigma 0.001 and 0
        scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 0.0, steps + 1)[:-1]), device=noise.device)
    elif solver == "heun":
        scheduler = FlowMatchHeunDiscreteScheduler(num_train_timesteps=int(MODEL_TIME_SCALE))
        scheduler.set_timesteps(steps, device=noise.device)
    else:
        raise ConfigError(f"flow.solver: {solver!r} is not one of {', '.join(SOLVERS)}")
    x = noise
    for timestep in scheduler.timesteps:
        t = (1.0 - timestep.float() / MODEL_TIME_SCALE).to(noise.device).expand(x.shape[0])
        x = scheduler.step(-velocity(x, t), timestep, x).prev_sample
    return x


class FlowGenerator(UNetGenerator):
    """Conditional flow matching (rectified flow) on MONAI's DiffusionModelUNet; few-step Euler or Heun sampling."""

    name = "flow"
    family = "flow"
    description = "conditional flow matching / rectified flow (MONAI DiffusionModelUNet), Euler or Heun sampling"
    Config = FlowConfig

    def __init__(self, config: FlowConfig, conditioning: Any) -> None:
        if config.solver not in SOLVERS:
            raise ConfigError(f"flow.solver: {config.solver!r} is not one of {', '.join(SOLVERS)}")
        if config.time_sampling not in TIME_SAMPLING:
            raise ConfigError(f"flow.time_sampling: {config.time_sampling!r} is not one of {', '.join(TIME_SAMPLING)}")
        super().__init__(config, conditioning)

    def _draw_times(self, n: int, device: torch.device) -> torch.Tensor:
        if self.config.time_sampling == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device))
        return torch.rand(n, device=device)

    def training_target(self, x_data: torch.Tensor, noise: torch.Tensor):
        t = self._draw_times(x_data.shape[0], x_data.device)
        x_t, v = velocity_target(noise, x_data, t)
        return x_t, t * MODEL_TIME_SCALE, v

    def fixed_level_target(self, x_data: torch.Tensor, noise: torch.Tensor, level: float):
        t = torch.full((x_data.shape[0],), 1.0 - level, device=x_data.device)  # noise level s = 1 - t
        x_t, v = velocity_target(noise, x_data, t)
        return x_t, t * MODEL_TIME_SCALE, v

    def level_coefficients(self, level: float) -> tuple[float, float, float]:
        return 1.0 - level, level, (1.0 - level) * MODEL_TIME_SCALE  # x = (1 - s) x1 + s noise, t = 1 - s

    def split_prediction(self, output: torch.Tensor, x: torch.Tensor, level: float):
        # v = x1 - noise, so x1 = x + s v and noise = x - (1 - s) v
        return x + level * output, x - (1.0 - level) * output

    def integrate(self, noise: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  steps: int) -> torch.Tensor:
        return integrate_velocity(noise, lambda x, t: predict(x, t * MODEL_TIME_SCALE), steps, self.config.solver)


@hookimpl
def cmraudit_register_generators(register) -> None:
    register(FlowGenerator)
