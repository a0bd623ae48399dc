"""The MONAI DiffusionModelUNet backbone and the training / sampling / membership-signal scaffold that the
diffusion and flow-matching generators share; each family supplies only its noising process and its sampler.

Conditioning: the mask's one-hot map is concatenated to the noisy image as extra input channels, and the
vendor/pathology embedding (``LabelEmbedding``) is added to the timestep embedding through MONAI's class-embedding
slot. Everything is Opacus-compatible (GroupNorm, SiLU, Conv2d, Linear, Embedding; attention is made of Linear
layers), checked with ``opacus.validators.ModuleValidator`` and GradSampleModule in the tests.
"""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from cmraudit.api import Batch, Conditioning, Generator, StepRunner
from cmraudit.errors import ConfigError
from cmraudit.training.device import inference_autocast

from ._conditioning import Condition, LabelEmbedding, guided, network_device, seeded_normal


@dataclass
class UNetConfig:
    """Backbone and conditioning settings shared by the diffusion and flow generators."""

    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    norm_groups: int = 8
    num_head_channels: int = 16
    #: attention through torch's scaled_dot_product_attention (flash / memory-efficient kernels, Dao et al. 2022,
    #: "FlashAttention"): the same maths without storing the (tokens x tokens) attention matrix for backward
    use_flash_attention: bool = False
    lr: float = 5e-4
    weight_decay: float = 0.0
    #: classifier-free guidance: training-time drop rates and the sampling-time scale (1 = no guidance, one pass)
    label_dropout: float = 0.1
    mask_dropout: float = 0.0
    guidance_scale: float = 1.0
    sample_steps: int = 20
    #: examples per network call when sampling (bounds memory; results do not depend on it)
    sample_batch: int = 64
    #: noise levels (0 = data, 1 = pure noise) at which ``membership_signal`` measures the per-example loss
    signal_levels: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)


def unet_profiles() -> dict[str, dict[str, Any]]:
    """Backbone sizes per profile: smoke (16-32 px, a tiny net), quick (64 px, ~0.25 s/step at batch 16 on one
    CPU core), standard (128 px, GPU-sized, attention at the two coarsest levels)."""
    return {
        "smoke": dict(channels=(8, 16), norm_groups=4, attention_levels=(False, False), sample_steps=3,
                      num_head_channels=8, signal_levels=(0.1, 0.5)),
        # three signal levels spanning the range (each is one network call per scored slice): on the quick
        # profile the most revealing level differed by family, low noise for flow, 0.5 for diffusion
        "quick": dict(channels=(16, 32, 32), norm_groups=8, attention_levels=(False, False, False), lr=1e-3,
                      sample_steps=10, signal_levels=(0.05, 0.2, 0.5)),
        # flash attention: without the 32x32 level's stored attention matrices a bf16 training step needs 205
        # instead of 280 MiB per example (benchmarks/bench_standard_memory.py, docs/gpu.md)
        "standard": dict(channels=(64, 128, 128, 256), num_res_blocks=2, norm_groups=32,
                         attention_levels=(False, False, True, True), num_head_channels=32, lr=2e-4,
                         sample_steps=25, guidance_scale=1.5, mask_dropout=0.05, use_flash_attention=True),
    }


#: training-loop overrides per profile: the quick UNet step costs ~0.19 s at batch 16 on two CPU threads, so 120 steps
#: keep each UNet model near 23 s (the quick profile trains all four generators plus a DP diffusion in ~2 min).
#: 120 steps sample as well as 150 did: on split seeds 0 and 1, FD 0.34 and 0.26 against 0.40 and 0.26 (diffusion),
#: 0.35 and 0.30 against 0.40 and 0.29 (flow), coverage within 0.02, TSTR Dice 0.01 lower (0.83-0.85).
#: A DP variant, which starts from 120 steps of public pretraining, fine-tunes on the members for 50. On the default
#: run (ε = 8; fewer steps at the same ε let σ fall) 150 steps took 44 s (σ 2.02, FD 0.26, TSTR Dice 0.843), 75 took
#: 22 s (σ 1.54, FD 0.24, 0.840) and 50 take 15 s (σ 1.33, FD 0.29, 0.833; coverage 0.77): the quick profile spends
#: its minutes on the audit, and the DP model stays the closest to the real data of the five.
UNET_TRAIN_OVERRIDES: dict[str, dict[str, Any]] = {"quick": {"steps": 120, "finetune_steps": 50},
                                                    # standard: the global batch of 64 in two passes of 32 keeps a
                                                    # step under ~13 GiB even in fp32 (bf16: ~7 GiB), see docs/gpu.md
                                                    "standard": {"micro_batch": 32}}


def _fast_cpu_inference(method: Callable) -> Callable:
    """Run an inference method with the UNet's conv weights in channels-last (NHWC) layout on CPU, under bf16
    autocast where the CPU has bf16 matrix units (``cmraudit.training.device.inference_dtype``): oneDNN's
    convolutions run 1.2x faster in channels-last at the quick profile's size and batch 64, 2.7x with bf16 on top
    (``benchmarks/bench_cpu_bf16.py``).
    Training keeps the default layout (Opacus' per-example convolution gradients assume contiguous NCHW inputs), so
    the layout is restored when the call returns."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        net = self.nets["unet"]
        device = network_device(net)
        if getattr(self, "_in_fast_inference", False) or device.type != "cpu":
            return method(self, *args, **kwargs)
        self._in_fast_inference = True
        net.to(memory_format=torch.channels_last)
        try:
            with inference_autocast(device):
                return method(self, *args, **kwargs)
        finally:
            net.to(memory_format=torch.contiguous_format)
            self._in_fast_inference = False

    return wrapper


class ConditionalUNet(nn.Module):
    """MONAI DiffusionModelUNet taking ``cat(x, mask one-hot)`` and vendor/pathology through its class embedding."""

    def __init__(self, config: UNetConfig, conditioning: Conditioning, image_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        from ._channels_last import use_layout_aware_blocks

        levels = len(config.channels)
        if len(config.attention_levels) != levels:
            raise ConfigError(f"attention_levels has {len(config.attention_levels)} entries, channels has {levels}")
        if conditioning.image_size % 2 ** (levels - 1):
            raise ConfigError(f"image size {conditioning.image_size} is not divisible by 2**{levels - 1} "
                              f"(the UNet has {levels} levels)")
        self.unet = DiffusionModelUNet(
            spatial_dims=2, in_channels=image_channels + conditioning.n_labels, out_channels=image_channels,
            channels=tuple(config.channels), attention_levels=tuple(config.attention_levels),
            num_res_blocks=config.num_res_blocks, norm_num_groups=config.norm_groups,
            num_head_channels=config.num_head_channels, use_flash_attention=config.use_flash_attention,
            num_class_embeds=1,  # creates MONAI's class-embedding slot; replaced by the factorised embedding below
        )
        time_embed_dim = config.channels[0] * 4  # MONAI's choice for the timestep embedding width
        self.unet.class_embedding = LabelEmbedding(conditioning, time_embed_dim)
        use_layout_aware_blocks(self.unet)  # the same network, faster in the channels-last inference layout

    def forward(self, x: torch.Tensor, t: torch.Tensor, onehot: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([x, onehot.to(x.dtype)], dim=1), t, class_labels=labels)


class UNetGenerator(Generator, abc.ABC):
    """Shared scaffold. Subclasses define the noising process (``training_target``, ``fixed_level_target``) and
    the sampler (``integrate``); the network sees time as ``model_time`` (a float in [0, 1000])."""

    Config = UNetConfig

    def __init__(self, config: UNetConfig, conditioning: Conditioning) -> None:
        if config.guidance_scale != 1.0 and config.label_dropout <= 0 and config.mask_dropout <= 0:
            raise ConfigError(f"{self.name}: guidance_scale {config.guidance_scale} needs an unconditional model; "
                              "set label_dropout and/or mask_dropout > 0")
        super().__init__(config, conditioning)
        self.nets = {"unet": ConditionalUNet(config, conditioning)}

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return unet_profiles().get(profile, {})

    @classmethod
    def train_overrides(cls, profile: str) -> dict[str, Any]:
        return dict(UNET_TRAIN_OVERRIDES.get(profile, {}))

    def ema_networks(self) -> tuple[str, ...]:
        return ("unet",)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        # foreach: one multi-tensor update instead of torch's CPU default, a Python loop over the parameters; the
        # same arithmetic (bitwise equal weights) in three quarters of the optimizer time
        return {"unet": torch.optim.AdamW(self.nets["unet"].parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay, foreach=True)}

    # ------------------------------------------------------------------ family-specific parts
    @abc.abstractmethod
    def training_target(self, x_data: torch.Tensor, noise: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random-time training triple ``(x_t, model_time, target)`` for a batch."""

    @abc.abstractmethod
    def fixed_level_target(self, x_data: torch.Tensor, noise: torch.Tensor, level: float
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same triple at a fixed noise level (0 = data, 1 = noise), for membership signals."""

    @abc.abstractmethod
    def integrate(self, noise: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                  steps: int) -> torch.Tensor:
        """Run the sampler from pure noise to an image; ``predict(x, model_time)`` is the guided network."""

    @abc.abstractmethod
    def level_coefficients(self, level: float) -> tuple[float, float, float]:
        """``(a, b, model_time)`` such that the noisy image at ``level`` is ``a * x0 + b * noise``."""

    @abc.abstractmethod
    def split_prediction(self, output: torch.Tensor, x: torch.Tensor, level: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output at ``level`` turned into its estimates ``(x0_hat, noise_hat)``."""

    # ------------------------------------------------------------------ denoiser view, used by SecMI and PIA
    @torch.no_grad()
    def forward_noise(self, x0: torch.Tensor, level: float, noise: torch.Tensor) -> torch.Tensor:
        """The forward process at a noise level in [0, 1] (0 = data), with the given noise."""
        a, b, _ = self.level_coefficients(level)
        return a * x0 + b * noise

    @_fast_cpu_inference
    @torch.no_grad()
    def predict_x0_and_noise(self, x: torch.Tensor, level: float, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The (conditional, unguided) model's split of a noisy image at ``level`` into data and noise estimates;
        ``forward_noise(*predict_x0_and_noise(x, a, batch), b)`` is then one deterministic DDIM step a → b."""
        device = network_device(self.nets["unet"])
        cond = Condition.build(batch.masks, batch.vendor, batch.pathology, self.conditioning, device)
        _, _, model_time = self.level_coefficients(level)
        x = x.to(device)
        output = self._predict(x, torch.full((x.shape[0],), model_time, device=device), cond).float()
        return self.split_prediction(output, x, level)

    def loss_weights(self, model_time: torch.Tensor) -> torch.Tensor:
        """Per-example weight of the training loss at ``model_time`` (B,); uniform unless a family overrides it."""
        return torch.ones_like(model_time, dtype=torch.float32)

    # ------------------------------------------------------------------ shared
    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.nets["unet"](x, t, cond.onehot, cond.labels)

    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        batch = batch.to(runner.device)
        cond = Condition.build(batch.masks, batch.vendor, batch.pathology, self.conditioning)
        cond = cond.dropped(self.conditioning, self.config.label_dropout, self.config.mask_dropout)
        x_t, t, target = self.training_target(batch.images, torch.randn_like(batch.images))
        with runner.autocast():
            prediction = self._predict(x_t, t, cond)
        per_example = ((prediction.float() - target) ** 2).flatten(1).mean(dim=1)
        loss = (per_example * self.loss_weights(t)).mean()
        runner.optimize("unet", loss)
        return {"loss": float(loss.detach())}

    @_fast_cpu_inference
    @torch.no_grad()
    def sample(self, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        device = network_device(self.nets["unet"])
        cond = Condition.build(masks, vendor, pathology, self.conditioning, device)
        uncond = cond.null(self.conditioning, drop_mask=self.config.mask_dropout > 0)
        size = masks.shape[-1]
        noise = seeded_normal((len(cond), 1, size, size), generator, device)  # drawn once: chunking-independent
        out = []
        for start in range(0, len(cond), self.config.sample_batch):
            stop = start + self.config.sample_batch
            c, u = cond.chunk(start, stop), uncond.chunk(start, stop)

            def predict(x: torch.Tensor, t: torch.Tensor, c: Condition = c, u: Condition = u) -> torch.Tensor:
                return guided(self._predict, x, t, c, u, self.config.guidance_scale).float()

            out.append(self.integrate(noise[start:stop], predict, self.config.sample_steps))
        return torch.cat(out).clamp(-1.0, 1.0).to(masks.device)

    @_fast_cpu_inference
    @torch.no_grad()
    def membership_signal(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Negative per-example loss at each fixed noise level (Carlini et al. 2023, "Extracting Training Data
        from Diffusion Models"; Matsumoto et al. 2023): members are denoised better. Names ``neg_loss_t0.10``,
        where t is the noise level (fraction of the way from data to noise) for both families."""
        device = network_device(self.nets["unet"])
        batch = batch.to(device)
        cond = Condition.build(batch.masks, batch.vendor, batch.pathology, self.conditioning)
        signals = {}
        for level in self.config.signal_levels:
            noise = seeded_normal(tuple(batch.images.shape), generator, device)
            x_t, t, target = self.fixed_level_target(batch.images, noise, level)
            error = (self._predict(x_t, t, cond).float() - target) ** 2
            signals[f"neg_loss_t{level:.2f}"] = -error.flatten(1).mean(dim=1)
        return signals
