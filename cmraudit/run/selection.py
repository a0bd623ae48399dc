"""Which attacks and metrics a run executes.

Attacks: ``mia`` (every membership-inference attack that applies to the generator), ``all`` (those plus
memorisation and replay) or a comma-separated list of names, groups allowed (``mia,stencil-replay``). Metrics:
``all`` or a list of names."""
from __future__ import annotations

from typing import Any

from ..errors import UsageError

GROUPS = {"mia": ("mia",), "all": ("mia", "memorization", "replay")}


def _parse(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if spec is None:
        return ["all"]
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    return [p.strip() for p in parts if p and p.strip()]


#: profiles on which the groups include attacks that train shadow generators
SHADOW_PROFILES = ("standard",)


def _group(name: str, generator: Any, attacks: dict[str, type], profile: str) -> tuple[list[str], dict[str, str]]:
    kinds = GROUPS[name]
    chosen, skipped = [], {}
    for key in sorted(attacks, key=lambda k: (kinds.index(attacks[k].kind) if attacks[k].kind in kinds else 99, k)):
        cls = attacks[key]
        if cls.kind not in kinds:
            continue
        reason = cls().applies_to(generator)
        if not reason and cls.trains_shadows and profile not in SHADOW_PROFILES:
            reason = (f"trains shadow generators (several times the model's training time), so groups include it on "
                      f"the {' / '.join(SHADOW_PROFILES)} profile only; name it to run it here (--attack {name},{key})")
        if reason:
            skipped[key] = str(reason)
        else:
            chosen.append(key)
    return chosen, skipped


def resolve_attacks(spec: str | list[str] | None, generator: Any, profile: str = "standard"
                    ) -> tuple[list[str], dict[str, str]]:
    """(attacks to run, {attack: reason} for those a group left out because they do not apply).

    Names given explicitly are returned even when they do not apply, so the run records them as skipped with the
    attack's own reason; unknown names are a UsageError listing the known ones."""
    from ..registry import registered

    attacks = registered("attacks")
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for token in _parse(spec):
        if token in ("none", "off"):
            continue
        if token in GROUPS:
            names, why = _group(token, generator, attacks, profile)
            skipped.update(why)
        elif token in attacks:
            names = [token]
        else:
            known = ", ".join([*GROUPS, *sorted(attacks)])
            raise UsageError(f"unknown attack {token!r} in --attack {spec!r} (known: {known})")
        chosen.extend(n for n in names if n not in chosen)
    return chosen, {k: v for k, v in skipped.items() if k not in chosen}


def select_attacks(spec: str | list[str] | None, generator: Any, profile: str = "standard") -> list[str]:
    """The attack names to run for ``spec`` (``mia``, ``all``, ``none`` or comma-separated names and groups)."""
    return resolve_attacks(spec, generator, profile)[0]


def resolve_metrics(spec: str | list[str] | None) -> list[str]:
    """Metrics a run computes: ``all`` (the default) or the names given; unknown names are a ConfigError listing
    the known ones."""
    from ..errors import ConfigError
    from ..registry import registered

    known = registered("metrics")
    if spec in ("all", "", None):
        return sorted(known)
    names = [spec] if isinstance(spec, str) else list(spec)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(sorted(known)) or 'none'})")
    return names
