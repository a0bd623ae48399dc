"""Differential privacy: configuration, noise calibration, accounting and patient-level Poisson sampling.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016): every step samples a batch by Poisson
sampling with rate q, clips each example's gradient to norm C, adds N(0, σ²C²) noise to the sum and divides by the
expected batch size. The (ε, δ) spent after T steps comes from Opacus' accountants: PRV (Gopi et al., "Numerical
Composition of Differential Privacy", NeurIPS 2021; the default, tightest) or RDP (Mironov, "Rényi Differential
Privacy of the Sampled Gaussian Mechanism", 2019).

The privacy unit is the patient. ``PoissonSampler`` includes each patient independently with probability
q = expected_batch / n_patients and takes one uniformly random slice of each included patient, so every patient
contributes at most one example (one clipped gradient) per step and the accountant's ε is a per-patient guarantee.
``unit="slice"`` samples slices instead (q over slices): its ε protects one slice only; a patient with k slices is
then protected only at the much weaker group-privacy level of k slices. It is offered for comparison, labelled as
such in every record.

δ defaults to min(1e-5, 0.1 / n_units): δ must be well below 1/n, else "release one random record in full" would
satisfy the guarantee. An explicit δ ≥ 1/n_units is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data.types import SliceTable
from ..errors import ConfigError, PluginError

ACCOUNTANTS = ("prv", "rdp")
UNITS = ("patient", "slice")
GRAD_SAMPLE_MODES = ("fast", "hooks", "functorch")
DEFAULT_DELTA = 1e-5

#: An Opacus accountant history: (noise multiplier, sample rate, number of steps) segments.
History = Sequence[tuple[float, float, int]]


@dataclass
class DPConfig:
    """DP-SGD settings. Exactly one of ``epsilon`` (σ is calibrated to reach it) or ``noise_multiplier`` is set.

    grad_sample_mode: how per-example gradients are computed: "fast" (Opacus hooks with grouped-convolution Conv2d
    gradients, ``cmraudit.training.grad_sample``), "hooks" (Opacus' stock per-layer formulas) or "functorch" (vmap over every
    layer). All three are exact; the choice changes speed, never the guarantee.
    """

    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    unit: str = "patient"
    grad_sample_mode: str = "fast"

    def validate(self) -> "DPConfig":
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError("dp: set exactly one of epsilon (--dp-epsilon) or noise_multiplier (--dp-noise)")
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"dp.epsilon must be > 0, got {self.epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"dp.noise_multiplier must be > 0, got {self.noise_multiplier}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"dp.delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"dp.max_grad_norm must be > 0, got {self.max_grad_norm}")
        for key, allowed in (("accountant", ACCOUNTANTS), ("unit", UNITS), ("grad_sample_mode", GRAD_SAMPLE_MODES)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"dp.{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        return self

    def for_units(self, n_units: int) -> "DPConfig":
        """A validated copy with δ resolved for a data set of ``n_units`` patients (or slices)."""
        self.validate()
        if n_units < 1:
            raise ConfigError("dp: no training data to protect")
        delta = self.delta if self.delta is not None else min(DEFAULT_DELTA, 0.1 / n_units)
        if delta >= 1.0 / n_units:
            raise ConfigError(f"dp.delta={delta:g} is not below 1/n = {1.0 / n_units:g} ({n_units} {self.unit}s): "
                              "the guarantee would be meaningless")
        return dataclasses.replace(self, delta=delta)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int,
               epsilon: float | None = None) -> dict[str, Any]:
        """The ``dp`` block of training.json / results.json. ε is recomputed from (σ, q, steps, δ) when not given."""
        if self.delta is None:
            raise ConfigError("dp: resolve delta with for_units(n) before recording")
        if epsilon is None:
            epsilon = epsilon_spent(self.accountant, [(noise_multiplier, sample_rate, steps)], self.delta)
        return {"epsilon": float(epsilon), "delta": float(self.delta), "noise_multiplier": float(noise_multiplier),
                "sample_rate": float(sample_rate), "steps": int(steps), "max_grad_norm": float(self.max_grad_norm),
                "accountant": self.accountant, "unit": self.unit}


def make_accountant(name: str, history: History | None = None) -> Any:
    """A fresh Opacus accountant ("prv" or "rdp"), optionally continuing a saved history."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=name)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in (history or [])]
    return accountant


def epsilon_spent(accountant: str, history: History, delta: float) -> float:
    """ε after the steps in ``history`` at ``delta``; 0 before the first step."""
    if not history or sum(int(n) for _, _, n in history) == 0:
        return 0.0
    if any(not 0 < q <= 1 for _, q, _ in history):
        raise ConfigError("dp: sample rates must lie in (0, 1]")
    return _epsilon(accountant, tuple((float(s), float(q), int(n)) for s, q, n in history), float(delta))


@functools.lru_cache(maxsize=64)
def _epsilon(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Memoised: the accountant is a deterministic function of its history, and a DP run asks for the same ε up to
    three times (the check of a cached σ, the last checkpoint, the record), 0.55 s each with PRV on the default run."""
    with _quiet():
        return float(make_accountant(accountant, list(history)).get_epsilon(delta=delta))


def compose(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """(ε, δ) of several DP trainings on the same units, from their ``record`` blocks: the accountant run over
    all their steps at once, or None when the records cannot be composed that way (another accountant or unit
    each, or a record without its σ, q and steps).

    Training one model after another on the same patients is an adaptive composition, which the accountants
    analyse as one longer history of subsampled Gaussian steps (Opacus keeps a list of (σ, q, steps) segments for
    that reason). With PRV that is much tighter than adding the ε's (basic composition, Dwork & Roth 2014, Thm
    3.16): two trainings at ε = 8 (the default run's DP settings) compose to 11.6, not 16, at the same δ."""
    keys = ("noise_multiplier", "sample_rate", "steps", "delta")
    if not records or any(r.get(k) is None for r in records for k in keys):
        return None
    if len({r.get("accountant") for r in records}) != 1 or len({r.get("unit") for r in records}) != 1:
        return None
    accountant, delta = records[0]["accountant"], max(float(r["delta"]) for r in records)
    history = [(float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"])) for r in records]
    return {"epsilon": epsilon_spent(accountant, history, delta), "delta": delta, "accountant": accountant,
            "unit": records[0]["unit"], "history": [list(h) for h in history]}


#: noise multipliers above this learn nothing at any realistic batch size; calibration stops searching here
MAX_NOISE_MULTIPLIER = 1000.0
#: Opacus' epsilon_tolerance: the calibrated σ spends between target - tolerance and the target
CALIBRATION_TOLERANCE = 0.01


def calibrate(dp: DPConfig, sample_rate: float, steps: int) -> float:
    """The noise multiplier σ of the per-step mechanism: given, or the smallest σ reaching ``dp.epsilon``.

    Uses Opacus' ``get_noise_multiplier`` (binary search on the same accountant that records ε afterwards), so
    the recorded ε is at most the target (within its 0.01 tolerance). The search costs a dozen or more accountant
    evaluations (3 s for the default run's PRV accountant), and its answer depends on public settings only, so it
    is kept in the per-user cache (``cmraudit.user_cache``); a cached σ is used only after the accountant confirms
    that it spends no more than the target.
    """
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    if dp.delta is None:
        raise ConfigError("dp: resolve delta with for_units(n) before calibrating")
    import opacus

    from ..user_cache import fingerprint, read_json, write_json

    key = fingerprint("noise-multiplier", dp.accountant, float(dp.epsilon), float(dp.delta), float(sample_rate),
                      int(steps), CALIBRATION_TOLERANCE, opacus.__version__)
    cached = read_json("dp-calibration", key)
    if isinstance(cached, (int, float)) and 0 < cached <= MAX_NOISE_MULTIPLIER and \
            epsilon_spent(dp.accountant, [(float(cached), sample_rate, steps)], dp.delta) <= dp.epsilon:
        return float(cached)
    sigma = _search_noise_multiplier(dp, sample_rate, steps)
    write_json("dp-calibration", key, sigma)
    return sigma


def _search_noise_multiplier(dp: DPConfig, sample_rate: float, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    # Opacus' search doubles σ up to 1e6, a minute or more of accounting, before it gives up on an unreachable ε
    floor = epsilon_spent(dp.accountant, [(MAX_NOISE_MULTIPLIER, sample_rate, steps)], dp.delta)
    if floor > dp.epsilon:
        raise ConfigError(f"dp: cannot reach epsilon={dp.epsilon} at delta={dp.delta:g} with q={sample_rate:.4g} "
                          f"over {steps} steps: even sigma={MAX_NOISE_MULTIPLIER:g} spends epsilon={floor:.3g}")
    try:
        with _quiet():
            return float(get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=dp.delta,
                                              sample_rate=sample_rate, steps=steps, accountant=dp.accountant,
                                              epsilon_tolerance=CALIBRATION_TOLERANCE))
    except ValueError as exc:
        raise ConfigError(f"dp: cannot reach epsilon={dp.epsilon} at delta={dp.delta:g} with q={sample_rate:.4g} "
                          f"over {steps} steps ({exc})") from None


@contextlib.contextmanager
def _quiet():
    """Opacus' RDP analysis warns when its largest order is optimal, and its PRV analysis takes log(1 − q) = −inf
    when every unit is sampled (q = 1); the bounds stay valid, the library is silent."""
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def releases_noise(noise_multiplier: float, releases_per_step: int) -> float:
    """Noise multiplier of each of k Gaussian releases on the same batch, given the per-step mechanism's σ.

    k releases with sensitivity C and noise σ_k·C on one sampled batch compose (adaptively) to one Gaussian
    mechanism with sensitivity √k·C (Dong, Roth & Su, "Gaussian Differential Privacy", 2022, Cor. 3.3), i.e. a
    per-step noise multiplier σ = σ_k/√k. A GAN whose generator and discriminator both see private data makes
    k = 2 releases per step.
    """
    return float(noise_multiplier) * math.sqrt(releases_per_step)


# --------------------------------------------------------------------------------------------------- sampling
class PoissonSampler:
    """Poisson sampling of patients (one random slice each) or of slices, for DP-SGD.

    Every call returns the table rows of one step's batch; the batch is empty with probability (1 − q)^n.
    """

    def __init__(self, table: SliceTable, expected_batch: int, unit: str, generator: torch.Generator) -> None:
        if unit not in UNITS:
            raise ConfigError(f"dp.unit must be one of {', '.join(UNITS)}, got {unit!r}")
        self.unit = unit
        self.generator = generator
        if unit == "patient":
            groups = list(table.patient_rows().values())
            self._starts = torch.tensor([0] + [len(g) for g in groups]).cumsum(0)[:-1]
            self._sizes = torch.tensor([len(g) for g in groups])
            self._rows = torch.from_numpy(np.concatenate(groups))
        self.n_units = len(table.patient_ids) if unit == "patient" else len(table)
        self.sample_rate = min(1.0, expected_batch / self.n_units)

    @property
    def expected_batch(self) -> float:
        return self.sample_rate * self.n_units

    def __call__(self) -> torch.Tensor:
        included = torch.rand(self.n_units, generator=self.generator) < self.sample_rate
        if self.unit == "slice":
            return torch.nonzero(included).flatten()
        units = torch.nonzero(included).flatten()
        # one slice per sampled patient, uniformly among that patient's slices
        offset = (torch.rand(len(units), generator=self.generator) * self._sizes[units]).long()
        return self._rows[self._starts[units] + offset]


class UniformSampler:
    """Non-private training: ``batch_size`` distinct random slices per step (all slices when fewer)."""

    def __init__(self, table: SliceTable, batch_size: int, generator: torch.Generator) -> None:
        self.n = len(table)
        self.batch_size = min(batch_size, self.n)
        self.generator = generator

    def __call__(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator)[: self.batch_size]


# --------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class PrivatePlan:
    """How a DP run trains, fixed before its first step (and on resume, from the checkpoint's recorded σ).

    Built by ``plan_private_training``; the training loop reads it for the sampler, the Opacus wrapping, the accountant's steps and
    the privacy record, and writes ``checkpoint_state`` into each checkpoint's ``dp`` entry and ``mechanism`` into
    training.json's ``dp_mechanism``.
    """

    #: Poisson sampler of privacy units (patients or slices, ``DPConfig.unit``); its ``sample_rate`` q is what the
    #: accountant composes and its ``expected_batch`` what Opacus normalises the noisy gradient sum by
    sampler: PoissonSampler
    #: the DPConfig resolved for this data set's unit count (``DPConfig.for_units``): δ, accountant, clipping norm
    dp: DPConfig
    #: ``Generator.private_networks()``: the networks wrapped for DP-SGD, each with its own optimiser
    networks: tuple[str, ...]
    #: σ, the per-step noise multiplier the accountant charges for the whole update: ``DPConfig.noise_multiplier``
    #: or the smallest σ reaching ``DPConfig.epsilon`` over ``TrainConfig.steps`` (``calibrate``); on resume, read
    #: back from the checkpoint rather than calibrated again
    sigma: float
    #: the noise multiplier each private network's release uses so that together they spend ``sigma``
    #: (``releases_noise``)
    per_network_sigma: float

    def checkpoint_state(self, accountant: Any) -> dict[str, Any]:
        """A checkpoint's ``dp`` entry: what resuming needs to continue the same accountant with the same σ."""
        return {"noise_multiplier": self.sigma, "sample_rate": self.sampler.sample_rate, "delta": self.dp.delta,
                "history": [list(h) for h in accountant.history]}

    def mechanism(self) -> dict[str, Any]:
        """training.json's ``dp_mechanism``: how the recorded per-step σ is spent, one Gaussian release per private
        network (see ``releases_noise``)."""
        return {"private_networks": list(self.networks), "per_network_noise_multiplier": self.per_network_sigma,
                "expected_batch": self.sampler.expected_batch, "grad_sample_mode": self.dp.grad_sample_mode}


def plan_private_training(generator: Any, optimizers: dict, table: SliceTable, batch_size: int, steps: int,
                          dp: DPConfig | None, rng: torch.Generator, state: dict | None,
                          sigma: float | None = None) -> PrivatePlan | None:
    """The PrivatePlan of a DP run of ``steps`` steps at expected batch ``batch_size`` (None without DP); ``state``
    is the checkpoint being resumed, if any; ``sigma`` the per-step noise multiplier when already known (the
    other ranks of a distributed run take rank 0's rather than calibrating again)."""
    if dp is None:
        return None
    networks = tuple(generator.private_networks())
    missing = [n for n in networks if n not in optimizers or n not in generator.nets]
    if not networks or missing:
        raise PluginError(f"generator {generator.name!r}: private_networks() {list(networks)} must be non-empty "
                          f"networks with optimisers (missing: {missing})")
    sampler = PoissonSampler(table, batch_size, dp.unit, rng)
    resolved = dp.for_units(sampler.n_units)
    # on resume, reuse the recorded σ rather than re-running the calibration
    if sigma is None:
        sigma = state["dp"]["noise_multiplier"] if state else calibrate(resolved, sampler.sample_rate, steps)
    return PrivatePlan(sampler=sampler, dp=resolved, networks=networks, sigma=sigma,
                       per_network_sigma=releases_noise(sigma, len(networks)))
