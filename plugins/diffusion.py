"""Mask-conditioned denoising diffusion (DDPM training, DDIM / DPM-Solver++ few-step sampling, guidance).

* Training: DDPM (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models"), eq. 14 simple loss:
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with t uniform over the training steps, the network predicts
  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
  Diffusion Models"; or eps) from ``x_t``, t, the mask's one-hot map and the vendor/pathology embedding.
* Sampling: DDIM with eta = 0 (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models") or DPM-Solver++
  (Lu et al. 2022) from diffusers, ``sample_steps`` network evaluations (twice that with guidance).
* Classifier-free guidance (Ho & Salimans 2022): labels (and optionally masks) dropped during training, scale at
  sampling (``guidance_scale``; 1 = off).

The backbone is MONAI's DiffusionModelUNet (see ``_unet.py``). All of it is private data: the whole UNet is
trained with DP when DP is on, and its EMA copy is what sampling uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from cmraudit.errors import ConfigError
from cmraudit.hookspecs import hookimpl

from ._unet import UNetConfig, UNetGenerator

SAMPLERS = ("ddim", "dpm")


@dataclass
class DiffusionConfig(UNetConfig):
    train_timesteps: int = 1000
    #: diffusers beta schedule: "squaredcos_cap_v2" (cosine, Nichol & Dhariwal 2021), "linear" (DDPM) or
    #: "scaled_linear"
    beta_schedule: str = "squaredcos_cap_v2"
    #: "v_prediction" (Salimans & Ho 2022) or "epsilon" (DDPM). v: on the quick profile (150 steps, 10 sampling
    #: steps, phantom 64 px) a segmenter's Dice against the conditioning masks was 0.82 with v, 0.17 with epsilon
    prediction_type: str = "v_prediction"
    sampler: str = "dpm"  # "ddim" | "dpm"
    #: Min-SNR-gamma loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    #: Strategy"): each timestep's loss is weighted by min(SNR_t, gamma) / SNR_t (epsilon) or / (SNR_t + 1) (v), so
    #: the nearly-clean timesteps stop dominating the gradient; the paper's gamma = 5 converges ~3x faster. 0 = off:
    #: on the quick profile (150 steps, phantom 64 px) gamma = 5 doubled FD (0.63 vs 0.32) and cut coverage to 0.50
    min_snr_gamma: float = 0.0


class DiffusionGenerator(UNetGenerator):
    """DDPM on MONAI's DiffusionModelUNet, conditioned on mask, vendor and pathology; few-step DDIM/DPM-Solver."""

    name = "diffusion"
    family = "diffusion"
    description = "DDPM (MONAI DiffusionModelUNet) with DDIM / DPM-Solver++ sampling and classifier-free guidance"
    Config = DiffusionConfig

    def __init__(self, config: DiffusionConfig, conditioning: Any) -> None:
        if config.sampler not in SAMPLERS:
            raise ConfigError(f"diffusion.sampler: {config.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"diffusion.prediction_type: {config.prediction_type!r} (epsilon or v_prediction)")
        super().__init__(config, conditioning)
        from diffusers import DDPMScheduler

        self.schedule = DDPMScheduler(num_train_timesteps=config.train_timesteps, beta_schedule=config.beta_schedule,
                                      prediction_type=config.prediction_type, clip_sample=True)

    def _schedule_kwargs(self) -> dict[str, Any]:
        return dict(num_train_timesteps=self.config.train_timesteps, beta_schedule=self.config.beta_schedule,
                    prediction_type=self.config.prediction_type)

    def _noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_t = self.schedule.add_noise(x0, noise, t)
        target = noise if self.config.prediction_type == "epsilon" else self.schedule.get_velocity(x0, noise, t)
        return x_t, t.float(), target

    def training_target(self, x_data: torch.Tensor, noise: torch.Tensor):
        t = torch.randint(0, self.config.train_timesteps, (x_data.shape[0],), device=x_data.device)
        return self._noised(x_data, noise, t)

    def loss_weights(self, model_time: torch.Tensor) -> torch.Tensor:
        if self.config.min_snr_gamma <= 0:
            return super().loss_weights(model_time)
        abar = self.schedule.alphas_cumprod.to(model_time.device)[model_time.long()]
        snr = abar / (1.0 - abar)
        denominator = snr if self.config.prediction_type == "epsilon" else snr + 1.0
        return (snr.clamp(max=self.config.min_snr_gamma) / denominator).float()

    def _level_step(self, level: float) -> int:
        return min(self.config.train_timesteps - 1, round(level * (self.config.train_timesteps - 1)))

    def fixed_level_target(self, x_data: torch.Tensor, noise: torch.Tensor, level: float):
        t = torch.full((x_data.shape[0],), self._level_step(level), device=x_data.device, dtype=torch.long)
        return self._noised(x_data, noise, t)

    def level_coefficients(self, level: float) -> tuple[float, float, float]:
        step = self._level_step(level)
        abar = float(self.schedule.alphas_cumprod[step])
        return abar ** 0.5, (1.0 - abar) ** 0.5, float(step)

    def split_prediction(self, output: torch.Tensor, x: torch.Tensor, level: float):
        a, b, _ = self.level_coefficients(level)  # a^2 + b^2 = 1
        if self.config.prediction_type == "epsilon":
            return (x - b * output) / a, output
        return a * x - b * output, b * x + a * output  # v = a * eps - b * x0 inverted

    def integrate(self, noise: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  steps: int) -> torch.Tensor:
        # A fresh scheduler per call: DPM-Solver keeps previous model outputs, so sharing one would leak state
        # between calls and break seed determinism. "trailing" spacing starts at the last training step, which
        # matters at few steps (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if self.config.sampler == "ddim":
            scheduler = DDIMScheduler(**self._schedule_kwargs(), clip_sample=True, timestep_spacing="trailing")
        else:
            scheduler = DPMSolverMultistepScheduler(**self._schedule_kwargs(), algorithm_type="dpmsolver++",
                                                    solver_order=2, timestep_spacing="trailing")
        scheduler.set_timesteps(steps, device=noise.device)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_time = t.to(noise.device).float().expand(x.shape[0])
            x = scheduler.step(predict(x, model_time), t, x).prev_sample
        return x


@hookimpl
def cmraudit_register_generators(register) -> None:
    register(DiffusionGenerator)
