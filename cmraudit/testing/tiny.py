"""Small, fast building blocks for plugin contract checks (``cmraudit.testing.contracts``): a tiny cardiac-like data set, a
tiny reference generator, a plain StepRunner, training through cmraudit's loop when present, and a small
AuditContext.

They exist so that ``cmraudit.testing.contracts`` can exercise a plugin in a second or two on one CPU thread, without the
phantom or any download. They are ordinary, honest implementations: the data has the label
geometry of a short-axis slice (RV crescent beside an LV blood pool inside a myocardial ring), the generator
learns per-structure intensities by gradient descent, and the runner really zeroes, back-propagates, clips and
steps.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..api import AuditContext, Batch, Conditioning, Generator, StepRunner
from ..data.types import PATHOLOGIES, VENDORS, SliceTable

#: mean bright-blood cine intensity per label (BG, RV, MYO, LV) in [-1, 1]: blood bright, myocardium dark
_LABEL_INTENSITY = (-0.6, 0.45, -0.2, 0.6)


def tiny_table(n_patients: int = 12, slices_per_patient: int = 2, image_size: int = 16, seed: int = 0) -> SliceTable:
    """A deterministic data set of short-axis-like slices, every patient with its own anatomy and contrast.

    Labels follow ACDC (0 BG, 1 RV, 2 MYO, 3 LV). Vendors and pathologies cycle over the patients so that every
    split role sees several of each.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    images, masks, patients, vendors, pathologies, phases, index = [], [], [], [], [], [], []
    for p in range(n_patients):
        centre = image_size / 2 + rng.normal(0, image_size * 0.03, size=2)
        radius = image_size * rng.uniform(0.14, 0.2)
        contrast = rng.uniform(0.7, 1.1)  # scanner- and patient-dependent contrast
        for s in range(slices_per_patient):
            r_lv = radius * (1 - 0.15 * s)  # apical slices are smaller
            d = np.hypot(yy - centre[0], xx - centre[1])
            d_rv = np.hypot(yy - centre[0], xx - (centre[1] - 1.6 * r_lv))
            mask = np.zeros((image_size, image_size), dtype=np.int64)
            mask[(d_rv < 1.3 * r_lv) & (d > 1.35 * r_lv)] = 1
            mask[(d >= r_lv) & (d < 1.35 * r_lv)] = 2
            mask[d < r_lv] = 3
            mean = np.asarray(_LABEL_INTENSITY, dtype=np.float32)[mask] * contrast
            image = np.clip(mean + rng.normal(0, 0.08, size=mean.shape), -1, 1).astype(np.float32)
            images.append(image[None])
            masks.append(mask)
            patients.append(f"tiny{p:03d}")
            vendors.append(VENDORS[p % len(VENDORS)])
            pathologies.append(PATHOLOGIES[p % 5])
            phases.append("ED" if s % 2 == 0 else "ES")
            index.append(s)
    return SliceTable(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)), np.array(patients),
                      np.array(vendors), np.array(pathologies), np.array(phases), np.array(index),
                      source=f"tiny:{n_patients}")


class PlainRunner(StepRunner):
    """The smallest faithful StepRunner: zero_grad, backward, clip to ``max_grad_norm``, step. No AMP, no EMA."""

    def __init__(self, generator: Generator, optimizers: dict[str, torch.optim.Optimizer],
                 max_grad_norm: float = 1.0, after_backward: Any = None) -> None:
        self.generator = generator
        self.optimizers = optimizers
        self.max_grad_norm = max_grad_norm
        #: called as after_backward(network_name) between backward and step (contract checks inspect gradients)
        self.after_backward = after_backward
        self.optimized: list[str] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def autocast(self) -> Any:
        return contextlib.nullcontext()

    def optimize(self, network: str, loss: torch.Tensor) -> None:
        if network not in self.optimizers:
            raise KeyError(f"runner.optimize({network!r}): no optimiser for that network "
                           f"(make_optimizers returned {sorted(self.optimizers)})")
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not loss.requires_grad:
            raise ValueError(f"runner.optimize({network!r}) needs a scalar loss tensor with a gradient, got "
                             f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        optimizer = self.optimizers[network]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.after_backward is not None:
            self.after_backward(network)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        optimizer.step()
        self.optimized.append(network)


def train_steps(generator: Generator, table: SliceTable, steps: int, batch_size: int = 4, seed: int = 0,
                after_backward: Any = None) -> list[dict[str, float]]:
    """``steps`` training steps on random batches of ``table`` with a PlainRunner; returns each step's logs."""
    rng = np.random.default_rng(seed)
    runner = PlainRunner(generator, generator.make_optimizers(), after_backward=after_backward)
    generator.train()
    logs = []
    for _ in range(steps):
        rows = rng.choice(len(table), size=min(batch_size, len(table)), replace=False)
        logs.append(generator.training_step(Batch.from_table(table, rows), runner))
    return logs


def sample_table(generator: Generator, conditions: SliceTable, seed: int = 0, batch_size: int = 64) -> SliceTable:
    """A synthetic SliceTable: one image per row of ``conditions``, which keeps its masks, labels and patient ids."""
    generator.eval()
    rng = torch.Generator().manual_seed(seed)
    parts = []
    with torch.no_grad():
        for start in range(0, len(conditions), batch_size):
            batch = Batch.from_table(conditions, np.arange(start, min(start + batch_size, len(conditions))))
            parts.append(generator.sample(batch.masks, batch.vendor, batch.pathology, generator=rng).float())
    images = torch.cat(parts) if parts else conditions.images[:0].clone()
    return SliceTable(images, conditions.masks.clone(), conditions.patients, conditions.vendors,
                      conditions.pathologies, conditions.phases, conditions.slice_index, source="synthetic",
                      meta={"mask_source": "reference"})


# --------------------------------------------------------------------------------------------------- generator
class _StructureIntensityNet(nn.Module):
    """Per-pixel Gaussian whose mean and log-std depend on the pixel's label, the vendor and the pathology,
    followed by a learnt 3x3 blur of the mean (partial-volume edges). Embedding + Conv2d: Opacus-compatible."""

    def __init__(self, conditioning: Conditioning) -> None:
        super().__init__()
        self.n_labels = conditioning.n_labels
        self.label_vendor = nn.Embedding(conditioning.n_labels * conditioning.n_vendors, 2)
        self.pathology = nn.Embedding(conditioning.n_pathologies, 1)
        self.blur = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.label_vendor.weight.zero_()
            self.pathology.weight.zero_()
            self.blur.weight.fill_(0.0)
            self.blur.weight[0, 0, 1, 1] = 1.0

    def forward(self, masks: torch.Tensor, vendor: torch.Tensor, pathology: torch.Tensor):
        params = self.label_vendor(vendor[:, None, None] * self.n_labels + masks.long())  # (B, H, W, 2)
        mean = params[..., 0] + self.pathology(pathology)[:, :, None]
        mean = torch.tanh(self.blur(mean[:, None]))
        log_std = params[..., 1][:, None].clamp(-5.0, 0.0) - 2.0
        return mean, log_std


@dataclass
class TinyConfig:
    lr: float = 0.05


class TinyGenerator(Generator):
    """A per-structure Gaussian intensity model: the reference generator the contract checks use by default.

    Trained by maximum likelihood (per-pixel Gaussian negative log-likelihood); its membership signal is the
    negative NLL of an example, the "loss attack" signal of Yeom et al. (CSF 2018).
    """

    name = "contract-tiny"
    family = "other"
    description = "per-structure Gaussian intensities (for contract checks)"
    Config = TinyConfig

    def __init__(self, config: TinyConfig, conditioning: Conditioning) -> None:
        super().__init__(config, conditioning)
        self.nets = {"net": _StructureIntensityNet(conditioning)}

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.Adam(self.nets["net"].parameters(), lr=self.config.lr, foreach=True)}

    def _nll(self, batch: Batch) -> torch.Tensor:
        mean, log_std = self.nets["net"](batch.masks, batch.vendor, batch.pathology)
        z = (batch.images - mean) / log_std.exp()
        return (0.5 * z ** 2 + log_std + 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)

    def training_step(self, batch: Batch, runner: StepRunner) -> dict[str, float]:
        batch = batch.to(runner.device)
        with runner.autocast():
            loss = self._nll(batch).mean()
        runner.optimize("net", loss)
        return {"nll": float(loss.detach())}

    def sample(self, masks, vendor, pathology, generator=None):
        mean, log_std = self.nets["net"](masks, vendor, pathology)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return (mean + log_std.exp() * noise).clamp(-1.0, 1.0)

    def membership_signal(self, batch: Batch, generator=None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"neg_nll": -self._nll(batch)}


def trained_tiny_generator(table: SliceTable, image_size: int | None = None, steps: int = 30,
                           seed: int = 0) -> TinyGenerator:
    """A TinyGenerator fitted to ``table`` in ``steps`` steps (well under a second)."""
    torch.manual_seed(seed)
    gen = TinyGenerator(TinyConfig(), Conditioning(image_size or table.image_size))
    train_steps(gen, table, steps, batch_size=8, seed=seed)
    return gen.eval()


def _throwaway_folder() -> Path:
    """A temporary work folder, removed when the interpreter exits (callers that keep files pass ``workdir``)."""
    folder = Path(tempfile.mkdtemp(prefix="cmraudit-context-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def make_audit_context(generator: Generator | None = None, table: SliceTable | None = None, seed: int = 0,
                       profile: str = "smoke", options: dict[str, Any] | None = None,
                       workdir: Path | None = None) -> AuditContext:
    """A small AuditContext: tiny data (16 patients), a patient-level split, a generator trained on the members
    (a TinyGenerator unless one is given) and its synthetic set conditioned on the reference patients' masks."""
    from ..data.splits import make_split

    table = table if table is not None else tiny_table(n_patients=16, seed=seed)
    split = make_split(table, seed=seed)
    members = table.select_patients(split.members)
    if generator is None:
        generator = trained_tiny_generator(members, steps=40, seed=seed)
    synthetic = sample_table(generator, table.select_patients(split.reference), seed=seed)

    def train_shadow(patients: list[str], shadow_seed: int) -> Generator:
        torch.manual_seed(shadow_seed)
        shadow = type(generator)(generator.config, generator.conditioning)
        train_steps(shadow, table.select_patients(patients), 40, batch_size=8, seed=shadow_seed)
        return shadow.eval()

    return AuditContext(model="contract-check", generator=generator, data=table, split=split, synthetic=synthetic,
                        profile=profile, seed=seed, device="cpu", workdir=workdir or _throwaway_folder(),
                        options=dict(options or {}), train_shadow=train_shadow)


