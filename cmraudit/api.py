"""Base classes a plugin implements, and the result types they return.

A plugin author subclasses one of ``Generator``, ``Attack``, ``Metric``, ``DatasetSource`` or ``ReportSection``
and registers it through the matching hook (see ``cmraudit.hookspecs``). The core never imports model or attack
code of its own: everything it runs comes through these classes.

(Longer than the other core modules on purpose: it is the whole plugin contract — base classes, the optional
``DenoiserView`` protocol, ``AuditContext`` and the result types — on one page a plugin author reads top to bottom,
and docs/plugins.md follows its order.)
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Literal, Protocol, runtime_checkable

import numpy as np

from .data.types import PATHOLOGIES, VENDORS, PatientVolume, SliceTable

if TYPE_CHECKING:  # torch is imported lazily so `cmraudit --help` stays fast
    import torch

Profile = Literal["smoke", "quick", "standard"]
PROFILES: tuple[str, ...] = ("smoke", "quick", "standard")


# --------------------------------------------------------------------------------------------------- data sources
class DatasetSource(abc.ABC):
    """A data set addressed as ``name`` or ``name:ARG`` (``phantom:40``, ``acdc:/data/ACDC``)."""

    name: ClassVar[str]
    #: one line for ``cmraudit plugins`` and ``--help``
    description: ClassVar[str] = ""

    def __init__(self, arg: str | None = None) -> None:
        self.arg = arg

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg else self.name

    @abc.abstractmethod
    def volumes(self) -> Iterator[PatientVolume]:
        """Yield each patient's ED/ES volumes. Raise DataError naming the file for unreadable input."""

    def load(self, image_size: int) -> SliceTable:
        """All usable slices, resampled to ``image_size`` and normalised to [-1, 1]."""
        from .data.preprocess import volumes_to_table

        return volumes_to_table(self.volumes(), image_size=image_size, source=self.spec)


# --------------------------------------------------------------------------------------------------- generators
@dataclass(frozen=True)
class Conditioning:
    """What a generator is conditioned on: the mask (anatomical stencil) plus vendor and pathology labels."""

    image_size: int
    n_labels: int = 4
    n_vendors: int = len(VENDORS)
    n_pathologies: int = len(PATHOLOGIES)


@dataclass
class Batch:
    """A training or sampling batch. images (B, 1, H, W) in [-1, 1]; masks (B, H, W) int64; vendor, pathology (B,).

    ``phase`` (B,) int64 (0 = ED, 1 = ES, the order of ``PHASES``) and ``position`` (B,) float32 in [0, 1] (the
    slice's relative position base -> apex, ``SliceTable.relative_positions``) are optional: mask generators are
    conditioned on them; image generators may ignore them."""

    images: "torch.Tensor"
    masks: "torch.Tensor"
    vendor: "torch.Tensor"
    pathology: "torch.Tensor"
    phase: "torch.Tensor | None" = None
    position: "torch.Tensor | None" = None

    def to(self, device: Any) -> "Batch":
        optional = [None if t is None else t.to(device) for t in (self.phase, self.position)]
        return Batch(self.images.to(device), self.masks.to(device), self.vendor.to(device), self.pathology.to(device),
                     *optional)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_table(cls, table: SliceTable, rows: Any = None) -> "Batch":
        """The batch of ``rows`` of ``table`` (all rows by default). Positions are computed on the whole table
        before the rows are taken, so a row subset keeps its slices' positions within their full volumes."""
        position = table.relative_positions()
        if rows is None:
            return cls(table.images, table.masks, table.vendor_indices(), table.pathology_indices(),
                       table.phase_indices(), position)
        t = table.take(rows)
        return cls(t.images, t.masks, t.vendor_indices(), t.pathology_indices(), t.phase_indices(),
                   position[_torch_rows(rows)])


def content_key(values: Any) -> str:
    """A digest of an array's or tensor's values, shape and dtype: the key of a result computed from it."""
    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    array = np.ascontiguousarray(array)
    digest = hashlib.sha1(f"{array.shape}|{array.dtype}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _torch_rows(rows: Any) -> Any:
    """Row indices as a torch index (numpy arrays, lists and tensors alike)."""
    import torch

    return rows if isinstance(rows, torch.Tensor) else torch.as_tensor(np.asarray(rows, dtype=np.int64))


class StepRunner(abc.ABC):
    """Given to ``Generator.training_step`` by the training loop: hides AMP, clipping, DP and EMA."""

    #: False on the passes of an accumulated step (``train.micro_batch``) before its last one: a generator that
    #: counts its own steps (a KL warm-up, a schedule) counts where this is True, so passes and steps agree
    completes_step: bool = True

    @abc.abstractmethod
    def optimize(self, network: str, loss: "torch.Tensor") -> None:
        """zero_grad, backward (scaled under AMP), clip (non-DP; DP clips per example), step, EMA update."""

    @property
    @abc.abstractmethod
    def device(self) -> "torch.device": ...

    @abc.abstractmethod
    def autocast(self) -> Any:
        """Context manager for the forward pass (bf16/fp16 autocast on GPU, a no-op on CPU)."""


class Generator(abc.ABC):
    """A conditional image generator. Subclasses set ``name``, ``family`` and a ``Config`` dataclass.

    Contract:
      * ``nets`` maps network names to ``torch.nn.Module``; the training loop may replace an entry with an Opacus
        wrapper, so always reach networks through ``self.nets[name]``.
      * ``sample(masks, vendor, pathology)`` returns (B, 1, H, W) float in [-1, 1], finite, and is deterministic
        for a given ``torch.Generator`` seed.
      * ``membership_signal`` (optional) returns named per-example signals, each (B,), **higher = the model fits
        this example better** (e.g. negative denoising loss), for white-box membership attacks.
      * diffusion-like families may also implement ``DenoiserView`` (``forward_noise``, ``predict_x0_and_noise``),
        which the SecMI and PIA attacks need.
    """

    name: ClassVar[str]
    family: ClassVar[str] = "other"
    description: ClassVar[str] = ""
    Config: ClassVar[type] = dict  # a dataclass with defaults, overridden per profile and from TOML / CLI
    #: what ``sample`` returns: "images" here, "masks" for a ``MaskGenerator``
    produces: ClassVar[str] = "images"

    def __init__(self, config: Any, conditioning: Conditioning) -> None:
        self.config = config
        self.conditioning = conditioning
        self.nets: dict[str, "torch.nn.Module"] = {}

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        """Config overrides for a profile (``smoke``, ``quick``, ``standard``); default: none."""
        return {}

    @classmethod
    def train_overrides(cls, profile: str) -> dict[str, Any]:
        """TrainConfig overrides for a profile (e.g. ``{"steps": 600}``), applied over the loop's profile defaults."""
        return {}

    @classmethod
    def make_config(cls, profile: str = "quick", overrides: dict[str, Any] | None = None) -> Any:
        from .dataclass_config import build_dataclass

        return build_dataclass(cls.Config, {**cls.profile_config(profile), **(overrides or {})}, owner=cls.name)

    def private_networks(self) -> tuple[str, ...]:
        """Networks that see private data and must be trained with DP (default: all of them)."""
        return tuple(self.nets)

    def ema_networks(self) -> tuple[str, ...]:
        """Networks whose exponential moving average is used for sampling (diffusion / flow)."""
        return ()

    @abc.abstractmethod
    def make_optimizers(self) -> dict[str, "torch.optim.Optimizer"]:
        """One optimiser per trained network, keyed by network name."""

    @abc.abstractmethod
    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        """One optimisation step; call ``runner.optimize(net, loss)`` per network; return scalar logs."""

    @abc.abstractmethod
    def sample(self, masks: "torch.Tensor", vendor: "torch.Tensor", pathology: "torch.Tensor",
               generator: "torch.Generator | None" = None) -> "torch.Tensor":
        """Images for the given stencils and labels, (B, 1, H, W) in [-1, 1]."""

    def membership_signal(self, batch: Batch, generator: "torch.Generator | None" = None) -> dict[str, "torch.Tensor"]:
        """Named per-example white-box signals (higher = better fit). Families without one raise NotImplementedError."""
        raise NotImplementedError(f"generator {self.name!r} exposes no membership signal")

    @classmethod
    def has_membership_signal(cls) -> bool:
        return cls.membership_signal is not Generator.membership_signal

    def to(self, device: Any) -> "Generator":
        for net in self.nets.values():
            net.to(device)
        return self

    def train(self, mode: bool = True) -> "Generator":
        for net in self.nets.values():
            net.train(mode)
        return self

    def eval(self) -> "Generator":
        return self.train(False)


class MaskGenerator(Generator):
    """A generator of label maps (0 BG, 1 RV, 2 MYO, 3 LV): the first stage of two-stage generation, whose masks
    then condition an image generator, so a released cohort carries no real patient's anatomy.

    Registered through ``cmraudit_register_mask_generators``. It trains like any generator (same loop,
    checkpoints, EMA and DP): ``training_step(batch, runner)`` learns from ``batch.masks`` with ``batch.vendor``,
    ``batch.pathology``, ``batch.phase`` and ``batch.position``. It samples with ``sample_masks``; the image
    method ``sample`` raises a TypeError. ``membership_signal`` (optional) scores a batch of masks.
    """

    produces: ClassVar[str] = "masks"

    @abc.abstractmethod
    def sample_masks(self, vendor: "torch.Tensor", pathology: "torch.Tensor", phase: "torch.Tensor",
                     position: "torch.Tensor", generator: "torch.Generator | None" = None) -> "torch.Tensor":
        """Label maps (B, H, W) int64 in {0, .., n_labels - 1} for the given labels, phases (0 ED, 1 ES) and
        relative positions (0 base .. 1 apex); deterministic for a given ``torch.Generator`` seed."""

    def sample(self, masks: "torch.Tensor", vendor: "torch.Tensor", pathology: "torch.Tensor",
               generator: "torch.Generator | None" = None) -> "torch.Tensor":
        raise TypeError(f"{self.name!r} is a mask generator: it samples label maps with "
                        "sample_masks(vendor, pathology, phase, position, generator), not images with sample()")


@runtime_checkable
class DenoiserView(Protocol):
    """Optional generator contract: the model seen as a denoiser at a continuous noise level.

    The white-box attacks SecMI (Duan et al. 2023) and PIA (Kong et al. 2024) need to noise an image themselves and
    ask the model what it thinks the data and the noise are; ``Generator.membership_signal`` cannot express that.
    A generator opts in by defining both methods (structural typing: no base class to add); the attacks test
    ``isinstance(generator, DenoiserView)`` and are skipped, with the reason, for generators that do not. The
    built-in diffusion and flow generators implement it (``cmraudit.plugins._unet.UNetGenerator``).

    **Noise level.** ``level`` is a float in [0, 1]: 0 is the data, 1 is pure noise, the same scale for every
    family. Each family maps it onto its own time: a DDPM generator onto its training step
    ``round(level * (T - 1))``; a flow-matching generator, whose time t runs from noise (0) to data (1), onto
    ``t = 1 - level``. The noisy image at a level is ``a(level) * x0 + b(level) * noise`` with ``a`` falling from
    1 to 0 and ``b`` rising from 0 to 1 (variance-preserving ``a**2 + b**2 = 1`` for diffusion, ``a + b = 1`` for
    flow).

    **Noise.** ``noise`` is a standard-normal tensor of the image's shape: drawn by the caller, or the model's own
    estimate from ``predict_x0_and_noise``.

    **Shapes.** Images ``x0``, ``x``, ``noise`` and both estimates are (B, 1, H, W) float; ``batch`` is the
    ``Batch`` of the same B examples, whose ``masks``, ``vendor`` and ``pathology`` condition the model (its
    ``images`` are not read by ``predict_x0_and_noise``).

    **Callers.** The SecMI and PIA attacks (``cmraudit.attacks.membership``), on the trained generator in eval
    mode, in batches of up to 64 examples on ``AuditContext.device``. Neither method may draw random numbers or
    change the model: a deterministic (DDIM / ODE-Euler) step from level a to level b is
    ``forward_noise(*predict_x0_and_noise(x_a, a, batch), b)`` for every family, and the attacks chain such steps.
    """

    def forward_noise(self, x0: "torch.Tensor", level: float, noise: "torch.Tensor") -> "torch.Tensor":
        """The forward process: ``a(level) * x0 + b(level) * noise``, same shape as ``x0``. Exact, no network."""
        ...

    def predict_x0_and_noise(self, x: "torch.Tensor", level: float, batch: Batch
                             ) -> "tuple[torch.Tensor, torch.Tensor]":
        """The model's split of the noisy image ``x`` at ``level`` into estimates ``(x0_hat, noise_hat)``,
        conditioned on ``batch`` (unguided), without gradients. Whatever the network predicts,
        ``forward_noise(x0_hat, level, noise_hat)`` gives ``x`` back (up to float error)."""
        ...


# --------------------------------------------------------------------------------------------------- splits
@dataclass
class Split:
    """Patient ids per role. A patient is in exactly one role. Deterministic from the seed.

    Canary patients (``canaries_in`` trained on, ``canaries_out`` not) come from a separate canary data set: they
    are training data, never reported as real patients, and audited apart (see ``cmraudit.run.canaries``)."""

    members: list[str]
    nonmembers: list[str]
    reference: list[str]
    test: list[str]
    seed: int = 0
    canaries_in: list[str] = field(default_factory=list)
    canaries_out: list[str] = field(default_factory=list)

    ROLES: ClassVar[tuple[str, ...]] = ("members", "nonmembers", "reference", "test")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Split":
        canaries = {k: d.get(k, []) for k in ("canaries_in", "canaries_out")}  # absent in splits made without
        return cls(**{k: d[k] for k in ("members", "nonmembers", "reference", "test", "seed")}, **canaries)

    def role_of(self) -> dict[str, str]:
        """Real patient -> role (canaries are not real patients and have no role)."""
        return {p: role for role in self.ROLES for p in getattr(self, role)}


# --------------------------------------------------------------------------------------------------- audits
@dataclass
class AuditContext:
    """Everything an attack or metric may use for one trained model.

    ``synthetic`` holds the sampled set: its ``patients`` column names the patient whose mask conditioned each
    image (never a member's by default, see ``meta["mask_source"]``).
    """

    model: str
    generator: Generator | None
    data: SliceTable
    split: Split
    synthetic: SliceTable
    profile: str = "quick"
    seed: int = 0
    device: str = "cpu"
    workdir: Path = Path(".")
    options: dict[str, Any] = field(default_factory=dict)
    #: lazily built shared resources (in-domain encoder, segmenter, ...), keyed by name
    cache: dict[str, Any] = field(default_factory=dict)
    #: one dict for every context of a run (every model; real, canary and null audits): memoised results keyed
    #: only by what determines them (a network's fingerprint and its inputs' content), see ``shared_memo``
    shared: dict[Any, Any] = field(default_factory=dict)
    #: trains a fresh generator of the same kind on given patients (for shadow-model attacks such as LiRA)
    train_shadow: Callable[[list[str], int], Generator] | None = None

    def shared_memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per run for ``key``: the key must name everything the result depends on (use
        ``content_key`` for tensors), as contexts of other models and audits read it. Callers must not modify
        what it returns."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    def settings(self, plugin: "Attack | Metric | type[Attack] | type[Metric] | str") -> dict[str, Any]:
        """The settings of one attack or metric for this run, layered (later layers win, key by key):

        1. ``profile_config(self.profile)`` of the plugin's class: its defaults for this profile;
        2. for attacks only, the user's ``options["attacks"]`` (run.toml ``[options.attacks]``): settings that
           several attacks share, such as ``features``, ``signal`` or ``max_slices_per_patient``;
        3. the user's ``options[NAME]`` (``[options.NAME]`` or ``--set options.NAME.KEY=VALUE``), NAME being the
           class's ``name``.

        Pass the attack or metric (instance or class). A plain name gives that options table alone, with no
        profile defaults (e.g. ``ctx.settings("attacks")``). Returns a fresh dict; keys absent from every layer are
        absent, so read optional, profile-independent settings with ``.get(key, default)``.
        """
        if isinstance(plugin, str):
            return dict(self._options_table(plugin))
        cls = plugin if isinstance(plugin, type) else type(plugin)
        merged = dict(cls.profile_config(self.profile))
        if issubclass(cls, Attack):
            merged.update(self._options_table("attacks"))
        merged.update(self._options_table(cls.name))
        return merged

    def _options_table(self, name: str) -> dict[str, Any]:
        table = (self.options or {}).get(name) or {}
        return table if isinstance(table, dict) else {}

    def part(self, role: str) -> SliceTable:
        return self.data.select_patients(getattr(self.split, role))

    @property
    def members(self) -> SliceTable:
        return self.part("members")

    @property
    def nonmembers(self) -> SliceTable:
        return self.part("nonmembers")

    @property
    def reference(self) -> SliceTable:
        return self.part("reference")

    @property
    def test(self) -> SliceTable:
        return self.part("test")


class NotApplicable(Exception):
    """Raised by an attack or metric that does not apply to this generator (recorded as 'skipped' with the reason)."""


@dataclass
class AttackResult:
    """Per-example membership scores (higher = more likely a member); every summary comes from cmraudit.stats."""

    member_scores: np.ndarray
    nonmember_scores: np.ndarray
    member_patients: np.ndarray
    nonmember_patients: np.ndarray
    level: Literal["slice", "patient"] = "slice"
    details: dict[str, Any] = field(default_factory=dict)
    #: extra arrays saved beside the scores (e.g. DCR distances, closest pairs' indices)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Attack(abc.ABC):
    """A privacy attack. ``kind``: "mia" (membership inference), "memorization" or "replay"."""

    name: ClassVar[str]
    kind: ClassVar[str] = "mia"
    description: ClassVar[str] = ""
    #: paper the method follows, shown in the report
    reference: ClassVar[str] = ""
    #: True for attacks that train shadow generators (K times a model's training time): the ``mia`` and ``all``
    #: groups include them only on the standard profile; naming the attack runs it on any profile
    trains_shadows: ClassVar[bool] = False
    #: True for attacks that see the model only through ``ctx.synthetic`` (samples-only and distance attacks): the
    #: run then also scores a set that cannot leak in its place (the test patients' own real slices), the split's
    #: null baseline, so a reader sees how much of the AUC the draw of patients explains
    reads_samples_only: ClassVar[bool] = False

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        """Default settings for a profile (``smoke``, ``quick``, ``standard``); default: none.

        Keep every profile-dependent number of the attack here (e.g. ``{"interval": 0.01}`` on ``standard``) and
        read settings through ``ctx.settings(self)``, which lays the user's ``[options.attacks]`` and
        ``[options.NAME]`` tables over these defaults."""
        return {}

    def applies_to(self, generator: Generator | None) -> str | None:
        """None when the attack can run against this generator, else the reason it cannot."""
        return None

    @abc.abstractmethod
    def run(self, ctx: AuditContext) -> AttackResult:
        ...


@dataclass
class MetricValue:
    value: float
    direction: Literal["higher", "lower"]
    ci: tuple[float, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Metric(abc.ABC):
    """A fidelity or utility metric family; ``compute`` returns named values (``{"fd": MetricValue(...)}``)."""

    name: ClassVar[str]
    category: ClassVar[str] = "fidelity"
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        """Default settings for a profile; default: none. Read them through ``ctx.settings(self)``, which lays the
        user's ``[options.NAME]`` table over them (as for ``Attack.profile_config``)."""
        return {}

    def applies_to(self, generator: Generator | None) -> str | None:
        return None

    @abc.abstractmethod
    def compute(self, ctx: AuditContext) -> dict[str, MetricValue]:
        ...


# --------------------------------------------------------------------------------------------------- reports
class ReportSection(abc.ABC):
    """A section of report.html. ``render`` returns an HTML fragment; escape every string you did not write."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    order: ClassVar[int] = 100

    @abc.abstractmethod
    def render(self, report: Any) -> str:
        ...
