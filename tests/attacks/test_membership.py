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
