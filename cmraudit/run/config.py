"""The resolved configuration of one audit run, from defaults, a run.toml, the run folder and command-line flags.

Layers, later wins: built-in defaults < the run folder's own ``config.toml`` (so re-running resumes what was
started, whatever flags it was started with) < ``--config run.toml`` < command-line flags. The resolved config is
written to ``<out>/config.toml`` before anything else, so every run folder says exactly how to reproduce it.

A run.toml looks like::

    data = "phantom:60"
    profile = "quick"
    seed = 0
    generators = ["diffusion", "flow"]
    dp_epsilons = [inf, 8]          # one variant per epsilon: "diffusion", "diffusion-dp8", ...
    attacks = "all"                 # "mia", "all" or a list of names
    metrics = "all"
    mask_source = "reference"       # whose masks condition the synthetic set (never "members" by default),
                                    # or "generated": masks from a mask model (two-stage generation)
    mask_generator = "mask-vae"     # the mask model family when mask_source = "generated"
    dp_pretrain = "phantom:200,seed=1"  # public data the DP variants start from ("none": from scratch)
    canaries = 100                  # canary patients, each trained on with probability 1/2 (0: none)
    canary_data = "phantom"         # where canaries come from: the phantom (its own seed) or any data spec
    executor = "local"              # or "ray": models and LiRA shadows as Ray tasks (docs/scaling.md)
    ray_address = ""                # with "ray": "" starts a local Ray, "auto" / "ray://head:10001" joins one

    [generator.diffusion]           # overrides of a generator family's Config
    base_channels = 32
    [train]                         # overrides of cmraudit.training.loop.TrainConfig
    steps = 400
    [dp]                            # DPConfig settings shared by the DP variants
    delta = 1e-5
    [executor_resources]            # what each Ray task asks for
    num_cpus = 1
    num_gpus = 0
    [[model]]                       # an explicit extra variant
    name = "vae-dp3"
    generator = "vae"
    dp_epsilon = 3.0
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import PROFILES, Split
from ..errors import ConfigError
from ..toml_io import read_toml, to_toml, toml_value

__all__ = ["ModelSpec", "RunConfig", "merge_layers", "parse_set", "read_toml", "to_toml"]

#: image size per profile (pixels): smoke for tests, quick for the default CPU run, standard for a GPU.
PROFILE_IMAGE_SIZE = {"smoke": 32, "quick": 64, "standard": 128}
DEFAULT_GENERATORS = ("gan", "vae", "diffusion", "flow")
#: the default run adds one DP diffusion model (epsilon 8) so every report shows a DP/non-DP comparison
DEFAULT_DP_EXTRA = ("diffusion", 8.0)
#: "generated": two-stage generation, masks drawn from a mask model (cmraudit.run.mask_stage) for the labels of
#: ``GENERATED_LABEL_ROLE``'s slices, so the synthetic cohort carries no real patient's anatomy
GENERATED = "generated"
MASK_SOURCES = (*Split.ROLES, GENERATED)
#: whose vendor / pathology / phase / slice-position labels the generated masks are drawn for (labels, not anatomy)
GENERATED_LABEL_ROLE = "reference"
#: the mask model behind one image model is named after its DP budget: "masks", "masks-dp8", ...
MASK_MODEL_PREFIX = "masks"
#: public data every DP variant is first trained on, without DP, before DP-SGD on the members: with tens of
#: patients DP-SGD alone learns next to nothing at useful budgets (measured: a segmenter's Dice on the DP diffusion
#: model's samples 0.004 from scratch, 0.84 from phantom pretraining). Phantom seed 1 never shares a patient with
#: the default phantom (seed 0).
DEFAULT_DP_PRETRAIN = "phantom:200,seed=1"
#: canary patients per profile (``canaries``): enough that the canary audit can tell a leaking model from a
#: private one where the real patients are too few (see cmraudit.run.canaries)
PROFILE_CANARIES = {"smoke": 16, "quick": 100, "standard": 200}
#: settings whose change makes an existing run folder's split, checkpoints and scores meaningless
#: where a run's work runs (cmraudit.run.executors), and what each Ray task may ask for (``ray.remote`` options)
EXECUTORS = ("local", "ray")
EXECUTOR_RESOURCES = ("num_cpus", "num_gpus", "memory", "resources")
ESSENTIAL = ("data", "seed", "profile", "image_size", "split", "dp_pretrain", "canaries", "canary_data",
             "canary_slices")


@dataclass
class ModelSpec:
    """One model of a run: a generator family, an optional DP budget and config overrides."""

    name: str
    generator: str
    dp_epsilon: float | None = None  # None: no differential privacy
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the generator's Config
    #: "images" (a Generator plugin) or "masks" (a MaskGenerator plugin, derived from ``mask_source``, never listed
    #: in config.toml)
    kind: str = "images"

    def to_toml_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "generator": self.generator}
        if self.dp_epsilon is not None:
            d["dp_epsilon"] = self.dp_epsilon
        if self.config:
            d["config"] = dict(self.config)
        return d


def model_name(generator: str, epsilon: float | None) -> str:
    """"diffusion" without DP, "diffusion-dp8" at epsilon 8, "diffusion-dp0.5" at 0.5."""
    if epsilon is None or math.isinf(epsilon):
        return generator
    return f"{generator}-dp{epsilon:g}"


def parse_epsilon(value: Any) -> float | None:
    """An epsilon from TOML or the CLI: a positive number, or inf / "inf" / "none" for no DP."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "none", "off", "nodp", "∞"):
        return None
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"dp epsilon {value!r} is neither a number nor 'inf'") from None
    if math.isinf(eps):
        return None
    if not eps > 0:
        raise ConfigError(f"dp epsilon must be positive, got {value!r}")
    return eps


@dataclass
class RunConfig:
    out: Path = Path("cmraudit-run")
    data: str = "phantom"
    profile: str = "quick"
    seed: int = 0
    image_size: int | None = None  # None: the profile's size
    models: list[ModelSpec] = field(default_factory=list)
    attacks: str | list[str] = "all"
    metrics: str | list[str] = "all"
    n_samples: int = 0  # 0: one synthetic image per conditioning mask
    mask_source: str = "reference"
    mask_generator: str = "mask-vae"
    device: str = "auto"
    #: data spec of the public pretraining set of DP variants, or "none" (``DEFAULT_DP_PRETRAIN``)
    dp_pretrain: str = DEFAULT_DP_PRETRAIN
    #: canary patients (None: the profile's number, 0: none), the data spec they are drawn from ("phantom": the
    #: phantom with its own seed) and how many slices of each are used
    canaries: int | None = None
    canary_data: str = "phantom"
    canary_slices: int = 2
    #: per-family Config overrides shared by every variant of that family
    generator: dict[str, dict[str, Any]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    dp: dict[str, Any] = field(default_factory=dict)
    split: dict[str, float] = field(default_factory=dict)
    #: per-plugin options for attacks and metrics, keyed by plugin name (``[options.lira] shadows = 2``)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where the models' work runs (cmraudit.run.executors): "local" (in this process, model after model) or
    #: "ray" (tasks on a Ray cluster: ``ray_address`` "" starts a local one, "auto" or "ray://host:10001" joins one),
    #: each task asking for ``executor_resources`` (``num_cpus``, ``num_gpus``, ``memory``, ``resources``)
    executor: str = "local"
    ray_address: str = ""
    executor_resources: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.image_size is None:
            self.image_size = PROFILE_IMAGE_SIZE[self.profile]
        if self.canaries is None:
            self.canaries = PROFILE_CANARIES[self.profile]
        if isinstance(self.canaries, bool) or not isinstance(self.canaries, int) or self.canaries < 0:
            raise ConfigError(f"canaries must be a number ≥ 0, got {self.canaries!r}")
        if isinstance(self.canary_slices, bool) or not isinstance(self.canary_slices, int) or self.canary_slices < 1:
            raise ConfigError(f"canary_slices must be a number ≥ 1, got {self.canary_slices!r}")
        self.dp_pretrain = str(self.dp_pretrain).strip() or "none"
        if self.dp_pretrain.lower() in ("none", "off", "no"):
            self.dp_pretrain = "none"
        if self.mask_source not in MASK_SOURCES:
            raise ConfigError(f"mask_source must be one of {', '.join(MASK_SOURCES)}, got {self.mask_source!r}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        self.ray_address = str(self.ray_address or "").strip()
        unknown = set(self.executor_resources) - set(EXECUTOR_RESOURCES)
        if unknown:
            raise ConfigError(f"executor_resources: unknown key(s) {', '.join(sorted(unknown))}; known: "
                              f"{', '.join(EXECUTOR_RESOURCES)}")
        if not self.models:
            self.models = expand_models(None, None)
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"model name(s) used twice: {', '.join(dupes)}")

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"no model {name!r} in this run (models: {', '.join(m.name for m in self.models)})")

    def mask_model_for(self, spec: ModelSpec) -> ModelSpec | None:
        """The mask model whose masks condition ``spec``'s synthetic set: one per DP budget, so a DP image model's
        cohort never carries anatomy learnt without DP. None unless ``mask_source`` is "generated"."""
        if self.mask_source != GENERATED or spec.kind == "masks":
            return None
        return ModelSpec(model_name(MASK_MODEL_PREFIX, spec.dp_epsilon), self.mask_generator, spec.dp_epsilon,
                         kind="masks")

    def mask_models(self) -> list[ModelSpec]:
        """Every mask model the run's image models need, in model order, each once."""
        specs: dict[str, ModelSpec] = {}
        for spec in self.models:
            mask = self.mask_model_for(spec)
            if mask is not None:
                specs.setdefault(mask.name, mask)
        return list(specs.values())

    def generator_overrides(self, spec: ModelSpec) -> dict[str, Any]:
        return {**self.generator.get(spec.generator, {}), **spec.config}

    def to_toml_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "data": self.data, "profile": self.profile, "seed": self.seed, "image_size": self.image_size,
            "attacks": self.attacks, "metrics": self.metrics, "n_samples": self.n_samples,
            "mask_source": self.mask_source, "mask_generator": self.mask_generator, "device": self.device,
            "dp_pretrain": self.dp_pretrain,
            "canaries": self.canaries, "canary_data": self.canary_data, "canary_slices": self.canary_slices,
        }
        if self.executor != "local":  # how a run is executed changes none of its numbers: written when not local
            d["executor"] = self.executor
            if self.ray_address:
                d["ray_address"] = self.ray_address
        for key in ("generator", "train", "dp", "split", "options", "executor_resources"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        d["model"] = [m.to_toml_dict() for m in self.models]
        return d

    def essentials(self) -> dict[str, Any]:
        d = self.to_toml_dict()
        return {k: d.get(k) for k in ESSENTIAL}


def expand_models(generators: list[str] | None, epsilons: list[float | None] | None) -> list[ModelSpec]:
    """generators x epsilons; with neither given, the default set (four families + a DP diffusion model)."""
    if generators is None and epsilons is None:
        specs = [ModelSpec(g, g) for g in DEFAULT_GENERATORS]
        g, eps = DEFAULT_DP_EXTRA
        return [*specs, ModelSpec(model_name(g, eps), g, eps)]
    gens = list(generators or DEFAULT_GENERATORS)
    epss = list(epsilons) if epsilons else [None]
    return [ModelSpec(model_name(g, e), g, e) for g in gens for e in epss]


# ------------------------------------------------------------------------------------------------ loading / layers
def _models_from_table(raw: dict[str, Any], where: str) -> list[ModelSpec] | None:
    """Explicit [[model]] entries plus the generators x dp_epsilons product, if either is given."""
    gens = raw.get("generators")
    if isinstance(gens, str):
        gens = [g.strip() for g in gens.split(",") if g.strip()]
    eps_raw = raw.get("dp_epsilons")
    if eps_raw is not None and not isinstance(eps_raw, list):
        eps_raw = [eps_raw]
    epss = [parse_epsilon(e) for e in eps_raw] if eps_raw is not None else None
    explicit = []
    for i, m in enumerate(raw.get("model", [])):
        if not isinstance(m, dict) or "generator" not in m:
            raise ConfigError(f"{where}: [[model]] entry {i + 1} needs a 'generator'")
        unknown = set(m) - {"name", "generator", "dp_epsilon", "config"}
        if unknown:
            raise ConfigError(f"{where}: [[model]] entry {i + 1} has unknown key(s) {', '.join(sorted(unknown))}")
        eps = parse_epsilon(m["dp_epsilon"]) if m.get("dp_epsilon") is not None else None
        explicit.append(ModelSpec(m.get("name") or model_name(m["generator"], eps), m["generator"], eps,
                                  dict(m.get("config", {}))))
    if gens is None and epss is None:
        return explicit or None
    return [*expand_models(gens, epss), *explicit]


def merge_layers(layers: list[tuple[str, dict[str, Any]]]) -> RunConfig:
    """Apply config layers (name, table) in order; each key of a later layer replaces the earlier value.

    Tables of overrides (``generator``, ``train``, ``dp``, ``split``, ``options``) merge key by key.
    """
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"models"}
    values: dict[str, Any] = {}
    models: list[ModelSpec] | None = None
    for where, raw in layers:
        unknown = set(raw) - fields - {"generators", "dp_epsilons", "model"}
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(fields | {'generators', 'dp_epsilons', 'model'}))}")
        layer_models = _models_from_table(raw, where)
        if layer_models is not None:
            models = layer_models
        for key, value in raw.items():
            if key in ("generators", "dp_epsilons", "model"):
                continue
            if key in ("generator", "options") and isinstance(value, dict):
                merged = {k: dict(v) for k, v in values.get(key, {}).items()}
                for family, table in value.items():
                    merged.setdefault(family, {}).update(table)
                values[key] = merged
            elif key in ("train", "dp", "split", "executor_resources") and isinstance(value, dict):
                values[key] = {**values.get(key, {}), **value}
            else:
                values[key] = value
    if isinstance(values.get("attacks"), str) and "," in values["attacks"]:
        values["attacks"] = [a.strip() for a in values["attacks"].split(",") if a.strip()]
    if isinstance(values.get("metrics"), str) and "," in values["metrics"]:
        values["metrics"] = [a.strip() for a in values["metrics"].split(",") if a.strip()]
    try:
        return RunConfig(**values, models=models or [])
    except TypeError as exc:
        raise ConfigError(f"run config: {exc}") from None


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``--set train.steps=50 --set generator.vae.latent_channels=8`` → a nested table (values parsed as TOML)."""
    table: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        value = toml_value(raw)
        node = table
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return table
