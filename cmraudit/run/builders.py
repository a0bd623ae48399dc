"""From a run's settings to the objects its stages use: the generator (class, instance, trained), its training
and DP configs, and the label that names the plugin when it fails."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..api import Conditioning, Generator
from ..errors import CmrauditError
from ..registry import get
from .config import ModelSpec, RunConfig
from .events import plugin_label

if TYPE_CHECKING:
    from ..training.loop import TrainConfig
    from ..training.privacy import DPConfig


def generator_class(spec: ModelSpec) -> type[Generator]:
    """The plugin class of a model: an image generator, or a mask generator for a run's mask models."""
    return get("mask_generators" if spec.kind == "masks" else "generators", spec.generator)


def build_generator(config: RunConfig, spec: ModelSpec, seed: int | None = None) -> Generator:
    """A fresh, untrained generator with the profile's settings and the run's overrides for this model, its
    initial weights fixed by ``seed`` (default: the run's seed) so that a run is reproducible."""
    from ..training.checkpoint import seeded_init

    cls = generator_class(spec)
    gconfig = cls.make_config(config.profile, config.generator_overrides(spec))
    with seeded_init(config.seed if seed is None else seed):
        return cls(gconfig, Conditioning(int(config.image_size)))


def load_generator(model_dir: Path, device: str, spec: ModelSpec | None = None) -> Generator:
    """A trained model from its folder (its plugin named by ``spec``, else by the checkpoint's own record)."""
    from ..training.loop import load_trained

    return load_trained(model_dir, generator_class(spec) if spec is not None else None, device=device)


def train_config(config: RunConfig, generator_cls: type) -> "TrainConfig":
    """TrainConfig for the profile and generator, with the run's [train] table, seed and --device on top."""
    from ..training.loop import TrainConfig

    overrides = {"seed": config.seed, **config.train}
    if config.device not in ("", "auto"):
        overrides.setdefault("device", config.device)
    return TrainConfig.for_profile(config.profile, generator_cls, overrides)


def dp_config(config: RunConfig, spec: ModelSpec) -> "DPConfig | None":
    if spec.dp_epsilon is None:
        return None
    from ..training.privacy import DPConfig

    return DPConfig(epsilon=spec.dp_epsilon, **config.dp)


def generator_label(spec: ModelSpec) -> str:
    """``generator 'gan' (cmraudit.plugins.gan)``: who to blame in a failed model's error."""
    kind = "mask generator" if spec.kind == "masks" else "generator"
    try:
        return plugin_label(kind, spec.generator, generator_class(spec))
    except CmrauditError:
        return f"{kind} {spec.generator!r}"


def resolve_device(requested: str) -> str:
    from ..training.device import select_device

    return str(select_device(requested))
