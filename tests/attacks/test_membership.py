"""Every built-in membership attack honours the Attack contract; selection of attacks by group and name."""
from __future__ import annotations

import pytest

from cmraudit.errors import UsageError
from cmraudit.registry import get, registered
from cmraudit.run.selection import resolve_attacks, select_attacks
from cmraudit.testing import check_attack
from cmraudit.testing.tiny import TinyGenerator

BUILT_IN = ["gan-leaks", "gan-leaks-cal", "monte-carlo", "domias", "lira", "stencil-replay"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_attack_contract(name):
    result = check_attack(get("attacks", name), options={"attacks": {"features": False}, "lira": {"shadows": 2}})
    assert len(result.member_scores) > 0


def test_white_box_attacks_explain_why_they_skip():
    tiny = TinyGenerator.__new__(TinyGenerator)  # class-level checks only
    for name in ("elbo", "logan", "secmi", "pia"):
        reason = get("attacks", name)().applies_to(tiny)
        assert isinstance(reason, str) and reason
    assert get("attacks", "loss")().applies_to(None)


def test_selection_groups_and_names():
    attacks = registered("attacks")
    mia = select_attacks("mia", None)
    assert mia and all(attacks[n].kind == "mia" for n in mia)
    assert "gan-leaks" in mia and "loss" not in mia  # white-box needs a generator
    everything, skipped = resolve_attacks("all", None)
    assert {"memorization"} <= set(everything) and "stencil-replay" in skipped
    assert select_attacks("memorization,gan-leaks,mia", None)[:2] == ["memorization", "gan-leaks"]
    assert select_attacks("none", None) == []
    with pytest.raises(UsageError, match="no-such-attack"):
        select_attacks("gan-leaks,no-such-attack", None)


def test_shadow_training_attacks_join_groups_on_the_standard_profile_only():
    from cmraudit.api import Conditioning
    from cmraudit.testing import TinyGenerator

    generator = TinyGenerator(TinyGenerator.make_config("smoke"), Conditioning(image_size=16))
    assert registered("attacks")["lira"].trains_shadows
    chosen, skipped = resolve_attacks("mia", generator, profile="quick")
    assert "lira" not in chosen and "--attack mia,lira" in skipped["lira"]
    assert "lira" in resolve_attacks("mia,lira", generator, profile="quick")[0]  # named: runs on any profile
    assert "lira" in resolve_attacks("mia", generator, profile="standard")[0]


def test_a_models_signals_on_the_same_slices_are_computed_once_per_run(monkeypatch, tmp_path):
    """The canary audit calibrates on the real audit's reference patients: their white-box signals come from the
    run's memo, equal to a fresh computation; other slices or another model are computed anew."""
    import dataclasses

    import numpy as np
    from cmraudit.attacks._shared import membership_signals, model_signals

    from cmraudit.testing.tiny import make_audit_context

    ctx = make_audit_context(workdir=tmp_path)
    calls = []
    original = type(ctx.generator).membership_signal
    monkeypatch.setattr(type(ctx.generator), "membership_signal",
                        lambda self, batch, generator=None: calls.append(len(batch.images)) or original(self, batch))
    canary_ctx = dataclasses.replace(ctx, cache={})  # shares ctx.shared, as the run's canary audit does
    first = model_signals(ctx, ctx.reference)
    n = len(calls)
    again = model_signals(canary_ctx, ctx.reference)
    assert len(calls) == n and again is first
    np.testing.assert_array_equal(first["neg_nll"], membership_signals(ctx.generator, ctx.reference, ctx.seed)["neg_nll"])
    model_signals(canary_ctx, ctx.members)
    assert len(calls) > n
    after_members = len(calls)
    model_signals(dataclasses.replace(ctx, model="another-model"), ctx.reference)
    assert len(calls) == after_members + n
