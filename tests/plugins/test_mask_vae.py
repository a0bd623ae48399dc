"""The mask-vae mask generator: registration, training through the loop (plain and DP), sampling, determinism,
and the batch's phase / position fields it is conditioned on."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmraudit.api import Batch, Conditioning
from cmraudit.data.types import SliceTable
from cmraudit.registry import get, registered
from cmraudit.testing import tiny_table
from cmraudit.testing.generator_contract import train_with_loop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/dp_helpers.py


def build(profile: str = "smoke", seed: int = 0, **overrides):
    cls = get("mask_generators", "mask-vae")
    torch.manual_seed(seed)
    return cls(cls.make_config(profile, overrides), Conditioning(16))


def labels(table: SliceTable):
    return table.vendor_indices(), table.pathology_indices(), table.phase_indices(), table.relative_positions()


def test_registered_through_the_mask_generator_hook():
    from cmraudit.plugins import mask_vae

    assert hasattr(mask_vae, "cmraudit_register_mask_generators")
    assert registered("mask_generators")["mask-vae"].produces == "masks"
    assert "mask-vae" not in registered("generators")
    with pytest.raises(Exception, match="no mask generator named 'nope'"):
        get("mask_generators", "nope")


def test_batch_carries_phase_and_position():
    table = tiny_table(n_patients=3, slices_per_patient=3)  # slice 0, 1, 2 per patient, phases ED, ES, ED
    batch = Batch.from_table(table)
    assert batch.phase.tolist()[:3] == [0, 1, 0] and batch.phase.dtype == torch.long
    # patient tiny000: ED slices 0 and 2 (position 0, 1), ES slice 1 alone (position 1 / max(1, 1) = 1)
    assert batch.position.tolist()[:3] == [0.0, 1.0, 1.0] and batch.position.dtype == torch.float32
    rows = np.array([2, 5])
    part = Batch.from_table(table, rows)
    assert torch.equal(part.position, batch.position[rows])  # positions within the whole volume, not the rows
    moved = Batch(batch.images, batch.masks, batch.vendor, batch.pathology).to("cpu")
    assert moved.phase is None and moved.position is None


def test_trains_through_the_loop_and_samples_label_maps():
    table = tiny_table(n_patients=8, slices_per_patient=3)
    gen = build()
    before = [p.detach().clone() for p in gen.nets["mask_vae"].parameters()]
    logs = train_with_loop(gen, table, "smoke", steps=3, batch_size=4, seed=0)
    assert all(np.isfinite(v) for v in logs[0].values()) and {"loss", "nll", "kl"} <= set(logs[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, gen.nets["mask_vae"].parameters()))
    gen.eval()
    out = gen.sample_masks(*labels(table), generator=torch.Generator().manual_seed(3))
    assert out.shape == table.masks.shape and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) <= 3
    again = gen.sample_masks(*labels(table), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    with pytest.raises(TypeError, match="sample_masks"):
        gen.sample(table.masks, table.vendor_indices(), table.pathology_indices())
    signals = gen.membership_signal(Batch.from_table(table), generator=torch.Generator().manual_seed(0))
    assert set(signals) == {"elbo", "neg_recon"}
    assert all(v.shape == (len(table),) and bool(torch.isfinite(v).all()) for v in signals.values())


def test_seeded_training_is_deterministic():
    table = tiny_table(n_patients=6, slices_per_patient=2)
    params = []
    for _ in range(2):
        gen = build(seed=0)
        train_with_loop(gen, table, "smoke", steps=2, batch_size=4, seed=1)
        params.append(torch.cat([p.detach().flatten() for p in gen.nets["mask_vae"].parameters()]))
    assert torch.equal(*params)


def test_dp_training_works():
    from dp_helpers import parameters_after_one_dp_step
    from opacus.validators import ModuleValidator

    from cmraudit.training.privacy import DPConfig

    gen = build()
    assert not ModuleValidator.validate(gen.nets["mask_vae"], strict=False)
    table = tiny_table(n_patients=8, slices_per_patient=2)
    logs = train_with_loop(gen, table, "smoke", steps=2, batch_size=4, seed=0,
                           dp=DPConfig(noise_multiplier=1.0, accountant="rdp"))
    assert np.isfinite(logs[0]["loss"])
    batch = Batch.from_table(table, list(range(6)))
    fast, hooks = (parameters_after_one_dp_step(build(), batch, mode)["mask_vae"] for mode in ("fast", "hooks"))
    moved = fast - torch.cat([p.detach().flatten() for p in build().nets["mask_vae"].parameters()])
    assert moved.abs().max() > 1e-4 and torch.allclose(fast, hooks, atol=1e-6)


def test_largest_component_clean_up():
    from cmraudit.plugins.mask_vae import keep_largest_components

    mask = torch.zeros(1, 12, 12, dtype=torch.long)
    mask[0, 2:7, 2:7] = 3
    mask[0, 9:11, 9:11] = 3  # a stray fragment of the cavity
    mask[0, 0, 11] = 1
    out = keep_largest_components(mask)
    assert int((out == 3).sum()) == 25 and int((out == 1).sum()) == 1
    assert build(keep_largest_component=False).config.keep_largest_component is False
