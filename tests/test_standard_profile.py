"""The GPU "standard" profile on the CPU: every built-in generator builds with its standard config at the standard
image size (128 px), takes a training step through the loop's runner with the standard TrainConfig (its gradient
clip, EMA and, for the UNets, accumulated passes), and samples.

Kept fast by tiny batches (1-2 examples) and, for sampling only, 1 sampler step instead of the profile's 25: the
networks, image size and conditioning stay the profile's. The standard DP diffusion step (Opacus with the flash
attention of the standard UNet) is checked too, and flash attention is checked to give the same DP step as MONAI's
explicit attention.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cmraudit.api import Batch, Conditioning
from cmraudit.registry import registered
from cmraudit.run.config import PROFILE_IMAGE_SIZE
from cmraudit.testing.tiny import tiny_table
from cmraudit.training.accumulation import accumulated_step
from cmraudit.training.loop import TrainConfig
from cmraudit.training.step_runner import EMA, LoopRunner

BUILT_IN = ("gan", "vae", "diffusion", "flow")
SIZE = PROFILE_IMAGE_SIZE["standard"]


@pytest.fixture(scope="module")
def table():
    return tiny_table(n_patients=2, slices_per_patient=1, image_size=SIZE, seed=3)


def _build(name: str, **overrides):
    cls = registered("generators")[name]
    torch.manual_seed(0)
    return cls(cls.make_config("standard", overrides), Conditioning(SIZE))


def _runner(gen, config: TrainConfig) -> LoopRunner:
    gen.train()
    return LoopRunner(gen, gen.make_optimizers(), torch.device("cpu"), None, config.grad_clip,
                      EMA({n: gen.nets[n] for n in gen.ema_networks()}, config.ema_decay))


def _parameters(gen) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for net in gen.nets.values() for p in net.parameters()])


def test_standard_defaults_fit_a_24_gb_gpu():
    """The defaults docs/gpu.md derives from the memory benchmark: global batch 64 everywhere, UNets in two passes
    of 32 (DP: expected Poisson batch 32), flash attention in the UNets."""
    for name in BUILT_IN:
        cls = registered("generators")[name]
        config = TrainConfig.for_profile("standard", cls)
        assert config.batch_size == 64 and config.steps == 20000
        unet = name in ("diffusion", "flow")
        assert config.micro_batch == (32 if unet else 0)
        assert config.private_batch() == (32 if unet else 64)
        if unet:
            assert cls.make_config("standard", {}).use_flash_attention


@pytest.mark.parametrize("name", BUILT_IN)
def test_standard_generator_trains_and_samples_at_128_px(name, table):
    gen = _build(name)
    cls = type(gen)
    # the standard TrainConfig, with passes of 1 so that a UNet's 2-example batch is an accumulated step
    config = TrainConfig.for_profile("standard", cls, {"micro_batch": 1} if TrainConfig.for_profile(
        "standard", cls).micro_batch else {})
    runner = _runner(gen, config)
    batch = Batch.from_table(table)
    before = _parameters(gen)
    runner.begin_step(len(batch))
    passes = [Batch.from_table(table, [i]) for i in range(len(batch))] if config.micro_batch else [batch]
    logs = accumulated_step(gen, runner, passes)
    assert logs and all(np.isfinite(v) for v in logs.values())
    assert not torch.equal(before, _parameters(gen)), "the step must update the weights"

    gen.eval()
    if hasattr(gen.config, "sample_steps"):
        gen.config.sample_steps = 1  # sampling cost only; the network is the profile's
    images = gen.sample(batch.masks[:1], batch.vendor[:1], batch.pathology[:1],
                        generator=torch.Generator().manual_seed(0))
    assert images.shape == (1, 1, SIZE, SIZE) and torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1


def test_standard_dp_diffusion_step(table):
    """The default run's DP diffusion model on the standard profile: Opacus' per-example gradients through the
    standard UNet (flash attention at the two coarsest levels) at a 2-example batch."""
    gen = _build("diffusion")
    config = TrainConfig.for_profile("standard", type(gen))
    runner = _runner(gen, config)
    runner.make_private(gen.private_networks(), 1.0, 1.0, 2.0, "fast")
    before = _parameters(gen)
    batch = Batch.from_table(table)
    runner.begin_step(len(batch))
    try:
        logs = gen.training_step(batch, runner)
    finally:
        runner.release()
    assert np.isfinite(logs["loss"]) and not torch.equal(before, _parameters(gen))


def test_flash_attention_gives_the_same_dp_step():
    """Flash attention changes how attention is computed, not what: the same clipped per-example gradients and
    update as MONAI's explicit attention (at smoke size, with attention at the UNet's coarse level)."""
    from dp_helpers import parameters_after_one_dp_step

    batch = Batch.from_table(tiny_table(n_patients=2, slices_per_patient=2, image_size=16), np.arange(4))
    steps = {}
    for flash in (False, True):
        cls = registered("generators")["diffusion"]
        torch.manual_seed(0)
        gen = cls(cls.make_config("smoke", {"attention_levels": (False, True), "use_flash_attention": flash}),
                  Conditioning(16))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="In CPU autocast")
            steps[flash] = parameters_after_one_dp_step(gen, batch, "fast")
    torch.testing.assert_close(steps[True]["unet"], steps[False]["unet"], rtol=1e-4, atol=1e-5)
