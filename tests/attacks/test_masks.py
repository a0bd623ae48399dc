"""Known answers for the generated-mask audits: a mask generator that hands out its training patients' masks is
caught; one that hands out masks of fresh patients (another phantom seed, the same population) is not.

Both are pool generators over real phantom masks, so the answer is known without training anything."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cmraudit.api import AuditContext, Conditioning, MaskGenerator, NotApplicable
from cmraudit.data.splits import make_split
from cmraudit.data.types import SliceTable
from cmraudit.measure.mask_distance import dice_distance, shifted
from cmraudit.registry import get
from cmraudit.stats import summarize

SIZE = 32
FRACTIONS = {"members": 0.35, "nonmembers": 0.35, "reference": 0.15, "test": 0.15}


class PoolMaskGenerator(MaskGenerator):
    """Returns masks of its pool: for each request, a random pool slice of the same phase."""

    name = "test-mask-pool"

    def __init__(self, pool: SliceTable) -> None:
        super().__init__({}, Conditioning(pool.image_size))
        self.pool = pool
        self.nets = {"none": torch.nn.Identity()}

    def make_optimizers(self):
        return {}

    def training_step(self, batch, runner):
        return {}

    def sample_masks(self, vendor, pathology, phase, position, generator=None):
        pool_phase = self.pool.phase_indices()
        out = []
        for p in phase.tolist():
            rows = torch.nonzero(pool_phase == p).flatten()
            out.append(self.pool.masks[rows[torch.randint(0, len(rows), (1,), generator=generator)]])
        return torch.cat(out)


def generated_table(generator: MaskGenerator, conditions: SliceTable, seed: int = 0) -> SliceTable:
    """A synthetic set as two-stage generation makes it: generated masks (images irrelevant here)."""
    rng = torch.Generator().manual_seed(seed)
    masks = generator.sample_masks(conditions.vendor_indices(), conditions.pathology_indices(),
                                   conditions.phase_indices(), conditions.relative_positions(), generator=rng)
    n = len(masks)
    return SliceTable(torch.zeros(n, 1, SIZE, SIZE), masks, [f"synthetic-{i // 10:04d}" for i in range(n)],
                      conditions.vendors, conditions.pathologies, conditions.phases, conditions.slice_index,
                      source="synthetic", meta={"mask_source": "generated"})


@pytest.fixture(scope="module")
def world():
    from cmraudit.data.sources import open_source

    return open_source("phantom:40").load(SIZE), open_source("phantom:20,seed=1").load(SIZE)


def _context(table: SliceTable, fresh: SliceTable, split_seed: int, copies: bool) -> AuditContext:
    split = make_split(table, seed=split_seed, fractions=FRACTIONS)
    pool = table.select_patients(split.members) if copies else fresh
    conditions = table.select_patients(split.reference + split.test)
    synthetic = generated_table(PoolMaskGenerator(pool), SliceTable.concat([conditions] * 2), seed=split_seed)
    return AuditContext(model="mask-known-answer", generator=None, data=table, split=split, synthetic=synthetic,
                        profile="quick", seed=split_seed)


def test_dice_distance_basics():
    table = SliceTable.concat([SliceTable(torch.zeros(1, 1, 16, 16), torch.zeros(1, 16, 16, dtype=torch.long),
                                          ["p"], ["A"], ["NOR"], ["ED"], [0])])
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[:, 4:12, 4:12] = 2
    mask[:, 6:10, 6:10] = 3
    mask[1] = shifted(mask[:1], 1, -1)[0]
    d = dice_distance(mask, mask)
    assert d[0, 0] == 0 and 0.2 < d[0, 1] < 0.5  # a one-pixel diagonal shift of a small heart costs a lot
    assert dice_distance(mask, mask, max_shift=1)[0, 1] == 0  # ... and nothing once shifts are allowed
    assert dice_distance(table.masks, table.masks)[0, 0] == 0  # two empty masks agree
    assert dice_distance(mask[:1], table.masks)[0, 0] == 1


def test_attacks_skip_real_stencils(world):
    table, fresh = world
    ctx = _context(table, fresh, 0, copies=True)
    ctx.synthetic.meta["mask_source"] = "reference"
    for plugin in (get("attacks", "mask-memorization")(), ):
        with pytest.raises(NotApplicable, match="stencil"):
            plugin.run(ctx)
    with pytest.raises(NotApplicable):
        get("metrics", "mask-plausibility")().compute(ctx)


@pytest.mark.parametrize("split_seed", [0, 1, 2])
def test_copies_of_members_are_caught(world, split_seed):
    table, fresh = world
    result = get("attacks", "mask-memorization")().run(_context(table, fresh, split_seed, copies=True))
    summary = summarize(result, n_boot=200, seed=split_seed)
    assert result.level == "patient"
    assert summary["patient"]["auc"] >= 0.95 and summary["patient"]["auc_ci"][0] > 0.8
    assert result.details["copies_share"] == 1.0
    assert result.arrays["mask_replayed"].all()  # the release filter drops every one
    dcr = result.details["dcr_share"]
    assert dcr["value"] >= 0.9 and dcr["ci"][0] > 0.5  # the CI resamples the few patients of each side
    assert abs(dcr["real_baseline"] - 0.5) < 0.2  # real non-member masks: no closer to members than to held-out


@pytest.mark.parametrize("split_seed", [0, 1, 2])
def test_fresh_patients_are_not_flagged(world, split_seed):
    table, fresh = world
    result = get("attacks", "mask-memorization")().run(_context(table, fresh, split_seed, copies=False))
    summary = summarize(result, n_boot=200, seed=split_seed)
    lo, hi = summary["patient"]["auc_ci"]
    assert lo <= 0.5 <= hi, (lo, hi)
    assert result.details["copies_share"] == 0.0
    assert result.arrays["mask_replayed"].mean() < 0.05, result.arrays["mask_replayed"].mean()
    lo, hi = result.details["dcr_share"]["ci"]
    assert lo <= 0.5 <= hi or hi < 0.5, (lo, hi)  # never significantly closer to members


def test_plausibility_metric_on_real_masks(world):
    """Real masks handed out as "generated" are as plausible as the real baseline, with near-zero area W1."""
    table, fresh = world
    values = get("metrics", "mask-plausibility")().compute(_context(table, fresh, 0, copies=False))
    assert set(values) == {"plausible", "plausible_gap", "area_w1"}
    assert values["plausible"].value > 0.3
    lo, hi = values["plausible"].ci
    assert lo <= values["plausible"].value <= hi
    assert abs(values["plausible_gap"].value) < 0.2
    assert values["area_w1"].value < 0.01
    details = values["plausible"].details
    assert details["real"]["n"] > 0 and set(details["per_pathology"]) <= {"NOR", "DCM", "HCM", "MINF", "RV"}


def test_mask_generators_cannot_sample_images():
    gen = PoolMaskGenerator(SliceTable(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long), ["p"],
                                       ["A"], ["NOR"], ["ED"], [0]))
    assert gen.produces == "masks"
    with pytest.raises(TypeError, match="sample_masks"):
        gen.sample(torch.zeros(1, 8, 8, dtype=torch.long), torch.zeros(1), torch.zeros(1))
    assert np.array_equal(gen.sample_masks(torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long),
                                           torch.zeros(1)).numpy(), np.zeros((1, 8, 8)))
