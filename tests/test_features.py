"""The in-domain encoder: shape, equivalence with the UNet's own encoder, determinism, fingerprinted caching."""
from __future__ import annotations

import pytest
import torch

from cmraudit.api import AuditContext, Split
from cmraudit.data.splits import make_split
from cmraudit.measure.features import Encoder, encoder_blocks, fingerprint, get_encoder
from cmraudit.measure.segmenter import build_segmenter, context_config, segmenter_config


def _ctx(table, split, tmp_path, seed=0, cache=None):
    return AuditContext(model="m", generator=None, data=table, split=split, synthetic=table.take([0]),
                        profile="smoke", seed=seed, cache={} if cache is None else cache,
                        options={"cache_dir": str(tmp_path), "segmenter": {"steps": 8}})


def test_encoder_blocks_reproduce_the_unets_encoder():
    torch.manual_seed(0)
    unet = build_segmenter(segmenter_config("smoke")).eval()
    blocks = encoder_blocks(unet)
    assert len(blocks) == len(segmenter_config("smoke").channels)
    seen = {}
    blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("bottleneck", o))
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        unet(x)
        y = x
        for block in blocks:
            y = block(y)
    assert torch.equal(y, seen["bottleneck"])
    feats = Encoder(unet).features(x)
    assert feats.shape == (2, sum(segmenter_config("smoke").channels)) and feats.dtype == torch.float32
    assert torch.allclose(feats[:, -y.shape[1]:], y.mean(dim=(-2, -1)))
    with pytest.raises(ValueError):
        Encoder(unet).features(torch.zeros(2, 32, 32))


def test_get_encoder_is_deterministic_memoised_and_cached(phantom_table_32, tmp_path, monkeypatch):
    import cmraudit.measure.segmenter as seg

    split = make_split(phantom_table_32, seed=0)
    images = phantom_table_32.images[:16]
    cache: dict = {}
    encoder = get_encoder(_ctx(phantom_table_32, split, tmp_path, cache=cache))
    assert get_encoder(_ctx(phantom_table_32, split, tmp_path, cache=cache)) is encoder
    assert cache["encoder"] is encoder
    # a second training from scratch (other cache folder) gives the same features: deterministic from the seed
    fresh = get_encoder(_ctx(phantom_table_32, split, tmp_path / "other"))
    assert torch.equal(encoder.features(images), fresh.features(images))
    # the saved file is loaded (with weights_only=True) instead of training again
    monkeypatch.setattr(seg, "train_segmenter", lambda *a, **k: pytest.fail("retrained despite a cached encoder"))
    loaded = get_encoder(_ctx(phantom_table_32, split, tmp_path))
    assert torch.equal(encoder.features(images), loaded.features(images)) and loaded.key == encoder.key
    blob = torch.load(next(tmp_path.glob("segmenter-*.pt")), weights_only=True)
    assert blob["fingerprint"] == encoder.key


def test_fingerprint_changes_with_members_seed_size_and_recipe(phantom_table_32):
    split = make_split(phantom_table_32, seed=0)
    members = phantom_table_32.select_patients(split.members)
    config = segmenter_config("smoke")
    key = fingerprint(members, 0, config)
    assert fingerprint(members, 0, config) == key
    assert fingerprint(members, 1, config) != key
    assert fingerprint(members, 0, segmenter_config("smoke", steps=config.steps + 1)) != key
    fewer = phantom_table_32.select_patients(split.members[1:])
    assert fingerprint(fewer, 0, config) != key
    smaller = members.take(range(len(members)))
    smaller.images = torch.nn.functional.avg_pool2d(members.images, 2)
    smaller.masks = members.masks[:, ::2, ::2]
    assert fingerprint(smaller, 0, config) != key


def test_context_config_applies_profile_and_options(phantom_table_32, tmp_path):
    ctx = _ctx(phantom_table_32, Split([], [], [], []), tmp_path)
    assert context_config(ctx).steps == 8
    ctx.options = {}
    assert context_config(ctx).steps == segmenter_config("smoke").steps
