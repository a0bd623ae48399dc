"""Canary patients: extra training patients, each included with probability ½, audited apart for power.

Twenty-four members against twelve non-members cannot show that a model does not leak: the AUC of a model that
never saw a member moves by about ±0.10 from split to split (Hanley & McNeil 1982), and every model audited on a
split shares its draw. Canaries are the standard remedy (Jagielski et al. 2020; Nasr et al. 2021; Steinke, Nasr &
Jagielski 2023, "Privacy Auditing with One (1) Training Run"): ``m`` patients from a separate data set (the phantom
with its own seed by default, or any data spec), each put into the training set independently with probability ½
by a seeded coin recorded in split.json. Every applicable attack then scores the canaries exactly as it scores
real patients, which gives an audit of ``m`` independent, randomised trials: an AUC with a narrow CI, TPR at low
FPR, and Steinke et al.'s one-run ε lower bound, which for a DP model must not exceed the accountant's ε.

Canaries are training data: they are in the members' table the generator trains on, counted by the DP accountant
as patients, and never reported as real patients (the real-patient audit is unchanged). Each canary brings
``canary_slices`` of its slices (seeded), so that a hundred canaries add a few hundred slices, not thousands.
"""
from __future__ import annotations

import numpy as np

from ..api import Split
from ..data.types import SliceTable
from ..errors import ConfigError
from .config import RunConfig

#: the phantom seed canaries are drawn with: the audited default phantom is seed 0, public pretraining seed 1
CANARY_PHANTOM_SEED = 2


def canary_spec(config: RunConfig) -> str:
    """The data spec canaries are loaded from: ``phantom`` means ``canaries`` patients of the canary phantom."""
    if config.canary_data.strip() == "phantom":
        return f"phantom:{config.canaries},seed={CANARY_PHANTOM_SEED}"
    return config.canary_data


def draw_canaries(source: SliceTable, n: int, slices: int, seed: int) -> tuple[SliceTable, list[str], list[str]]:
    """(canary slices, canaries in, canaries out): ``n`` patients of ``source`` (a seeded choice when it holds more),
    ``slices`` seeded slices of each, and an independent fair coin per canary for inclusion in training."""
    rng = np.random.default_rng([seed, 0xCA7A21])  # a stream of its own: the real split's draws are unchanged
    patients = sorted(source.patient_ids)
    if len(patients) < n:
        raise ConfigError(f"canary data {source.source!r} holds {len(patients)} patients; {n} canaries requested")
    chosen = sorted(rng.choice(patients, size=n, replace=False).tolist()) if len(patients) > n else patients
    rows = source.patient_rows()
    keep = [np.sort(rng.choice(rows[p], size=min(slices, len(rows[p])), replace=False)) for p in chosen]
    table = source.take(np.concatenate(keep))
    coins = rng.random(n) < 0.5
    return table, [p for p, c in zip(chosen, coins) if c], [p for p, c in zip(chosen, coins) if not c]


def check_disjoint(canaries: SliceTable, *others: tuple[str, SliceTable]) -> None:
    """Canary ids must not be real or public patients' ids: a canary is never reported as a real patient."""
    for what, table in others:
        shared = sorted(set(canaries.patient_ids) & set(table.patient_ids))
        if shared:
            raise ConfigError(f"canary data {canaries.source!r} shares {len(shared)} patient id(s) with the {what} "
                              f"({', '.join(shared[:3])}): canaries must be other patients")


def canary_split(split: Split) -> Split:
    """The split an attack sees in the canary audit: canaries in as members, canaries out as non-members, and the
    real reference and test patients (which the attacks may use for calibration) unchanged."""
    return Split(list(split.canaries_in), list(split.canaries_out), list(split.reference), list(split.test),
                 seed=split.seed)
