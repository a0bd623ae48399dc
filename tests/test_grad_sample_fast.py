"""The fast DP path's normalisation-layer per-example gradients and its copy-free clipping, against references."""
from __future__ import annotations

import pytest
import torch
from tiny_generator import TinyDenoiser, build, tiny_table
from torch import nn

from cmraudit.training.grad_sample import FastDPOptimizer, norm_grad_sample


@pytest.mark.parametrize("layer, shape, channels_last", [
    (nn.GroupNorm(4, 8), (3, 8, 10, 12), False),
    (nn.GroupNorm(4, 8), (3, 8, 10, 12), True),
    (nn.GroupNorm(2, 6), (3, 6, 17), False),
    (nn.InstanceNorm2d(5, affine=True), (4, 5, 9, 9), False),
])
def test_norm_per_example_gradients_match_opacus(layer, shape, channels_last):
    from opacus.grad_sample import GradSampleModule

    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial affine parameters, so a formula that ignored them would show
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    x = torch.randn(shape) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    backprops = torch.randn(shape)
    reference = GradSampleModule.GRAD_SAMPLERS[type(layer)](layer, [x.contiguous()], backprops)
    got = norm_grad_sample(layer, [x], backprops)
    assert got.keys() == reference.keys()
    for p in reference:
        torch.testing.assert_close(got[p], reference[p], rtol=1e-5, atol=1e-5)


def test_clipping_applies_the_row_scale_to_norms_and_sums():
    """``grad_sample_scale`` s stands for per-example gradients s times larger: norms and the clipped sum must be
    those of the scaled tensors (the scale decides which examples are clipped)."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(4))]
    size = torch.tensor([0.02, 0.05, 1.0, 2.0, 0.3])  # small examples stay unclipped, large ones are clipped
    samples = [torch.randn(5, 3, 2) * size[:, None, None], torch.randn(5, 4) * size[:, None]]
    scales = [5.0, 1.0]
    optimizer = FastDPOptimizer(torch.optim.SGD(params, lr=1.0), noise_multiplier=0.0, max_grad_norm=2.0,
                                expected_batch_size=5, loss_reduction="sum")
    for p, sample, scale in zip(params, samples, scales):
        p.grad_sample, p.grad_sample_scale = sample, scale
    optimizer.clip_and_accumulate()
    scaled = [sample * scale for sample, scale in zip(samples, scales)]
    norms = torch.sqrt(sum(s.flatten(1).pow(2).sum(1) for s in scaled))
    clip = (2.0 / (norms + 1e-6)).clamp(max=1.0)
    assert (clip < 1).any() and (clip == 1).any()  # some examples clipped, some not
    for p, s in zip(params, scaled):
        torch.testing.assert_close(p.summed_grad, torch.einsum("i,i...->...", clip, s))


def test_fast_step_matches_hooks_with_instance_norm():
    """A whole DP step through a network with an affine InstanceNorm: the fast mode's update equals Opacus'."""
    from dp_helpers import parameters_after_one_dp_step

    from cmraudit.api import Batch

    def with_instance_norm() -> TinyDenoiser:
        gen = build(TinyDenoiser)
        gen.nets["net"].norm = nn.InstanceNorm2d(gen.nets["net"].mid.in_channels, affine=True)
        return gen

    batch = Batch.from_table(tiny_table(), list(range(6)))
    fast = parameters_after_one_dp_step(with_instance_norm(), batch, "fast")
    hooks = parameters_after_one_dp_step(with_instance_norm(), batch, "hooks")
    for name in fast:
        assert torch.allclose(fast[name], hooks[name], atol=1e-6)
