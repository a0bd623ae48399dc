"""Known answers: a generator that copies its training patients must be caught; one that draws fresh patients from
the same distribution must not be.

Both test generators keep a pool of real phantom slices. The copycat's pool is its training set (members) and it
returns pool images plus small noise; its white-box side is the exact optimal denoiser of its pool — what a
diffusion model that fully memorised its data would learn. The oracle's pool is the split's test patients, never
seen by any attack: it behaves like a perfect model of the population.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmraudit.api import AuditContext, Batch, Conditioning, Generator, NotApplicable
from cmraudit.data.splits import make_split
from cmraudit.data.types import SliceTable
from cmraudit.registry import get
from cmraudit.run.folder import load_scores, save_scores
from cmraudit.run.selection import select_attacks
from cmraudit.stats import summarize
from cmraudit.testing.tiny import sample_table

OPTIONS = {"attacks": {"features": False}, "lira": {"shadows": 2}, "loss": {"selection_shadows": 1}}
FRACTIONS = {"members": 0.3, "nonmembers": 0.3, "reference": 0.15, "test": 0.25}


class PoolGenerator(Generator):
    """Returns images of its pool (+ noise, optional shift and gamma); denoises with the pool's posterior mean."""

    name = "test-pool"
    family = "other"

    def __init__(self, pool: SliceTable, noise: float = 0.02, shift: int = 0, gamma: float = 1.0) -> None:
        super().__init__({}, Conditioning(pool.image_size))
        self.pool, self.noise, self.shift, self.gamma = pool.images.float(), noise, shift, gamma
        self.nets = {"none": torch.nn.Identity()}

    def make_optimizers(self):
        return {}

    def training_step(self, batch, runner):
        return {}

    def sample(self, masks, vendor, pathology, generator=None):
        idx = torch.randint(0, len(self.pool), (masks.shape[0],), generator=generator)
        x = self.pool[idx]
        if self.gamma != 1.0:  # a different windowing: gamma on [0, 1] intensities
            x = ((x + 1) / 2).clamp(0, 1).pow(self.gamma) * 2 - 1
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, -self.shift), dims=(-2, -1))
        return (x + self.noise * torch.randn(x.shape, generator=generator)).clamp(-1, 1)

    # the optimal denoiser of the empirical pool distribution, variance-preserving path
    @staticmethod
    def _ab(level: float) -> tuple[float, float]:
        level = min(max(level, 0.02), 1.0)
        return math.cos(math.pi * level / 2), math.sin(math.pi * level / 2)

    def forward_noise(self, x0, level, noise):
        a, b = self._ab(level)
        return a * x0 + b * noise

    def predict_x0_and_noise(self, x, level, batch):
        a, b = self._ab(level)
        d2 = torch.cdist(x.flatten(1), a * self.pool.flatten(1)).pow(2)
        x0 = (torch.softmax(-d2 / (2 * b * b), dim=1) @ self.pool.flatten(1)).view_as(x)
        return x0, (x - a * x0) / b

    def membership_signal(self, batch: Batch, generator=None):
        out = {}
        for level in (0.1, 0.3):
            noise = torch.randn(batch.images.shape, generator=generator)
            x0, _ = self.predict_x0_and_noise(self.forward_noise(batch.images, level, noise), level, batch)
            out[f"neg_loss_t{level:.2f}"] = -(x0 - batch.images).pow(2).flatten(1).mean(1)
        return out


@pytest.fixture(scope="module")
def world():
    from cmraudit.data.sources import open_source

    # 120 patients: the DCR share of a fresh-patient model is a coin flip per held-out patient, so its spread
    # shrinks only with the number of patients (36 members and 36 non-members here)
    table = open_source("phantom:120").load(32)
    return table, make_split(table, seed=0, fractions=FRACTIONS)


def _context(world, make_generator) -> AuditContext:
    table, split = world
    generator = make_generator(table, split, 0)
    synthetic = sample_table(generator, table.select_patients(split.reference), seed=0)
    return AuditContext(model="known-answer", generator=generator, data=table, split=split, synthetic=synthetic,
                        options=dict(OPTIONS), train_shadow=lambda patients, seed: make_generator(table, split, seed,
                                                                                                  patients))


def copycat(table, split, seed, patients=None, **kw):
    return PoolGenerator(table.select_patients(patients or split.members), **kw)


def near_copycat(table, split, seed, patients=None):
    return copycat(table, split, seed, patients, shift=2, gamma=1.3)


def oracle(table, split, seed, patients=None):
    pool = table.select_patients(split.test)
    if patients is not None:  # a shadow oracle: the same population, a different draw of it
        keep = np.random.default_rng(seed).permutation(split.test)[: max(1, 3 * len(split.test) // 4)]
        pool = table.select_patients(keep)
    return PoolGenerator(pool)


def _run_all(ctx: AuditContext) -> dict[str, tuple]:
    out = {}
    for name in select_attacks("all", ctx.generator):
        try:
            result = get("attacks", name)().run(ctx)
        except NotApplicable:  # e.g. the generated-mask audits on a set conditioned on real stencils
            continue
        out[name] = (result, summarize(result, n_boot=400))
    return out


def test_copycat_is_caught(world, tmp_path):
    ctx = _context(world, copycat)
    results = _run_all(ctx)
    assert {"gan-leaks", "loss", "secmi", "pia", "lira", "memorization", "stencil-replay"} <= set(results)
    memo = results["memorization"][0].details
    assert memo["memorised"]["share"] >= 0.95
    best = max(s["patient"]["auc"] for _, s in results.values())
    assert best >= 0.95
    assert results["gan-leaks"][1]["patient"]["auc"] >= 0.95
    # saved scores reproduce the reported numbers through scikit-learn
    from sklearn.metrics import roc_auc_score, roc_curve

    for name, (result, summary) in results.items():
        save_scores(result, tmp_path / f"{name}.npz")
        z = np.load(tmp_path / f"{name}.npz")
        y = np.r_[np.ones(len(z["member_scores"])), np.zeros(len(z["nonmember_scores"]))]
        s = np.r_[z["member_scores"], z["nonmember_scores"]]
        assert roc_auc_score(y, s) == pytest.approx(summary["auc"], abs=1e-12)
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        for target, entry in summary["tpr_at_fpr"].items():
            i = np.flatnonzero(fpr <= float(target))[-1]
            assert (tpr[i], fpr[i]) == pytest.approx((entry["tpr"], entry["achieved_fpr"]))
        assert summarize(load_scores(tmp_path / f"{name}.npz"), n_boot=400)["auc"] == summary["auc"]


def test_near_copies_are_still_flagged(world):
    ctx = _context(world, near_copycat)
    details = get("attacks", "memorization")().run(ctx).details
    assert details["memorised"]["share"] >= 0.80
    assert details["memorised_share"]["pixel"] < details["memorised_share"]["near_copy"]


def test_oracle_is_not_flagged(world):
    ctx = _context(world, oracle)
    results = _run_all(ctx)
    slice_misses, patient_misses = [], []
    for name, (_, summary) in results.items():
        lo, hi = summary["patient"]["auc_ci"]  # the privacy unit: no attack may find a significant leak
        assert lo <= 0.5, f"{name}: patient-level AUC CI {lo:.3f}..{hi:.3f} lies above 0.5"
        if hi < 0.5:  # below chance: members and non-members happen to differ, which is not a leak
            patient_misses.append(name)
        lo, hi = summary["auc_ci"]
        if not lo <= 0.5 <= hi:
            slice_misses.append(name)
    # ten 95% intervals: one or two may miss 0.5 by chance, a systematic leak would make most of them miss
    assert len(patient_misses) <= 1, patient_misses
    assert len(slice_misses) <= 2, slice_misses
    memo = results["memorization"][0].details
    for space in ("pixel", "near_copy"):
        share = memo["dcr_share"][space]
        lo, hi = share["ci"]
        assert lo <= 0.5 <= hi, f"{space}: DCR share {share}"
        assert hi - lo < 0.4  # informative: the patients drawn dominate the spread, not the synthetic images
    assert memo["memorised"]["share"] <= 0.05


def test_oracle_dcr_share_is_within_five_points_of_half():
    """With enough patients the DCR share of a fresh-patient model is 50% ± 5 points. The share is a coin flip per
    distinct synthetic source patient (standard deviation about 0.5/sqrt(patients)), so this needs hundreds of
    them: 2 000 small two-slice patients (tiny images keep it a few seconds), 800 of them in the oracle's pool.
    On the 120-patient phantom world above the same estimator's CI covers 0.5 but spans about ±0.13."""
    from cmraudit.testing.tiny import tiny_table

    table = tiny_table(n_patients=2000, slices_per_patient=2, image_size=16, seed=0)
    split = make_split(table, seed=0, fractions={"members": 0.25, "nonmembers": 0.25, "reference": 0.1,
                                                  "test": 0.4})
    generator = PoolGenerator(table.select_patients(split.test))
    conditions = table.select_patients(split.reference)
    synthetic = sample_table(generator, SliceTable.concat([conditions] * 2), seed=0)
    ctx = AuditContext(model="oracle", generator=generator, data=table, split=split, synthetic=synthetic,
                       options=dict(OPTIONS), train_shadow=None)
    shares = get("attacks", "memorization")().run(ctx).details["dcr_share"]
    for space in ("pixel", "near_copy"):
        lo, hi = shares[space]["ci"]
        assert abs(shares[space]["value"] - 0.5) <= 0.05, (space, shares[space])
        assert lo <= 0.5 <= hi and hi - lo < 0.15, (space, shares[space])


def test_secmi_and_pia_share_the_clean_images_network_call(world, monkeypatch):
    """PIA's noise estimate at level 0 is SecMI's first inversion step: one network call per batch serves both, and
    SecMI scores the same whether or not PIA ran first in the context."""
    from cmraudit.attacks.membership import PIA, SecMI

    alone = SecMI().run(_context(world, copycat))
    ctx = _context(world, copycat)
    calls = []
    predict = PoolGenerator.predict_x0_and_noise
    monkeypatch.setattr(PoolGenerator, "predict_x0_and_noise",
                        lambda self, x, level, batch: calls.append(level) or predict(self, x, level, batch))
    PIA().run(ctx)
    at_zero = calls.count(0.0)
    after_pia = SecMI().run(ctx)
    assert at_zero > 0 and calls.count(0.0) == at_zero  # SecMI read PIA's level-0 calls
    np.testing.assert_array_equal(after_pia.member_scores, alone.member_scores)
    np.testing.assert_array_equal(after_pia.nonmember_scores, alone.nonmember_scores)
