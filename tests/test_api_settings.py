"""Attack and metric settings: ``profile_config`` defaults per profile, layered under the user's options by
``AuditContext.settings``. The built-ins' per-profile numbers are pinned here: moving them out of ``if ctx.profile
== ...`` branches into ``profile_config`` must not change any of them."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from cmraudit import Attack, AuditContext, Metric
from cmraudit.api import PROFILES
from cmraudit.registry import get
from cmraudit.testing.tiny import tiny_table


def _ctx(profile: str = "quick", options: dict[str, Any] | None = None) -> AuditContext:
    from cmraudit.data.splits import make_split

    table = tiny_table()
    return AuditContext(model="m", generator=None, data=table, split=make_split(table, seed=0), synthetic=table,
                        profile=profile, options=options or {})


class Sized(Attack):
    name = "sized"

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return {"n": 100 if profile == "standard" else 10, "mode": "a"}

    def run(self, ctx):
        raise NotImplementedError


class Scored(Metric):
    name = "scored"

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return {"n": 3}

    def compute(self, ctx):
        raise NotImplementedError


def test_base_classes_default_to_no_profile_settings():
    for base in (Attack, Metric):
        for profile in PROFILES:
            assert base.profile_config(profile) == {}


def test_user_options_win_key_by_key_over_profile_defaults():
    assert _ctx("standard").settings(Sized) == {"n": 100, "mode": "a"}
    assert _ctx("quick").settings(Sized()) == {"n": 10, "mode": "a"}  # an instance works as its class
    ctx = _ctx("quick", {"sized": {"n": 5, "extra": True}})
    assert ctx.settings(Sized) == {"n": 5, "mode": "a", "extra": True}


def test_attacks_share_the_attacks_table_under_their_own():
    ctx = _ctx("quick", {"attacks": {"mode": "shared", "features": False}, "sized": {"features": True}})
    assert ctx.settings(Sized) == {"n": 10, "mode": "shared", "features": True}
    assert ctx.settings(Scored) == {"n": 3}  # metrics do not read [options.attacks]


def test_a_plain_name_is_the_users_table_alone():
    ctx = _ctx("quick", {"segmenter": {"steps": 5}, "broken": 3})
    assert ctx.settings("segmenter") == {"steps": 5}
    assert ctx.settings("missing") == {} and ctx.settings("broken") == {}
    ctx.settings("segmenter")["steps"] = 9  # a copy: the run's options are not changed through it
    assert ctx.options["segmenter"] == {"steps": 5}


# ------------------------------------------------------------------ the built-ins' numbers, unchanged per profile
SCORING = ("loss", "elbo", "logan", "secmi", "pia")


@pytest.mark.parametrize("profile", PROFILES)
def test_builtin_profile_numbers(profile):
    standard = profile == "standard"
    ctx = _ctx(profile)
    for name in SCORING:
        assert ctx.settings(get("attacks", name))["max_slices_per_patient"] == (None if standard else 10)
    assert ctx.settings(get("attacks", "loss"))["signal_selection"] == ("shadow" if standard else "reference")
    assert ctx.settings(get("attacks", "secmi"))["interval"] == (0.01 if standard else 0.05)
    assert ctx.settings(get("attacks", "stencil-replay"))["slices"] == (4 if standard else 3)
    secmi = get("attacks", "secmi")()
    assert secmi.details(ctx) == {"level": 0.1, "interval": 0.01 if standard else 0.05}


@pytest.mark.parametrize("profile", PROFILES)
def test_builtin_metric_configs_are_the_profile_tables(profile):
    from cmraudit.attacks import fidelity, utility

    for module, make in ((fidelity, fidelity.fidelity_config), (utility, utility.utility_config)):
        assert make(_ctx(profile)) == module.PROFILE_CONFIGS[profile]
    ctx = _ctx(profile, {"fidelity": {"kid_subsets": 7}, "utility": {"classify": False}})
    assert fidelity.fidelity_config(ctx) == dataclasses.replace(fidelity.PROFILE_CONFIGS[profile], kid_subsets=7)
    assert utility.utility_config(ctx) == dataclasses.replace(utility.PROFILE_CONFIGS[profile], classify=False)


def test_shared_and_own_options_keep_their_effect():
    ctx = _ctx("quick", {"attacks": {"max_slices_per_patient": 2}, "secmi": {"interval": 0.02, "level": 0.2},
                         "stencil-replay": {"slices": 1}, "loss": {"signal_selection": "shadow"}})
    assert ctx.settings(get("attacks", "pia"))["max_slices_per_patient"] == 2
    assert get("attacks", "secmi")().details(ctx) == {"level": 0.2, "interval": 0.02}
    assert ctx.settings(get("attacks", "stencil-replay"))["slices"] == 1
    assert ctx.settings(get("attacks", "loss"))["signal_selection"] == "shadow"


def test_scored_part_keeps_a_few_slices_per_patient_on_cpu_profiles():
    from cmraudit.attacks._shared import scored_part

    ctx = _ctx("quick")
    members = ctx.members
    limited = scored_part(ctx, "members", 1)
    assert len(limited) == len(members.patient_ids)
    assert len(scored_part(ctx, "members", None)) == len(members)
    assert scored_part(ctx, "members", 1) is limited  # cached per role and limit
