"""Gradient accumulation (``TrainConfig.micro_batch``): the same update as one pass over the whole batch, refused
where it would change a generator's step, and never applied to DP batches."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_generator import TinyDenoiser, TinyPair, build, tiny_table

from cmraudit.errors import ConfigError
from cmraudit.training.loop import TrainConfig, train
from cmraudit.training.privacy import DPConfig


def _deterministic(size: int = 16) -> TinyDenoiser:
    """TinyDenoiser without its input noise: a step depends on the batch only, so two ways of taking it compare."""
    return build(TinyDenoiser, size=size, noise=0.0)


def _parameters(gen) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for net in gen.nets.values() for p in net.parameters()])


@pytest.mark.parametrize("micro_batch", [3, 4], ids=["uneven", "even"])
@pytest.mark.parametrize("grad_clip", [0.0, 0.05], ids=["no-clip", "clipping"])
def test_accumulated_steps_equal_whole_batch_steps(tmp_path, micro_batch, grad_clip):
    """Three Adam steps at batch 8 in passes of 3+3+2 (or 4+4) give the whole-batch weights and logs; with a
    binding clip the clip must act on the summed gradient, not per pass, for this to hold."""
    table = tiny_table(n_patients=10)
    results = {}
    for micro in (0, micro_batch):
        gen = _deterministic()
        # fp32: under bf16 autocast (CPUs with AMX) a pass's rounding depends on its batch
        config = TrainConfig(steps=3, batch_size=8, micro_batch=micro, grad_clip=grad_clip, checkpoint_every=3,
                             amp=False)
        result = train(gen, table, config, tmp_path / f"micro{micro}")
        results[micro] = (result.logs["loss"], _parameters(gen))
    (loss_whole, whole), (loss_acc, accumulated) = results[0], results[micro_batch]
    assert not torch.equal(whole, _parameters(_deterministic())), "training must have moved the weights"
    torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-6)
    assert loss_acc == pytest.approx(loss_whole, rel=1e-5)


def test_a_pass_that_differs_changes_the_step(tmp_path):
    """The comparison above can fail: passes whose losses are not weighted by their share of the batch (here, the
    last pass of 8 in passes of 3 would need weight 2/8) move the weights elsewhere."""
    from cmraudit.training import accumulation

    table = tiny_table(n_patients=10)
    whole = _deterministic()
    train(whole, table, TrainConfig(steps=2, batch_size=8, checkpoint_every=2), tmp_path / "whole")

    class EqualWeights(accumulation.AccumulatingRunner):
        def begin_pass(self, weight, first, final):
            super().begin_pass(1 / 3, first, final)

    original = accumulation.AccumulatingRunner
    accumulation.AccumulatingRunner = EqualWeights
    try:
        wrong = _deterministic()
        train(wrong, table, TrainConfig(steps=2, batch_size=8, micro_batch=3, checkpoint_every=2), tmp_path / "wrong")
    finally:
        accumulation.AccumulatingRunner = original
    assert not torch.allclose(_parameters(wrong), _parameters(whole), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vae", "mask-vae"])
def test_a_generators_own_step_count_counts_steps_not_passes(tmp_path, name):
    """The VAEs' KL warm-up reads a step counter: with passes of 3 of a batch of 8 it must advance once per step,
    so every pass of a step gets the same KL weight and the warm-up ends when it does with whole batches."""
    from cmraudit.api import Conditioning
    from cmraudit.registry import registered

    kind = "generators" if name == "vae" else "mask_generators"
    counts, weights = {}, {}
    for micro in (0, 3):
        cls = registered(kind)[name]
        gen = cls(cls.make_config("smoke", {"kl_warmup_steps": 10}), Conditioning(32))
        result = train(gen, tiny_table(n_patients=10, size=32), TrainConfig(steps=4, batch_size=8,
                       micro_batch=micro, checkpoint_every=4, amp=False), tmp_path / f"{name}-{micro}")
        module = getattr(gen.nets[next(iter(gen.nets))], "_module", gen.nets[next(iter(gen.nets))])
        counts[micro], weights[micro] = int(module.steps_trained), result.logs["kl_weight"]
    assert counts == {0: 4, 3: 4}
    assert weights[3] == pytest.approx(weights[0])


def test_a_generator_with_two_updates_per_step_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="micro_batch"):
        train(build(TinyPair), tiny_table(), TrainConfig(steps=1, batch_size=4, micro_batch=2), tmp_path)
    # a batch that fits in one pass is one ordinary step
    result = train(build(TinyPair), tiny_table(), TrainConfig(steps=1, batch_size=4, micro_batch=4), tmp_path / "b")
    assert result.steps == 1


def test_dp_runs_use_the_micro_batch_as_their_expected_poisson_batch(tmp_path):
    table = tiny_table(n_patients=12)
    config = TrainConfig(steps=2, batch_size=8, micro_batch=3, checkpoint_every=2)
    assert config.private_batch() == 3 and TrainConfig(batch_size=8).private_batch() == 8
    train(build(TinyDenoiser), table, config, tmp_path, dp=DPConfig(noise_multiplier=1.0))
    mechanism = json.loads((tmp_path / "training.json").read_text())["dp_mechanism"]
    assert mechanism["expected_batch"] == pytest.approx(3)


def test_micro_batch_is_validated_and_only_set_values_join_the_run_identity(tmp_path):
    with pytest.raises(ConfigError, match="micro_batch"):
        TrainConfig(micro_batch=-1).validate()
    train(build(TinyDenoiser), tiny_table(), TrainConfig(steps=1, batch_size=4), tmp_path / "plain")
    identity = json.loads((tmp_path / "plain" / "training.json").read_text())["identity"]["train"]
    assert "micro_batch" not in identity  # folders written before the setting existed keep resuming
    train(build(TinyDenoiser), tiny_table(), TrainConfig(steps=1, batch_size=4, micro_batch=2), tmp_path / "acc")
    assert json.loads((tmp_path / "acc" / "training.json").read_text())["identity"]["train"]["micro_batch"] == 2
