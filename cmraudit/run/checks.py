"""The up-front check of a run's settings: user mistakes fail before any work starts, as usage errors."""
from __future__ import annotations

from ..data.sources import open_source
from ..errors import ConfigError, UsageError
from .builders import dp_config, generator_class, train_config
from .config import RunConfig
from .selection import resolve_attacks, resolve_metrics


def check_config(config: RunConfig) -> None:
    """Unknown generator (or mask generator), attack or metric names, and generator, [train] or [dp] settings their
    classes reject.
    (Plugin crashes later are recorded per model.)"""
    for spec in [*config.models, *config.mask_models()]:
        cls = generator_class(spec)
        cls.make_config(config.profile, config.generator_overrides(spec))
        train_config(config, cls)
        if spec.dp_epsilon is not None:
            try:
                dp_config(config, spec).validate()
            except TypeError as exc:
                raise ConfigError(f"[dp]: {exc}") from None
    if config.dp_pretrain != "none" and any(spec.dp_epsilon is not None for spec in config.models):
        try:
            open_source(config.dp_pretrain)  # the scheme and its argument; the data loads when it is needed
        except UsageError as exc:
            raise UsageError(f"dp_pretrain: {exc}") from None
    if config.canaries and config.canary_data.strip() != "phantom":
        try:
            open_source(config.canary_data)
        except UsageError as exc:
            raise UsageError(f"canary_data: {exc}") from None
    resolve_metrics(config.metrics)
    try:
        resolve_attacks(config.attacks, None)
    except UsageError:
        raise
    except Exception:  # a plugin's applies_to(None) misbehaving is recorded per model when the audit runs
        pass
