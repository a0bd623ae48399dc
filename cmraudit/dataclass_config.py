"""Dataclass configs from nested dicts (profile defaults, run.toml, CLI overrides), with named errors."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .errors import ConfigError


def build_dataclass(cls: type, values: dict[str, Any], owner: str = "") -> Any:
    """``cls(**values)`` with unknown keys and wrong types reported as one ConfigError naming ``owner``."""
    if cls is dict:
        return dict(values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{owner or cls.__name__}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    converted = {k: _coerce(v, hints.get(k), f"{owner or cls.__name__}.{k}") for k, v in values.items()}
    return cls(**converted)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Accept TOML/CLI spellings: ints for floats, lists for tuples, strings of numbers."""
    origin = typing.get_origin(hint)
    try:
        if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if hint is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if origin is tuple and isinstance(value, (list, tuple)):
            args = typing.get_args(hint)
            item = args[0] if args else None
            return tuple(_coerce(v, item, where) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot use {value!r} (expected {getattr(hint, '__name__', hint)})") from None
    return value


def as_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
