"""Layout-aware resnet blocks compute what MONAI's do: bitwise in training, to rounding in channels-last inference."""
from __future__ import annotations

import pytest
import torch
from cmraudit.plugins._channels_last import SMALL_MAP, ResnetBlock
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

from cmraudit.api import Conditioning
from cmraudit.registry import get


def _unet(size: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = get("generators", "diffusion")
    # smoke profile: two levels, so a 32-pixel input has a 16x16 map, small enough for the NCHW GroupNorm path
    return cls(cls.make_config("smoke", {}), Conditioning(size)).nets["unet"]


def _inputs(n: int = 4, size: int = 32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 4, (n, size, size), generator=g)
    onehot = torch.nn.functional.one_hot(masks, 4).permute(0, 3, 1, 2).float()
    return (torch.randn(n, 1, size, size, generator=g), torch.rand(n, generator=g) * 1000, onehot,
            torch.zeros(n, 4, dtype=torch.long))


def _blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, DiffusionUNetResnetBlock)]


def _use(net: torch.nn.Module, cls: type) -> None:
    for block in _blocks(net):
        block.__class__ = cls


def test_generator_unet_uses_layout_aware_blocks_with_monai_parameters():
    net = _unet()
    blocks = _blocks(net)
    assert blocks and all(type(b) is ResnetBlock for b in blocks)
    keys = list(net.state_dict())
    _use(net, DiffusionUNetResnetBlock)
    assert list(net.state_dict()) == keys


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """Every parameter moved at random: a fresh network's zero output convolution and unit GroupNorm scales would
    hide any difference."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _channels_last_outputs(dtype: torch.dtype, n: int = 32) -> dict[type, torch.Tensor]:
    net = _perturbed(_unet()).eval().to(memory_format=torch.channels_last)
    inputs = _inputs(n)
    outputs = {}
    for cls in (DiffusionUNetResnetBlock, ResnetBlock):
        _use(net, cls)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            outputs[cls] = net(*inputs).float()
    assert outputs[ResnetBlock].is_contiguous(memory_format=torch.channels_last)
    return outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_add_alone_is_bitwise_monai(dtype, monkeypatch):
    monkeypatch.setattr("cmraudit.plugins._channels_last.SMALL_MAP", 0)  # GroupNorm as MONAI calls it
    outputs = _channels_last_outputs(dtype)
    assert torch.equal(outputs[DiffusionUNetResnetBlock], outputs[ResnetBlock])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 0.03)])
def test_channels_last_inference_matches_monai_to_rounding(dtype, tolerance):
    outputs = _channels_last_outputs(dtype)
    reference = outputs[DiffusionUNetResnetBlock]
    assert reference.abs().max() > 0
    gap = (reference - outputs[ResnetBlock]).abs().max().item()
    # GroupNorm sums in another order: bf16 outputs (~2-3 significant digits) may move by a rounding step
    assert gap <= tolerance * max(1.0, reference.abs().max().item())


def test_small_map_group_norm_path_is_taken_and_exact():
    from cmraudit.plugins._channels_last import group_norm

    norm = torch.nn.GroupNorm(4, 16)
    x = torch.randn(3, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    assert 8 * 8 <= SMALL_MAP
    calls = []
    handle = norm.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        fast = group_norm(norm, x)
    assert not calls  # normalised through the functional NCHW path, not the module
    assert fast.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(fast, norm(x.contiguous()))
    calls.clear()
    group_norm(norm, x)  # with gradients on, the module itself runs (and its hooks, e.g. Opacus')
    assert calls == [1]
    handle.remove()


def test_training_forward_and_gradients_equal_monai():
    results = {}
    for cls in (DiffusionUNetResnetBlock, ResnetBlock):
        net = _perturbed(_unet()).train()
        _use(net, cls)
        out = net(*_inputs())
        out.square().mean().backward()
        results[cls] = (out.detach(), [p.grad.clone() for p in net.parameters()])
    (out_a, grads_a), (out_b, grads_b) = results.values()
    assert out_a.abs().max() > 0
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
