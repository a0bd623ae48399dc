"""DP configuration, calibration, accounting, patient-level Poisson sampling and the DP training path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_generator import TinyBatchNorm, TinyDenoiser, TinyPair, build, tiny_table
from torch import nn

from cmraudit.errors import ConfigError, PluginError
from cmraudit.training.loop import TrainConfig, train
from cmraudit.training.privacy import (
    DPConfig,
    PoissonSampler,
    calibrate,
    compose,
    epsilon_spent,
    make_accountant,
    releases_noise,
)
from cmraudit.training.step_runner import EMA, LoopRunner, fold_grad_samples

RECORD_KEYS = {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "accountant", "unit"}


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"), ({"epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one"),
    ({"epsilon": -1.0}, "epsilon"), ({"noise_multiplier": 1.0, "accountant": "gdpx"}, "accountant"),
    ({"noise_multiplier": 1.0, "unit": "voxel"}, "unit"), ({"noise_multiplier": 1.0, "max_grad_norm": 0}, "max_grad"),
])
def test_invalid_dp_config_is_refused_with_the_setting_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DPConfig(**kwargs).validate()


def test_delta_defaults_below_one_over_n_and_a_too_large_delta_is_refused():
    assert DPConfig(epsilon=1.0).for_units(40).delta == 1e-5
    assert DPConfig(epsilon=1.0).for_units(1_000_000).delta == pytest.approx(1e-7)
    with pytest.raises(ConfigError, match="not below 1/n"):
        DPConfig(epsilon=1.0, delta=0.05).for_units(40)


def test_calibrated_noise_is_the_smallest_that_reaches_the_target():
    accountant = "rdp"  # the PRV default is calibrated in the DP training run below
    dp = DPConfig(epsilon=4.0, accountant=accountant).for_units(50)
    sigma = calibrate(dp, sample_rate=0.2, steps=40)
    reached = epsilon_spent(accountant, [(sigma, 0.2, 40)], dp.delta)
    assert reached <= 4.0
    assert reached > 4.0 - 0.05  # binary search tolerance: not needlessly noisy
    assert epsilon_spent(accountant, [(sigma * 0.97, 0.2, 40)], dp.delta) > 4.0


def test_unreachable_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot reach"):
        calibrate(DPConfig(epsilon=1e-3).for_units(10), sample_rate=0.2, steps=5)


def test_record_has_exactly_the_results_json_keys_and_recomputes_epsilon():
    dp = DPConfig(noise_multiplier=1.2, accountant="rdp").for_units(30)
    record = dp.record(1.2, 0.25, 50)
    assert set(record) == RECORD_KEYS
    acc = make_accountant("rdp")
    for _ in range(50):
        acc.step(noise_multiplier=1.2, sample_rate=0.25)
    assert record["epsilon"] == pytest.approx(acc.get_epsilon(delta=dp.delta))


def test_trainings_on_the_same_units_compose_in_the_accountant():
    """Two trainings on the same patients: the accountant over both histories, which for two equal trainings is
    one training twice as long, between the larger single ε and their sum (basic composition)."""
    image = DPConfig(epsilon=8.0).for_units(24).record(1.33, 0.25, 50)
    masks = DPConfig(epsilon=8.0).for_units(24).record(2.0, 0.5, 30)
    joint = compose([image, image])
    assert joint["epsilon"] == pytest.approx(epsilon_spent("prv", [(1.33, 0.25, 100)], image["delta"]))
    assert image["epsilon"] < joint["epsilon"] < 2 * image["epsilon"]
    mixed = compose([image, masks])
    assert max(image["epsilon"], masks["epsilon"]) < mixed["epsilon"] < image["epsilon"] + masks["epsilon"]
    assert mixed["history"] == [[1.33, 0.25, 50], [2.0, 0.5, 30]] and mixed["delta"] == image["delta"]
    # different accountants or units, or a record without its steps: no joint accounting (basic composition stands)
    assert compose([image, {**masks, "accountant": "rdp"}]) is None
    assert compose([image, {**masks, "unit": "slice"}]) is None
    assert compose([image, {k: v for k, v in masks.items() if k != "steps"}]) is None


def test_releases_on_one_batch_compose_to_sqrt_k_sensitivity():
    # k Gaussian releases of sensitivity C and noise s*C equal one release of sensitivity sqrt(k)*C: sigma = s/sqrt(k)
    assert releases_noise(1.0, 1) == 1.0
    assert releases_noise(1.0, 4) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------------- sampling
def test_patient_poisson_sampling_takes_at_most_one_slice_per_patient_at_rate_q():
    table = tiny_table(n_patients=10, slices=4)
    sampler = PoissonSampler(table, expected_batch=3, unit="patient", generator=torch.Generator().manual_seed(0))
    assert sampler.n_units == 10 and sampler.sample_rate == pytest.approx(0.3)
    counts, sizes, slices_seen = np.zeros(10), [], set()
    for _ in range(2000):
        rows = sampler().numpy()
        patients = table.patients[rows]
        assert len(set(patients)) == len(patients)  # one slice per sampled patient
        counts += np.isin(table.patient_ids, patients)
        sizes.append(len(rows))
        slices_seen.update(rows.tolist())
    assert np.allclose(counts / 2000, 0.3, atol=0.05)  # each patient included with probability q
    assert min(sizes) == 0 and max(sizes) > 5  # Poisson, not fixed-size, batches
    assert slices_seen == set(range(len(table)))  # every slice of a patient can be drawn


def test_slice_level_sampling_is_over_slices():
    table = tiny_table(n_patients=5, slices=4)
    sampler = PoissonSampler(table, expected_batch=4, unit="slice", generator=torch.Generator().manual_seed(1))
    assert sampler.n_units == 20 and sampler.sample_rate == pytest.approx(0.2)
    batches = [sampler().numpy() for _ in range(500)]
    assert np.mean([len(b) for b in batches]) == pytest.approx(4, abs=0.4)
    # unlike patient-level sampling, one patient may contribute several slices to a step
    assert any(len(set(table.patients[b])) < len(b) for b in batches)


# --------------------------------------------------------------------------------------------------- DP mechanics
def test_folded_gradients_sum_blocks_before_clipping():
    p = nn.Parameter(torch.zeros(3))
    p.grad_sample = torch.arange(12.0).reshape(4, 3)  # two blocks of a batch of 2
    fold_grad_samples(nn.ParameterList([p]), 2, "test")
    assert torch.equal(p.grad_sample, torch.tensor([[6.0, 8, 10], [12, 14, 16]]))
    q = nn.Parameter(torch.zeros(2))
    fold_grad_samples(nn.ParameterList([q]), 3, "test")  # unused parameter: exact zero per-example gradient
    assert torch.equal(q.grad_sample, torch.zeros(3, 2))
    q.grad_sample = torch.ones(5, 2)
    with pytest.raises(PluginError, match="whole blocks"):
        fold_grad_samples(nn.ParameterList([q]), 3, "test")


def test_each_example_moves_the_network_by_at_most_the_clip_norm():
    """With (almost) no noise, a DP step is the mean of per-example gradients, each clipped *after* summing the
    example's real and fake rows: the per-patient sensitivity the accountant assumes."""
    torch.manual_seed(0)
    gen = build(TinyDenoiser)
    net = nn.Linear(4, 1)
    gen.nets = {"net": net}
    reference = nn.Linear(4, 1)
    reference.load_state_dict(net.state_dict())
    runner = LoopRunner(gen, {"net": torch.optim.SGD(net.parameters(), lr=1.0)}, torch.device("cpu"), None, 0.0,
                        EMA({}, 0.9))
    runner.make_private(["net"], noise_multiplier=1e-9, max_grad_norm=0.5, expected_batch=3.0)
    x_real, x_fake = torch.randn(3, 4) * 5, torch.randn(3, 4) * 5
    runner.begin_step(3)
    out = gen.nets["net"](torch.cat([x_real, x_fake]))
    runner.optimize("net", out.pow(2).mean())
    runner.release()
    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for j in range(3):  # per example: gradient of its two rows' loss, summed, then clipped to 0.5
        reference.zero_grad()
        (reference(x_real[j:j + 1]).pow(2).sum() + reference(x_fake[j:j + 1]).pow(2).sum()).backward()
        grads = [p.grad.clone() for p in reference.parameters()]
        scale = min(1.0, 0.5 / float(torch.sqrt(sum(g.pow(2).sum() for g in grads))))
        expected = [e + scale * g for e, g in zip(expected, grads)]
    for p_new, p_old, e in zip(net.parameters(), reference.parameters(), expected):
        assert torch.allclose(p_old - p_new, e / 3.0, atol=1e-5)


def test_bf16_autocast_keeps_each_example_within_the_clip_norm():
    """Under bf16 autocast (CPUs with AMX, GPUs) the per-example gradients are bf16, but their norms and the clipped
    sum are taken in fp32 from the same values: one example still moves the network by at most C / expected batch,
    through convolutions, GroupNorm and a Linear layer, and by nearly that much when its gradient is far larger."""
    torch.manual_seed(0)
    gen = build(TinyDenoiser)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 8 * 8, 1))
    gen.nets = {"net": net}
    runner = LoopRunner(gen, {"net": torch.optim.SGD(net.parameters(), lr=1.0)}, torch.device("cpu"), torch.bfloat16,
                        0.0, EMA({}, 0.9))
    runner.make_private(["net"], noise_multiplier=1e-9, max_grad_norm=0.5, expected_batch=2.0)
    for j in range(3):
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        runner.begin_step(1)
        with runner.autocast():
            out = gen.nets["net"](torch.randn(1, 1, 8, 8) * 50)
        runner.optimize("net", out.float().pow(2).mean())
        moved = float((torch.cat([p.detach().flatten() for p in net.parameters()]) - before).norm())
        assert 0.99 * 0.25 < moved <= 0.25 * (1 + 1e-5), (j, moved)
    runner.release()


def test_incompatible_private_network_names_the_generator(tmp_path):
    with pytest.raises(PluginError, match="tiny-batchnorm.*BatchNorm"):
        train(build(TinyBatchNorm), tiny_table(), TrainConfig(steps=2, batch_size=2), tmp_path,
              dp=DPConfig(noise_multiplier=1.0))


def test_private_network_optimised_twice_per_step_is_refused(tmp_path):
    class Twice(TinyDenoiser):
        name = "tiny-twice"

        def training_step(self, batch, runner):
            for _ in range(2):
                loss = self.nets["net"](batch.images, batch.masks, batch.vendor, batch.pathology).pow(2).mean()
                runner.optimize("net", loss)
            return {}

    with pytest.raises(PluginError, match="twice in one step"):
        train(build(Twice), tiny_table(), TrainConfig(steps=2, batch_size=3), tmp_path,
              dp=DPConfig(noise_multiplier=1.0))


# --------------------------------------------------------------------------------------------------- DP runs
def test_dp_run_records_the_epsilon_opacus_recomputes(tmp_path):
    """Must show: the recorded ε equals Opacus' accountant recomputed from the recorded σ, q, steps and δ. The run
    has empty Poisson batches (q = 1/6, 6 patients): they still cost a step and still get a noisy update."""
    table = tiny_table(n_patients=6)
    sizes: list[float] = []
    gen = build(TinyDenoiser)
    config = TrainConfig(steps=12, batch_size=1, checkpoint_every=6)
    result = train(gen, table, config, tmp_path, dp=DPConfig(noise_multiplier=0.9),
                   callback=lambda step, total, logs: sizes.append(logs["batch"]))
    rec = json.loads((tmp_path / "training.json").read_text())["dp"]
    assert rec == result.dp and set(rec) == RECORD_KEYS
    assert (rec["steps"], rec["sample_rate"], rec["noise_multiplier"]) == (12, pytest.approx(1 / 6), 0.9)
    assert (rec["unit"], rec["accountant"], rec["delta"]) == ("patient", "prv", 1e-5)
    from opacus.accountants import PRVAccountant

    fresh = PRVAccountant()
    for _ in range(rec["steps"]):
        fresh.step(noise_multiplier=rec["noise_multiplier"], sample_rate=rec["sample_rate"])
    assert rec["epsilon"] == pytest.approx(fresh.get_epsilon(delta=rec["delta"]), rel=1e-9)
    assert 0.0 in sizes  # some batches were empty ...
    steps_taken = {int(s["step"]) for s in _adam_state(tmp_path)}
    assert steps_taken == {12}  # ... and every step, empty or not, updated the private network once


def test_calibrated_dp_run_meets_the_target_epsilon(tmp_path):
    """--dp-epsilon with the default PRV accountant: σ is the smallest noise that keeps ε within the target."""
    config = TrainConfig(steps=20, batch_size=2, checkpoint_every=20)
    result = train(build(TinyDenoiser), tiny_table(n_patients=8), config, tmp_path, dp=DPConfig(epsilon=8.0))
    sigma, delta = result.dp["noise_multiplier"], result.dp["delta"]
    assert result.dp["accountant"] == "prv" and result.dp["sample_rate"] == 0.25
    assert 8.0 - 0.05 < result.dp["epsilon"] <= 8.0
    assert result.dp["epsilon"] == pytest.approx(epsilon_spent("prv", [(sigma, 0.25, 20)], delta))
    assert epsilon_spent("prv", [(sigma * 0.97, 0.25, 20)], delta) > 8.0


def test_two_private_networks_split_the_per_step_noise(tmp_path):
    """A pair whose generator and critic both see private data makes two releases per step: each network gets
    noise σ·√2 so that the recorded per-step σ (what the accountant uses) holds for the pair."""
    result = train(build(TinyPair), tiny_table(), TrainConfig(steps=3, batch_size=3, checkpoint_every=3), tmp_path,
                   dp=DPConfig(noise_multiplier=1.0, unit="slice"))
    summary = json.loads((tmp_path / "training.json").read_text())
    assert result.dp["noise_multiplier"] == 1.0 and result.dp["unit"] == "slice"
    assert result.dp["sample_rate"] == pytest.approx(3 / 18)
    assert summary["dp_mechanism"]["private_networks"] == ["d", "g"]
    assert summary["dp_mechanism"]["per_network_noise_multiplier"] == pytest.approx(2 ** 0.5)
    assert all(np.isfinite(v) for v in result.logs.values())


def _adam_state(run_dir):
    from cmraudit.training.checkpoint import latest_checkpoint

    _, state = latest_checkpoint(run_dir / "checkpoints")
    return state["runner"]["optimizers"]["net"]["state"].values()


# --------------------------------------------------------------------------------------------------- fast path
@pytest.mark.parametrize("geometry", [
    dict(in_channels=5, out_channels=8, kernel_size=3, padding=1),
    dict(in_channels=6, out_channels=4, kernel_size=3, padding=1, stride=2),
    dict(in_channels=6, out_channels=6, kernel_size=(3, 1), padding=(2, 0), dilation=2, groups=3),
    dict(in_channels=4, out_channels=2, kernel_size=1, bias=False),
    dict(in_channels=16, out_channels=32, kernel_size=3, padding=1),  # the rule's grouped case
])
def test_grouped_convolution_gives_opacus_per_example_gradients(geometry):
    from opacus.grad_sample.conv import compute_conv_grad_sample

    from cmraudit.training.grad_sample import conv2d_grad_sample, grouped_conv2d_grad_sample, looped_conv2d_grad_sample

    layer = nn.Conv2d(**geometry)
    x = torch.randn(3, layer.in_channels, 24, 20)  # large enough maps for the rule to pick grouped or looped
    backprops = torch.randn_like(layer(x))
    reference = compute_conv_grad_sample(layer, [x], backprops)
    for sampler in (grouped_conv2d_grad_sample, looped_conv2d_grad_sample, conv2d_grad_sample):
        got = sampler(layer, [x], backprops)
        assert got.keys() == reference.keys()
        for p in reference:
            torch.testing.assert_close(got[p], reference[p], rtol=1e-5, atol=1e-5 * float(reference[p].abs().max()))


@pytest.mark.filterwarnings("ignore:In CPU autocast")  # Opacus' functorch mode meets the integer label input
@pytest.mark.parametrize("cls", [TinyDenoiser, TinyPair])
def test_fast_and_stock_opacus_modes_take_the_same_dp_step(cls):
    """With clipping active and noise ~0, every grad-sample mode must produce the same update."""
    from dp_helpers import parameters_after_one_dp_step

    from cmraudit.api import Batch

    batch = Batch.from_table(tiny_table(), list(range(6)))
    updated = {mode: parameters_after_one_dp_step(build(cls), batch, mode) for mode in ("fast", "hooks", "functorch")}
    before = build(cls)
    for name, after in updated["fast"].items():
        moved = after - torch.cat([p.detach().flatten() for p in before.nets[name].parameters()])
        assert moved.abs().max() > 1e-3  # the step did something
        for mode in ("hooks", "functorch"):
            assert torch.allclose(after, updated[mode][name], atol=1e-6)


def test_factored_linear_gradients_match_materialised_ones():
    """Norms and clipped sums of factored Linear gradients equal those of the (B, out, in) tensor, also when an
    example contributed several rows (blocks), as in a discriminator's real + fake pass."""
    from cmraudit.training.grad_sample import FactoredGrad

    torch.manual_seed(0)
    a, g = torch.randn(2, 5, 7), torch.randn(2, 5, 3)
    factored = FactoredGrad(a, g)
    full = torch.einsum("rbo,rbi->boi", g, a)
    assert len(factored) == 5
    torch.testing.assert_close(factored.materialise(), full)
    torch.testing.assert_close(factored.squared_norms(), full.flatten(1).pow(2).sum(1))
    weights = torch.rand(5)
    torch.testing.assert_close(factored.weighted_sum(weights, torch.float32), torch.einsum("b,boi->oi", weights, full))
    single = FactoredGrad(a[:1], g[:1])
    torch.testing.assert_close(single.squared_norms(), single.materialise().flatten(1).pow(2).sum(1))
    torch.testing.assert_close(factored.per_row().reshape(2, 5, 3, 7).sum(0), full)


def test_absurd_budget_is_refused_quickly_and_full_batches_account_silently():
    import warnings

    with pytest.raises(ConfigError, match="even sigma"):  # refused before Opacus' minutes-long search starts
        calibrate(DPConfig(epsilon=1e-6).for_units(30), sample_rate=0.5, steps=150)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # q = 1 (fewer patients than the batch size) must not warn
        assert 0 < epsilon_spent("prv", [(1.0, 1.0, 100)], 1e-5) < epsilon_spent("rdp", [(1.0, 1.0, 100)], 1e-5)


@pytest.mark.parametrize("size", [24, 6])  # the grouped / looped route and the unfold route
def test_per_example_conv_gradients_ignore_the_input_memory_layout(size):
    """Opacus' unfold gives wrong per-example gradients for channels-last inputs; the fast path must not."""
    from opacus.grad_sample.conv import compute_conv_grad_sample

    from cmraudit.training.grad_sample import conv2d_grad_sample

    layer = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(3, size, size, 4).permute(0, 3, 1, 2)  # channels-last strides
    backprops = torch.randn(3, 8, size, size)
    reference = compute_conv_grad_sample(layer, [x.contiguous()], backprops)
    got = conv2d_grad_sample(layer, [x], backprops)
    for p in reference:
        torch.testing.assert_close(got[p], reference[p], rtol=1e-5, atol=1e-4)
