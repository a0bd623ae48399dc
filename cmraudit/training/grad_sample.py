"""Faster exact per-example gradients for Opacus: conv and Linear samplers, no discarded weight gradients.

Opacus' default Conv2d grad sampler unfolds every activation (im2col, a k²-times larger copy) and runs one small
matrix product per example; on CPU that costs 5-7x the layer's ordinary weight gradient and made DP steps of conv
UNets 2-3x slower than non-DP ones. Rochette, Manoel & Tramel ("Efficient Per-Example Gradient Computations in
Convolutional Neural Networks", 2019) observe that the per-example weight gradients of a convolution are the weight
gradient of *one* grouped convolution in which the batch is folded into the channels (groups = N x groups); torch's
own ``convolution_backward`` then computes them at about the cost of the ordinary weight gradient for layers with
large feature maps whose channel counts fill oneDNN's vector blocks (multiples of 16). For other channel counts
(a mask concatenated to the features gives 20 or 36) one dense weight gradient per example is 2-8x faster on CPU,
and Opacus' unfold stays fastest for small maps (8x8 and below). All give the same per-example gradients
(checked against Opacus in the tests).

``FastGradSampleModule`` also leaves the backprops unscaled (Opacus' ``loss_reduction="mean"`` multiplies every
layer's output gradient, an activation-sized tensor, by the batch size) and applies that factor to the much
smaller per-example gradients in ``runner.fold_grad_samples`` instead; and it stores each layer's per-example
gradients as computed instead of copying them into a freshly zeroed buffer first.

Finally, it stops autograd from computing the ordinary (summed) weight gradients that DP-SGD throws away: while a
layer whose input already requires a gradient runs its forward pass, its parameters are marked as not requiring
one, so the recorded backward node computes the input gradient only; they require gradients again as soon as the
forward call returns (before the backward pass, the optimiser step and the next forward). The per-example
gradients come from the hooks, which need only the layer's input and output gradient. Layers fed by tensors that
need no gradient (the first convolution, embeddings) keep their parameters trainable, since otherwise no gradient
would reach them at all. This removes roughly a third of a conv net's backward FLOPs from every DP step.

Linear layers on (batch, features) inputs keep their per-example gradients factored ("ghost clipping", Goodfellow
2015, "Efficient Per-Example Gradient Computations"; Li et al. 2022, "Large Language Models Can Be Strong
Differentially Private Learners"; Bu et al. 2023, "Differentially Private Optimization on Large Model at Small
Cost"): example i's gradient is the outer product g_i a_iᵀ of its output gradient and input, so its norm is
‖g_i‖·‖a_i‖ and the clipped sum Σ c_i g_i a_iᵀ is one matrix product. The (batch, out, in) tensor of per-example
gradients (for the VAE's and GAN's latent projections, the largest per-example tensors of those networks) is never
built, written, normed and summed. ``FastDPOptimizer`` clips such ``FactoredGrad`` samples and ordinary ones
together.

GroupNorm and InstanceNorm layers get their per-example gradients from torch's own group norm and one fused
multiply-sum (``norm_grad_sample``) instead of Opacus' ``opt_einsum`` reductions, which cost several times the
elementwise work on CPU (the UNets have two dozen GroupNorms). And the clipping never copies the per-example
gradients: the row count Opacus would have multiplied into them travels as ``p.grad_sample_scale`` and is applied
to the norms and clip factors; each parameter's (B, P) block is normed by one reduction and its clipped sum is one
matrix-vector product.

The module is over 300 lines because the samplers, the module that calls them and the optimiser that consumes
their outputs share two conventions (``FactoredGrad`` samples, unscaled samples with ``grad_sample_scale``) that
only make sense together.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.grad_sample.grad_sample_module import promote_current_grad_sample
from opacus.grad_sample.linear import compute_linear_grad_sample
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn
from torch.nn import functional as F


class FactoredGrad:
    """Per-example gradients of a Linear weight as factors: a (R, B, in) inputs and g (R, B, out) output gradients.

    Example i's gradient is Σ_r g[r, i]ᵀ a[r, i], one term per block of rows in which it appeared (a GAN
    discriminator sees each example twice, real and fake). ``len`` is the batch size B, as for a tensor sample.
    """

    def __init__(self, a: torch.Tensor, g: torch.Tensor) -> None:
        self.a, self.g = a, g

    def __len__(self) -> int:
        return self.a.shape[1]

    def squared_norms(self) -> torch.Tensor:
        """‖Σ_r g_rᵀ a_r‖²_F per example, = Σ_{r,s} (a_r·a_s)(g_r·g_s): (B,)."""
        a, g = self.a.float(), self.g.float()
        if a.shape[0] == 1:
            return a[0].pow(2).sum(1) * g[0].pow(2).sum(1)
        return (torch.einsum("rbi,sbi->brs", a, a) * torch.einsum("rbo,sbo->brs", g, g)).sum((1, 2))

    def weighted_sum(self, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Σ_i w_i · gradient_i, shaped like the weight (out, in): one matrix product."""
        g = (self.g.to(dtype) * weights.to(dtype)[None, :, None]).flatten(0, 1)
        return g.T @ self.a.to(dtype).flatten(0, 1)

    def materialise(self) -> torch.Tensor:
        """The (B, out, in) per-example gradients, summed over blocks (tests and debugging)."""
        return torch.einsum("rbo,rbi->boi", self.g.float(), self.a.float())

    def per_row(self) -> torch.Tensor:
        """One (out, in) gradient per row of every block, (R·B, out, in): for folding with ordinary samples."""
        return torch.einsum("ro,ri->roi", self.g.flatten(0, 1), self.a.flatten(0, 1))


def linear_grad_sample(layer: nn.Linear, activations: List[torch.Tensor],
                       backprops: torch.Tensor) -> Dict[nn.Parameter, object]:
    """Linear on (batch, features): factored weight gradients, bias gradients as rows. Other shapes: Opacus."""
    a = activations[0]
    if a.dim() != 2:
        return compute_linear_grad_sample(layer, activations, backprops)
    out: Dict[nn.Parameter, object] = {}
    if layer.weight.requires_grad:
        out[layer.weight] = FactoredGrad(a.unsqueeze(0), backprops.unsqueeze(0))
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops
    return out


def grouped_conv2d_grad_sample(layer: nn.Conv2d, activations: List[torch.Tensor],
                               backprops: torch.Tensor) -> Dict[nn.Parameter, torch.Tensor]:
    """Per-example Conv2d gradients as the weight gradient of one grouped convolution (batch folded into groups)."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    out: Dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        folded_weight = layer.weight.detach().to(backprops.dtype).repeat(n, 1, 1, 1)
        _, grad_weight, _ = torch.ops.aten.convolution_backward(
            backprops.reshape(1, -1, *backprops.shape[2:]), x.reshape(1, -1, *x.shape[2:]), folded_weight, None,
            layer.stride, layer.padding, layer.dilation, False, [0, 0], n * layer.groups, [False, True, False])
        out[layer.weight] = grad_weight.view(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


def looped_conv2d_grad_sample(layer: nn.Conv2d, activations: List[torch.Tensor],
                              backprops: torch.Tensor) -> Dict[nn.Parameter, torch.Tensor]:
    """Per-example Conv2d gradients as N ordinary weight gradients of one example each (a dense convolution per
    call, no im2col copy): the fastest CPU route for channel counts that oneDNN's grouped kernels handle badly."""
    x = activations[0].to(backprops.dtype)
    out: Dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        weight = layer.weight.detach().to(backprops.dtype)
        out[layer.weight] = torch.stack([torch.ops.aten.convolution_backward(
            backprops[i:i + 1], x[i:i + 1], weight, None, layer.stride, layer.padding, layer.dilation, False,
            [0, 0], layer.groups, [False, True, False])[1] for i in range(x.shape[0])])
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dim=(2, 3))
    return out


#: below this many output positions per feature map, Opacus' unfold beats the other routes on CPU
#: (measured: 128 channels at 8x8 output, unfold 1.1-2x faster; 16x16 and larger, grouped or looped 1.3-3x faster)
GROUPED_MIN_POSITIONS = 128
#: oneDNN's grouped convolution is fast only when every group's channels fill its vector blocks; for other counts
#: (the 4, 5, 20, 36 or 68 channels of a mask-concatenated input) it is 2-8x slower than one dense call per example
GROUPED_CHANNEL_MULTIPLE = 16


def conv2d_grad_sample(layer: nn.Conv2d, activations: List[torch.Tensor],
                       backprops: torch.Tensor) -> Dict[nn.Parameter, torch.Tensor]:
    """Per-example gradients of a Conv2d's weight and bias: (N, *weight.shape) and (N, out_channels).

    Opacus' unfold for feature maps under GROUPED_MIN_POSITIONS output positions; the grouped convolution when the
    channels per group are multiples of GROUPED_CHANNEL_MULTIPLE (always on GPUs, where N separate launches would
    cost more); one dense weight gradient per example otherwise.
    The rule depends on the layer's shape only, never on timings, so a run computes bit-identical gradients
    however often it resumes.
    """
    x = activations[0]
    if (isinstance(layer.padding, str) or layer.padding_mode != "zeros" or x.shape[0] == 0
            or backprops.shape[2] * backprops.shape[3] < GROUPED_MIN_POSITIONS):
        # Opacus' unfold (small maps, rare layouts); it silently returns wrong gradients for inputs with
        # permuted strides (channels-last), so it only ever sees contiguous ones
        return compute_conv_grad_sample(layer, [x.contiguous(), *activations[1:]], backprops.contiguous())
    per_group = (layer.in_channels // layer.groups, layer.out_channels // layer.groups)
    if x.device.type != "cpu" or all(c % GROUPED_CHANNEL_MULTIPLE == 0 for c in per_group):  # GPUs: one launch
        return grouped_conv2d_grad_sample(layer, activations, backprops)
    return looped_conv2d_grad_sample(layer, activations, backprops)


def norm_grad_sample(layer: nn.Module, activations: List[torch.Tensor],
                     backprops: torch.Tensor) -> Dict[nn.Parameter, torch.Tensor]:
    """Per-example gradients of an affine GroupNorm's (or InstanceNorm's: one group per channel) weight and bias.

    Example i's weight gradient is Σ_positions x̂_i · g_i per channel (x̂ the normalised input), its bias gradient
    Σ_positions g_i (Wu & He 2018, "Group Normalization", eq. 1-3). Opacus computes the same sums through
    ``opt_einsum`` reductions, which on CPU cost 5-10x the elementwise work; here x̂ is recomputed by torch's own
    group norm, multiplied by the output gradient in place (one activation-sized buffer, not two) and summed.
    """
    x = activations[0]
    groups = getattr(layer, "num_groups", None) or x.shape[1]  # InstanceNorm: every channel its own group
    dims = tuple(range(2, x.dim()))
    out: Dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight is not None and layer.weight.requires_grad:
        normalised = F.group_norm(x.to(backprops.dtype), groups, eps=layer.eps)
        out[layer.weight] = normalised.mul_(backprops).sum(dims)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dims)
    return out


class FastGradSampleModule(GradSampleModule):
    """Opacus' hooks-based GradSampleModule with the grouped-convolution Conv2d sampler and unscaled backprops.

    Always built with ``loss_reduction="sum"``: the per-example gradients of the generator's mean loss come out
    1/rows too small, and ``fold_grad_samples(..., scale_by_rows=True)`` multiplies them back.
    """

    def __init__(self, module: nn.Module, *, strict: bool = True) -> None:
        super().__init__(module, batch_first=True, loss_reduction="sum", strict=strict)
        # an instance copy, so samplers Opacus registers later are still found for every other layer type
        self.GRAD_SAMPLERS = {**GradSampleModule.GRAD_SAMPLERS, nn.Conv2d: conv2d_grad_sample,
                              nn.Linear: linear_grad_sample, nn.GroupNorm: norm_grad_sample,
                              nn.InstanceNorm1d: norm_grad_sample, nn.InstanceNorm2d: norm_grad_sample,
                              nn.InstanceNorm3d: norm_grad_sample}
        for module in self.iterate_submodules(self._module):
            # prepended, so parameters require gradients again before Opacus' own forward hook looks at them
            self.autograd_grad_sample_hooks.append(module.register_forward_pre_hook(self._skip_weight_grads))
            self.autograd_grad_sample_hooks.append(module.register_forward_hook(_restore_weight_grads, prepend=True))

    def _skip_weight_grads(self, module: nn.Module, inputs) -> None:
        """Forward pre-hook: when an input already carries a gradient, record this call without weight gradients
        (the hooks will compute the per-example ones)."""
        if not (self.hooks_enabled and module.training and torch.is_grad_enabled()):
            return
        if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
            return  # nothing but the parameters would carry a gradient to this layer's output
        frozen = [p for p in module.parameters(recurse=False) if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        module._frozen_for_forward = frozen

    def capture_backprops_hook(self, module: nn.Module, _forward_input, forward_output, loss_reduction: str,
                               batch_first: bool) -> None:
        """Per-example gradients of ``module``'s parameters from its saved input and its output gradient.

        Same bookkeeping as Opacus (a module used k times in one forward pass sums its k contributions row by row;
        separate backward passes stack into a list), without rescaling the backprops and without zero-filled copies.
        """
        if not self.hooks_enabled:
            return
        activations = module.activations.pop()
        backprops = forward_output[0].detach()
        sampler = self.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
        for param, grad_sample in sampler(module, activations, backprops).items():
            if not param.requires_grad:
                continue
            current = getattr(param, "_current_grad_sample", None)
            if current is None:
                param._current_grad_sample = grad_sample  # may alias a backprop tensor: never modified in place
            elif isinstance(current, FactoredGrad):  # a Linear used again: its own rows, folded later
                param._current_grad_sample = [current, grad_sample]
            elif isinstance(current, list):
                current.append(grad_sample)
            else:  # the module ran more than once in this forward pass: sum row by row, padding the shorter
                rows = max(current.shape[0], grad_sample.shape[0])
                total = current.new_zeros((rows, *current.shape[1:])) if current.shape != grad_sample.shape else None
                if total is None:
                    param._current_grad_sample = current + grad_sample
                else:
                    total[: current.shape[0]] += current
                    total[: grad_sample.shape[0]] += grad_sample
                    param._current_grad_sample = total
        for p in _trainable(module):
            p._forward_counter -= 1
            if p._forward_counter == 0:
                promote_current_grad_sample(p)


def _restore_weight_grads(module: nn.Module, _inputs, _output) -> None:
    for p in module.__dict__.pop("_frozen_for_forward", ()):
        p.requires_grad_(True)


def _trainable(module: nn.Module):
    return (p for p in module.parameters() if p.requires_grad)


class FastDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer that also clips ``FactoredGrad`` per-example gradients (see the module docstring).

    Same mechanism: per-example norms over all parameters, clip factors min(1, C / (‖g_i‖ + 1e-6)), clipped sum,
    then Opacus' own Gaussian noise and scaling."""

    def _get_flat_grad_sample(self, p: torch.Tensor):
        if isinstance(getattr(p, "grad_sample", None), FactoredGrad):
            return p.grad_sample
        return super()._get_flat_grad_sample(p)

    @property
    def accumulated_iterations(self) -> int:
        counts = {len(p.grad_sample) if isinstance(p.grad_sample, list) else 1 for p in self.params}
        if len(counts) > 1:
            raise ValueError("parameters have per-example gradients from different numbers of backward passes")
        return counts.pop()

    def clip_and_accumulate(self) -> None:
        """Per-example norms and the clipped sum without copying the per-example gradients: each tensor sample is
        used as a (B, P) matrix, its norms by one reduction and its clipped sum by one matrix-vector product, with
        ``p.grad_sample_scale`` (see ``fold_grad_samples``) folded into the norms and the clip factors."""
        samples = self.grad_samples
        scales = [float(getattr(p, "grad_sample_scale", 1.0)) for p in self.params]
        if len(samples[0]) == 0:  # empty Poisson batch: noise only
            clip = torch.zeros((0,), device=samples[0].a.device if isinstance(samples[0], FactoredGrad)
                               else samples[0].device)
        else:
            squared = sum(s.squared_norms() if isinstance(s, FactoredGrad) else
                          torch.linalg.vector_norm(s.reshape(len(s), s[0].numel()), dim=1, dtype=torch.float32).square()
                          * scale ** 2 for s, scale in zip(samples, scales))
            clip = (self.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        for p, sample, scale in zip(self.params, samples, scales):
            if isinstance(sample, FactoredGrad):
                if getattr(sample, "_processed", False):
                    raise ValueError("per-example gradients clipped twice: call zero_grad() between steps")
                grad = sample.weighted_sum(clip.to(p.device), p.dtype)
                sample._processed = True
            else:
                _check_processed_flag(p.grad_sample)
                weights = clip.to(sample.device, p.dtype) * scale
                grad = (weights @ sample.to(p.dtype).reshape(len(sample), p.numel())).view_as(p)
                _mark_as_processed(p.grad_sample)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
