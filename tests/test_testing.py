"""cmraudit.testing: correct plugins pass; deliberately broken ones are caught with the rule they break."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import cmraudit.testing.generator_contract as generator_contract
from cmraudit import AttackResult, Conditioning, Generator, Metric, MetricValue, NotApplicable, PluginError
from cmraudit.testing import (
    ContractViolation,
    TinyGenerator,
    check_attack,
    check_generator,
    check_metric,
    make_audit_context,
)
from cmraudit.testing.tiny import TinyConfig, _StructureIntensityNet, tiny_table, train_steps


# --------------------------------------------------------------------------------------------------- generators
class WrongShape(TinyGenerator):
    name = "broken-shape"

    def sample(self, masks, vendor, pathology, generator=None):
        return super().sample(masks, vendor, pathology, generator)[:, 0]  # (B, H, W): channel dimension dropped


class OutOfRange(TinyGenerator):
    name = "broken-range"

    def sample(self, masks, vendor, pathology, generator=None):
        return super().sample(masks, vendor, pathology, generator) * 3.0  # forgot to clamp / tanh


class IgnoresSeed(TinyGenerator):
    name = "broken-seed"

    def sample(self, masks, vendor, pathology, generator=None):
        return super().sample(masks, vendor, pathology, None)  # draws from the global RNG


class NaNImages(TinyGenerator):
    name = "broken-nan"

    def sample(self, masks, vendor, pathology, generator=None):
        out = super().sample(masks, vendor, pathology, generator)
        return torch.where(masks[:, None] == 3, torch.nan, out)


class IntegerImages(TinyGenerator):
    name = "broken-dtype"

    def sample(self, masks, vendor, pathology, generator=None):
        return super().sample(masks, vendor, pathology, generator).round().long()


class NeverOptimizes(TinyGenerator):
    name = "broken-optimize"

    def training_step(self, batch, runner):
        return {"nll": float(self._nll(batch).mean().detach())}  # computes a loss but never calls runner.optimize


class RaisesInTraining(TinyGenerator):
    name = "broken-raises"

    def training_step(self, batch, runner):
        raise RuntimeError("CUDA kernel image not found")


class SignalPerPixel(TinyGenerator):
    name = "broken-signal"

    def membership_signal(self, batch, generator=None):
        return {"neg nll": -torch.ones(len(batch), 4)}  # a space in the name and (B, 4) scores


class _BatchNormNet(_StructureIntensityNet):
    def __init__(self, conditioning):
        super().__init__(conditioning)
        self.norm = nn.BatchNorm2d(1)  # mixes examples: per-example gradients (and DP) are impossible

    def forward(self, masks, vendor, pathology):
        mean, log_std = super().forward(masks, vendor, pathology)
        return torch.tanh(self.norm(mean)), log_std


class BatchNormGenerator(TinyGenerator):
    name = "broken-batchnorm"

    def __init__(self, config, conditioning):
        super().__init__(config, conditioning)
        self.nets = {"net": _BatchNormNet(conditioning)}


class _InplaceNet(_StructureIntensityNet):
    def __init__(self, conditioning):
        super().__init__(conditioning)
        self.act = nn.ReLU(inplace=True)


class InplaceGenerator(TinyGenerator):
    name = "broken-inplace"

    def __init__(self, config, conditioning):
        super().__init__(config, conditioning)
        self.nets = {"net": _InplaceNet(conditioning)}


@pytest.mark.parametrize("cls, rule", [
    (WrongShape, "sample-shape"), (OutOfRange, "sample-range"), (IgnoresSeed, "sample-deterministic"),
    (NaNImages, "sample-finite"), (IntegerImages, "sample-dtype"), (NeverOptimizes, "training-updates-weights"),
    (RaisesInTraining, "training-step"), (SignalPerPixel, "membership-signal"),
    (BatchNormGenerator, "opacus-compatible"), (InplaceGenerator, "opacus-compatible"),
])
def test_broken_generator_is_caught_naming_rule_and_plugin(cls, rule):
    with pytest.raises(ContractViolation) as caught:
        check_generator(cls)
    assert caught.value.rule == rule
    message = str(caught.value)
    assert f"generator {cls.name!r} ({cls.__module__}.{cls.__name__}) breaks the rule '{rule}'" in message
    assert isinstance(caught.value, PluginError)


def test_messages_say_what_is_wrong():
    with pytest.raises(ContractViolation, match=r"shape \(4, 16, 16\) .* expected \(4, 1, 16, 16\)"):
        check_generator(WrongShape)
    with pytest.raises(ContractViolation, match=r"values span \[-\S+, \S+\]; images must lie within \[-1, 1\]"):
        check_generator(OutOfRange)
    with pytest.raises(ContractViolation, match="RuntimeError: CUDA kernel image not found"):
        check_generator(RaisesInTraining)
    with pytest.raises(ContractViolation, match=r"BatchNorm"):
        check_generator(BatchNormGenerator)


def test_correct_generator_passes_and_comes_back_trained():
    gen = check_generator(TinyGenerator, image_size=24)
    assert not any(net.training for net in gen.nets.values())
    masks = tiny_table(image_size=24).masks[:2]
    out = gen.sample(masks, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                     generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 1, 24, 24)


def test_without_the_training_loop_a_plain_runner_and_grad_sample_check_are_used(monkeypatch):
    monkeypatch.setattr(generator_contract, "training_loop", lambda: None)
    check_generator(TinyGenerator)
    with pytest.raises(ContractViolation, match="opacus-compatible"):
        check_generator(BatchNormGenerator)
    with pytest.raises(ContractViolation, match="sample-deterministic"):
        check_generator(IgnoresSeed)


def test_not_a_generator():
    with pytest.raises(ContractViolation, match="registrable"):
        check_generator(dict)


# --------------------------------------------------------------------------------------------------- attacks
class _LossAttack:
    """White-box loss attack (Yeom et al. 2018) through membership_signal: correct, used as the base below."""

    name = "contract-loss"
    kind = "mia"

    def applies_to(self, generator):
        return None if generator is not None and generator.has_membership_signal() else "needs a membership signal"

    def _scores(self, ctx, table):
        from cmraudit import Batch

        return ctx.generator.membership_signal(Batch.from_table(table))["neg_nll"].numpy()

    def run(self, ctx):
        m, n = ctx.members, ctx.nonmembers
        return AttackResult(self._scores(ctx, m), self._scores(ctx, n), m.patients, n.patients)


def _attack(body: type) -> type:
    from cmraudit import Attack

    return type(body.__name__, (body, _LossAttack, Attack), {"name": body.name, "__module__": __name__})


class _ReferenceAsNonmembers:
    name = "broken-roles"

    def run(self, ctx):
        m, r = ctx.members, ctx.reference
        return AttackResult(self._scores(ctx, m), self._scores(ctx, r), m.patients, r.patients)


class _ShortPatients:
    name = "broken-lengths"

    def run(self, ctx):
        result = _LossAttack.run(self, ctx)
        result.member_patients = result.member_patients[:-1]
        return result


class _RandomScores:
    name = "broken-random"

    def run(self, ctx):
        m, n = ctx.members, ctx.nonmembers
        return AttackResult(np.random.rand(len(m)), np.random.rand(len(n)), m.patients, n.patients)


class _InfiniteScores:
    name = "broken-infinite"

    def run(self, ctx):
        result = _LossAttack.run(self, ctx)
        result.member_scores[0] = np.inf
        return result


@pytest.mark.parametrize("body, rule", [(_ReferenceAsNonmembers, "attack-patient-roles"),
                                        (_ShortPatients, "attack-result-lengths"),
                                        (_RandomScores, "attack-deterministic"),
                                        (_InfiniteScores, "attack-scores-finite")])
def test_broken_attack_is_caught(body, rule):
    with pytest.raises(ContractViolation, match=f"attack {body.name!r} .* breaks the rule '{rule}'") as caught:
        check_attack(_attack(body))
    assert caught.value.rule == rule and caught.value.plugin == body.name


def test_correct_attack_passes_and_scores_patients_of_the_right_roles():
    result = check_attack(_attack(type("_Fine", (), {"name": "contract-loss"})))
    assert len(result.member_scores) == len(result.member_patients) > 0


def test_attack_that_does_not_apply_raises_not_applicable():
    class NoSignal(TinyGenerator):
        membership_signal = Generator.membership_signal  # the base class's: "exposes no membership signal"

    gen = NoSignal(TinyConfig(), Conditioning(16))
    train_steps(gen, tiny_table(), 2)
    with pytest.raises(NotApplicable, match="needs a membership signal"):
        check_attack(_attack(type("_Fine", (), {"name": "contract-loss"})), generator=gen)


# --------------------------------------------------------------------------------------------------- metrics
class MeanIntensityGap(Metric):
    """|mean synthetic intensity − mean reference intensity|: a correct (if crude) fidelity metric."""

    name = "contract-mean-gap"

    def compute(self, ctx):
        gap = float((ctx.synthetic.images.mean() - ctx.reference.images.mean()).abs())
        return {"mean_gap": MetricValue(gap, "lower")}


class NaNMetric(MeanIntensityGap):
    name = "broken-nan-metric"

    def compute(self, ctx):
        return {"mean_gap": MetricValue(float("nan"), "lower")}


class SidewaysMetric(MeanIntensityGap):
    name = "broken-direction"

    def compute(self, ctx):
        return {"mean_gap": MetricValue(0.1, "smaller")}


class ReversedInterval(MeanIntensityGap):
    name = "broken-ci"

    def compute(self, ctx):
        return {"mean_gap": MetricValue(0.1, "lower", ci=(0.2, 0.05))}


def test_correct_metric_passes():
    values = check_metric(MeanIntensityGap)
    assert 0 <= values["mean_gap"].value < 2


@pytest.mark.parametrize("cls, rule", [(NaNMetric, "metric-value-finite"), (SidewaysMetric, "metric-direction"),
                                       (ReversedInterval, "metric-ci")])
def test_broken_metric_is_caught(cls, rule):
    with pytest.raises(ContractViolation, match=f"metric {cls.name!r} .* breaks the rule '{rule}'"):
        check_metric(cls)


def test_audit_context_roles(tmp_path):
    ctx = make_audit_context(workdir=tmp_path)
    assert set(ctx.synthetic.patients) == set(ctx.split.reference)  # conditioned on reference masks only
    assert not set(ctx.split.members) & set(ctx.split.nonmembers)
    shadow = ctx.train_shadow(ctx.split.nonmembers, 1)
    assert shadow.sample(ctx.test.masks[:2], ctx.test.vendor_indices()[:2], ctx.test.pathology_indices()[:2]).shape \
        == (2, 1, 16, 16)
