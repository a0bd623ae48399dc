"""Throwaway plugins for the run, report and gate tests: a tiny data source, generators (one that crashes),
attacks with known scores and metrics with known values. Register with ``register_plugin(FakePlugins, "...")``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cmraudit import hookimpl
from cmraudit.api import Attack, AttackResult, DatasetSource, Metric, MetricValue, NotApplicable, ReportSection
from cmraudit.testing.tiny import TinyGenerator, tiny_table

CALLS: dict[str, int] = {}


def count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


class TinySource(DatasetSource):
    name = "tinyrun"
    description = "tiny synthetic short-axis slices for run tests"

    def volumes(self):
        return iter(())

    def load(self, image_size: int):
        return tiny_table(n_patients=int(self.arg or 20), slices_per_patient=2, image_size=image_size)


class FastTiny(TinyGenerator):
    name = "fast-tiny"

    @classmethod
    def train_overrides(cls, profile: str) -> dict:
        return {"steps": 3, "batch_size": 4, "checkpoint_every": 3}


class CrashingTiny(FastTiny):
    name = "crash-tiny"

    def training_step(self, batch, runner):
        raise ValueError("deliberate failure in training_step")


class KnownMia(Attack):
    """Members score 1..n, non-members 0.5..: AUC is exactly 1 and TPR@1% resolvable with >= 100 non-members."""

    name = "known-mia"
    kind = "mia"
    reference = "test fixture"

    def run(self, ctx):
        count(self.name)
        members, nonmembers = ctx.members, ctx.nonmembers
        shift = float(ctx.options.get("known-mia", {}).get("shift", 10.0))
        return AttackResult(np.arange(len(members), dtype=float) + shift, np.arange(len(nonmembers), dtype=float),
                            members.patients, nonmembers.patients, details={"note": "<b>not bold</b>"})


class KnownMemorization(Attack):
    name = "known-mem"
    kind = "memorization"

    def run(self, ctx):
        count(self.name)
        m, n = ctx.members, ctx.nonmembers
        return AttackResult(np.zeros(len(m)), np.zeros(len(n)), m.patients, n.patients,
                            details={"memorised": {"patients_share": 0.0}}, arrays={"dcr_members": np.ones(len(m))})


class BrokenAttack(Attack):
    name = "broken-attack"

    def run(self, ctx):
        raise RuntimeError("deliberate attack crash")


class InapplicableAttack(Attack):
    name = "needs-whitebox"

    def run(self, ctx):
        raise NotApplicable("this generator exposes no discriminator")


class KnownUtility(Metric):
    name = "known-utility"
    category = "utility"

    def compute(self, ctx):
        count(self.name)
        return {"tstr_dice": MetricValue(0.8, "higher", (0.75, 0.85)), "trtr_dice": MetricValue(0.9, "higher")}


class KnownFidelity(Metric):
    name = "known-fidelity"
    category = "fidelity"

    def compute(self, ctx):
        count(self.name)
        return {"coverage": MetricValue(0.7, "higher"), "fd": MetricValue(12.5, "lower", details={"n": 3})}


class FakePlugins:
    @hookimpl
    def cmraudit_register_datasets(self, register):
        register(TinySource)

    @hookimpl
    def cmraudit_register_generators(self, register):
        register(FastTiny)
        register(CrashingTiny)

    @hookimpl
    def cmraudit_register_attacks(self, register):
        for cls in (KnownMia, KnownMemorization, BrokenAttack, InapplicableAttack):
            register(cls)

    @hookimpl
    def cmraudit_register_metrics(self, register):
        register(KnownUtility)
        register(KnownFidelity)


SCRIPT_NAME = "<script>alert(1)</script>"


class ScriptSection(ReportSection):
    """A section whose name and title try to inject markup; the report must escape both."""

    name = SCRIPT_NAME
    title = SCRIPT_NAME
    order = 95

    def render(self, report) -> str:
        return report.note(SCRIPT_NAME)


class ScriptAttack(KnownMia):
    name = SCRIPT_NAME


class ScriptPlugins:
    @hookimpl
    def cmraudit_register_report_sections(self, register):
        register(ScriptSection)

    @hookimpl
    def cmraudit_register_attacks(self, register):
        register(ScriptAttack)


def tiny_config(out: Path, **changes):
    """A smoke-profile RunConfig on the tiny data: 20 patients, the fast generator, known attacks and metrics."""
    from cmraudit.run.config import ModelSpec, RunConfig

    values = dict(out=out, data="tinyrun:20", profile="smoke", image_size=16, dp_pretrain="phantom:8,seed=1", canaries=0,
                  models=[ModelSpec("fast-tiny", "fast-tiny")],
                  attacks=["known-mia", "known-mem"], metrics=["known-utility", "known-fidelity"])
    values.update(changes)
    return RunConfig(**values)
