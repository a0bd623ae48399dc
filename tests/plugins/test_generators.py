"""Every registered generator: the plugin contract, training through the real loop with and without DP, sampling,
determinism, checkpoint round trips and Opacus per-example gradients."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from cmraudit.api import Batch, Conditioning
from cmraudit.registry import registered
from cmraudit.testing import check_generator
from cmraudit.testing.tiny import PlainRunner, tiny_table, train_steps

GENERATORS = sorted(registered("generators"))
BUILT_IN = ("diffusion", "flow", "gan", "vae")


@pytest.fixture(scope="module")
def table():
    """Smoke-size data: 8 patients x 2 slices at 16 px (a phantom-like stencil with per-patient contrast)."""
    return tiny_table(n_patients=8, slices_per_patient=2, image_size=16, seed=1)


def build(name: str, image_size: int = 16, profile: str = "smoke", seed: int = 0, **overrides):
    cls = registered("generators")[name]
    torch.manual_seed(seed)
    return cls(cls.make_config(profile, overrides), Conditioning(image_size))


def sample(gen, batch: Batch, seed: int = 0) -> torch.Tensor:
    return gen.sample(batch.masks, batch.vendor, batch.pathology, generator=torch.Generator().manual_seed(seed))


def test_built_in_generators_are_registered():
    gens = registered("generators")
    assert set(BUILT_IN) <= set(gens)
    for name in BUILT_IN:
        assert gens[name].name == name and gens[name].family == name
        assert gens[name].has_membership_signal()


@pytest.mark.parametrize("name", GENERATORS)
def test_contract(name):
    """Shapes, range, finiteness, seed determinism, Opacus compatibility and membership signals (cmraudit.testing)."""
    check_generator(registered("generators")[name], "smoke", image_size=16, steps=2)


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_trains_through_the_loop_and_reloads_identically(name, dp, phantom_table_32, tmp_path):
    """Smoke-size phantom data through cmraudit.training.loop (patient-level DP when dp), then sample and reload."""
    from cmraudit.training.loop import TrainConfig, load_trained, train
    from cmraudit.training.privacy import DPConfig

    table = phantom_table_32
    cls = registered("generators")[name]
    gen = build(name, image_size=32)
    config = TrainConfig.for_profile("smoke", cls, {"steps": 3, "checkpoint_every": 3})
    result = train(gen, table, config, tmp_path, dp=DPConfig(noise_multiplier=1.0) if dp else None)
    assert result.steps == 3 and all(np.isfinite(v) for v in result.logs.values())
    assert (result.dp is not None) == dp

    batch = Batch.from_table(table, np.arange(6))
    images = sample(gen, batch, seed=3)
    assert images.shape == (6, 1, 32, 32) and torch.isfinite(images).all()
    assert images.min() >= -1 and images.max() <= 1
    assert not torch.equal(images, sample(gen, batch, seed=4)), "a different seed must give different images"

    reloaded = load_trained(tmp_path, name)
    assert torch.equal(images, sample(reloaded, batch, seed=3))


@pytest.mark.parametrize("name", GENERATORS)
def test_state_dict_round_trip_gives_identical_samples_and_signals(name, table, tmp_path):
    gen = build(name, seed=0)
    train_steps(gen, table, 2, batch_size=4)
    gen.eval()
    path = tmp_path / "nets.pt"
    torch.save({n: net.state_dict() for n, net in gen.nets.items()}, path)
    fresh = build(name, seed=123)  # different initial weights, overwritten by the load
    for n, sd in torch.load(path, weights_only=True).items():
        fresh.nets[n].load_state_dict(sd)
    fresh.eval()
    batch = Batch.from_table(table, np.arange(5))
    assert torch.equal(sample(gen, batch, 7), sample(fresh, batch, 7))
    if gen.has_membership_signal():
        a = gen.membership_signal(batch, generator=torch.Generator().manual_seed(1))
        b = fresh.membership_signal(batch, generator=torch.Generator().manual_seed(1))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", BUILT_IN)
def test_samples_depend_on_mask_and_labels(name, table):
    """The conditioning is wired to the output: the same noise with another stencil or another vendor differs.
    (Two training steps first: MONAI's UNet starts with a zero output layer, ignoring every input.)"""
    gen = build(name)
    train_steps(gen, table, 2, batch_size=4)
    gen.eval()
    batch = Batch.from_table(table, np.arange(4))
    base = sample(gen, batch)
    other_masks = torch.roll(batch.masks, shifts=5, dims=-1)
    assert not torch.allclose(base, gen.sample(other_masks, batch.vendor, batch.pathology,
                                               generator=torch.Generator().manual_seed(0)))
    other_vendor = (batch.vendor + 1) % 4
    assert not torch.allclose(base, gen.sample(batch.masks, other_vendor, batch.pathology,
                                               generator=torch.Generator().manual_seed(0)))


WITH_ATTENTION = {"attention_levels": (False, True)}  # the standard profile's attention blocks, at smoke size


@pytest.mark.parametrize("name,overrides", [*[(n, {}) for n in BUILT_IN], ("diffusion", WITH_ATTENTION)],
                         ids=[*BUILT_IN, "diffusion-attention"])
@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_per_example_gradients_add_up_to_the_batch_gradient(name, overrides, mode, table):
    """Under Opacus every private network gets per-example gradients whose mean is the batch gradient, so no example
    is dropped or counted twice (the GAN discriminator sees each example twice: real, and fake from its mask)."""
    from opacus.grad_sample import GradSampleModule

    from cmraudit.training.step_runner import fold_grad_samples

    gen = build(name, **overrides)
    for n in gen.private_networks():
        gen.nets[n] = GradSampleModule(gen.nets[n], loss_reduction="mean", force_functorch=mode == "functorch")
    checked: list[str] = []

    def after_backward(network: str) -> None:
        module = gen.nets[network]._module
        fold_grad_samples(module, 4, network)
        for pname, p in module.named_parameters():
            if p.grad is not None:
                assert p.grad_sample.shape == (4, *p.shape), pname
                torch.testing.assert_close(p.grad_sample.mean(0), p.grad, rtol=1e-4, atol=1e-6, msg=pname)
        checked.append(network)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        gen.train()
        runner = PlainRunner(gen, gen.make_optimizers(), after_backward=after_backward)
        gen.training_step(Batch.from_table(table, np.arange(4)), runner)
    assert set(checked) == set(gen.private_networks())


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("profile,size", [("smoke", 32), ("quick", 64), ("standard", 128)])
def test_profiles_build_opacus_valid_networks(name, profile, size):
    from opacus.validators import ModuleValidator

    gen = build(name, image_size=size, profile=profile)
    for n in gen.private_networks():
        assert ModuleValidator.validate(gen.nets[n], strict=False) == [], (name, profile, n)
    cls = registered("generators")[name]
    # the loop's own settings only (TrainConfig.for_profile refuses others); seed and device stay the run's
    from cmraudit.training.loop import TrainConfig

    assert set(cls.train_overrides(profile)) <= {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "device"}
    TrainConfig.for_profile(profile, cls)


def test_gan_protects_both_networks():
    gen = build("gan")
    assert set(gen.private_networks()) == {"generator", "discriminator"}
    assert build("diffusion").ema_networks() == ("unet",) and build("flow").ema_networks() == ("unet",)


def test_membership_signal_names():
    batch = Batch.from_table(tiny_table(n_patients=2, image_size=16), np.arange(3))
    names = {n: set(build(n).membership_signal(batch, torch.Generator().manual_seed(0))) for n in BUILT_IN}
    assert names["diffusion"] == names["flow"] == {"neg_loss_t0.10", "neg_loss_t0.50"}  # smoke levels
    assert names["vae"] == {"elbo", "neg_recon"} and names["gan"] == {"disc_logit"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", BUILT_IN)
def test_cuda_training_with_amp_and_seeded_sampling(name, table, tmp_path):
    from cmraudit.training.loop import TrainConfig, train

    cls = registered("generators")[name]
    gen = build(name)
    config = TrainConfig.for_profile("smoke", cls, {"steps": 3, "checkpoint_every": 3, "device": "cuda", "amp": True})
    result = train(gen, table, config, tmp_path)
    assert all(np.isfinite(v) for v in result.logs.values())
    batch = Batch.from_table(table, np.arange(4)).to("cuda")
    images = sample(gen, batch, seed=5)  # a CPU torch.Generator: the same noise as on a CPU run
    assert images.device.type == "cuda" and torch.isfinite(images).all()
    torch.testing.assert_close(images, sample(gen, batch, seed=5), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------- fast DP path
def _one_dp_step(name: str, overrides: dict, mode: str, table) -> dict[str, torch.Tensor]:
    from dp_helpers import parameters_after_one_dp_step

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="In CPU autocast")
        return parameters_after_one_dp_step(build(name, **overrides), Batch.from_table(table, np.arange(4)), mode)


@pytest.mark.parametrize("name,overrides", [*[(n, {}) for n in BUILT_IN], ("diffusion", WITH_ATTENTION)],
                         ids=[*BUILT_IN, "diffusion-attention"])
def test_fast_dp_step_equals_stock_opacus(name, overrides, table):
    """The fast path (no discarded weight gradients, grouped-convolution and factored Linear per-example gradients)
    clips and sums exactly what Opacus' stock hooks do, on every built-in network."""
    fast = _one_dp_step(name, overrides, "fast", table)
    stock = _one_dp_step(name, overrides, "hooks", table)
    before = build(name, **overrides)
    for net, after in fast.items():
        reference = torch.cat([p.detach().flatten() for p in before.nets[net].parameters()])
        if net in before.private_networks():
            assert (after - reference).abs().max() > 1e-4, net  # the step moved the network
        torch.testing.assert_close(after, stock[net], rtol=1e-4, atol=1e-6, msg=net)


def test_fast_path_skips_the_weight_gradients_dp_throws_away(table):
    """Inside a private network only layers fed by gradient-free inputs (the first convolution, embeddings) get
    ordinary weight gradients; every other layer gets per-example gradients alone."""
    from cmraudit.plugins._conditioning import Condition

    from cmraudit.training.grad_sample import FactoredGrad, FastGradSampleModule

    gen = build("vae")
    net = FastGradSampleModule(gen.nets["vae"])
    batch = Batch.from_table(table, np.arange(4))
    cond = Condition.build(batch.masks, batch.vendor, batch.pathology, gen.conditioning)
    x_hat, mu, logvar = net(batch.images, cond.onehot, cond.labels, torch.randn(4, gen.config.latent_dim))
    (x_hat.square().mean() + mu.square().mean() + logvar.square().mean()).backward()
    inner = net._module
    first_conv = inner.encoder[0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad_sample is not None
    for module in (inner.encoder[1][0], inner.to_posterior, inner.from_latent, inner.decoder[0][0], inner.to_image):
        assert module.weight.grad is None, module
        assert module.weight.grad_sample is not None, module
    assert isinstance(inner.from_latent.weight.grad_sample, FactoredGrad)
    assert all(p.requires_grad for p in inner.parameters())  # trainable again after every forward call
