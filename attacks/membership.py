"""Membership-inference attacks on a generator: samples-only (black-box) and white-box.

Every attack scores each member and non-member slice (higher = more likely a member); all summary numbers come
from ``cmraudit.stats``. Nothing is tuned on the evaluated members: thresholds, bandwidths and noise levels are
chosen on reference patients (or on shadow models trained on them).

Samples-only (need ``ctx.synthetic``):
  gan-leaks      −min_s ‖x − s‖ over the synthetic set (Chen et al. 2020, GAN-Leaks, full black-box).
  gan-leaks-cal  the same minus the distance to the nearest reference (real, non-training) image — the paper's
                 calibration with the population in place of a reference generator.
  monte-carlo    share of synthetic images inside an ε-ball around x (Hilprecht et al. 2019); ε from reference
                 patients only.
  domias         log p_synthetic(x) − log p_reference(x), Gaussian KDEs in a reduced feature space
                 (van Breugel et al. 2023, DOMIAS).
White-box (need ``Generator.membership_signal``; one attack name per signal family):
  loss           diffusion / flow per-example loss at a noise level chosen on reference data (Carlini et al.
                 2023; Matsumoto et al. 2023).
  elbo           VAE evidence lower bound (Hilprecht et al. 2019).
  logan          GAN discriminator score (Hayes et al. 2019, LOGAN).
  secmi          SecMI t-error (Duan et al. 2023) and
  pia            PIA (Kong et al. 2024): both need the optional generator methods below.

SecMI and PIA need the optional generator contract ``cmraudit.api.DenoiserView`` (diffusion and flow families;
noise level in [0, 1], 0 = data):
  ``forward_noise(x0, level: float, noise) -> x_level``       the forward process at that noise level;
  ``predict_x0_and_noise(x, level: float, batch) -> (x0_hat, noise_hat)``  the model's split of a noisy image into
  data and noise, conditioned on ``batch``'s masks and labels. A deterministic (DDIM / ODE-Euler) step from level
  a to b is then ``forward_noise(*predict_x0_and_noise(x_a, a, batch), b)`` for both families.

Settings: each attack's profile-dependent defaults are in its ``profile_config``; everything is read through
``ctx.settings(attack)``, where ``[options.attacks]`` and ``[options.NAME]`` override them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmraudit.api import (
    Attack,
    AttackResult,
    AuditContext,
    Batch,
    DenoiserView,
    Generator,
    NotApplicable,
    content_key,
)
from cmraudit.data.types import SliceTable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.neighbours import count_within, knn

from ._shared import (
    encoder_features,
    generator_or_skip,
    images,
    membership_signals,
    model_signals,
    pixel_scale,
    reference_z,
    scored_part,
    slice_result,
)


# --------------------------------------------------------------------------------------------------- samples only
def _nearest_synthetic(ctx: AuditContext, table) -> np.ndarray:
    """Per-pixel RMS distance of each image of ``table`` to its nearest synthetic image."""
    found = knn(images(table), images(ctx.synthetic), k=1, device=ctx.device)
    return found.distance[:, 0].numpy() / pixel_scale(table)


class GanLeaks(Attack):
    name = "gan-leaks"
    reads_samples_only = True
    description = "Distance to the nearest synthetic image (full black-box; needs only the samples)."
    reference = "Chen et al. 2020, GAN-Leaks: A Taxonomy of Membership Inference Attacks against Generative Models"

    def run(self, ctx: AuditContext) -> AttackResult:
        dm, dn = _nearest_synthetic(ctx, ctx.members), _nearest_synthetic(ctx, ctx.nonmembers)
        return slice_result(ctx, -dm, -dn, {"space": "pixel", "distance": "l2/sqrt(HW)"},
                            {"member_distance": dm, "nonmember_distance": dn})


class GanLeaksCalibrated(Attack):
    name = "gan-leaks-cal"
    reads_samples_only = True
    description = ("GAN-Leaks calibrated: distance to the nearest synthetic image minus the distance to the nearest "
                   "reference patient's image, so atypical images are not mistaken for non-members.")
    reference = GanLeaks.reference

    def run(self, ctx: AuditContext) -> AttackResult:
        ref = images(ctx.reference)
        if len(ref) == 0:
            raise NotApplicable("the split has no reference patients to calibrate with")
        scores = []
        for table in (ctx.members, ctx.nonmembers):
            d_syn = _nearest_synthetic(ctx, table)
            d_ref = knn(images(table), ref, k=1, device=ctx.device).distance[:, 0].numpy() / pixel_scale(table)
            scores.append(d_ref - d_syn)
        return slice_result(ctx, scores[0], scores[1], {"space": "pixel", "calibration": "reference patients"})


class MonteCarlo(Attack):
    name = "monte-carlo"
    reads_samples_only = True
    description = ("Share of synthetic images within an ε-ball of the query; ε is the median over reference images "
                   "of the distance to their k-th nearest synthetic image.")
    reference = ("Hilprecht et al. 2019, Monte Carlo and Reconstruction Membership Inference Attacks against "
                 "Generative Models")

    def run(self, ctx: AuditContext) -> AttackResult:
        syn, ref = images(ctx.synthetic), images(ctx.reference)
        if len(ref) == 0:
            raise NotApplicable("the split has no reference patients to choose ε on")
        k = max(1, int(round(ctx.settings(self).get("ball_share", 0.01) * len(syn))))
        eps = float(knn(ref, syn, k=k, device=ctx.device).distance[:, -1].median())
        counts = [count_within(images(t), syn, eps, device=ctx.device).numpy() / len(syn)
                  for t in (ctx.members, ctx.nonmembers)]
        return slice_result(ctx, counts[0], counts[1], {"space": "pixel", "epsilon": eps / pixel_scale(ctx.synthetic),
                                                        "k": k})


def _reduce(fit: torch.Tensor, *others: torch.Tensor, dim: int) -> list[np.ndarray]:
    """PCA fitted on ``fit`` only (reference data), applied to every set: a space low-dimensional enough for KDE."""
    x = fit.double().flatten(1)
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    basis = v[:dim].T
    return [((t.double().flatten(1) - mean) @ basis).numpy() for t in (fit, *others)]


class Domias(Attack):
    name = "domias"
    reads_samples_only = True
    description = ("Density ratio p_synthetic(x) / p_reference(x) with Gaussian KDEs in a PCA space fitted on "
                   "reference patients (in-domain encoder features when available, else pixels).")
    reference = ("van Breugel et al. 2023, Membership Inference Attacks against Synthetic Data through Overfitting "
                 "Detection (DOMIAS)")

    def run(self, ctx: AuditContext) -> AttackResult:
        from scipy.stats import gaussian_kde

        settings = ctx.settings(self)
        tables = [ctx.reference, ctx.synthetic, ctx.members, ctx.nonmembers]
        feats = encoder_features(ctx, tables, settings)
        space = "encoder" if feats is not None else "pixel"
        feats = feats if feats is not None else [images(t) for t in tables]
        n_ref = len(tables[0])
        dim = int(min(settings.get("dim", 8), max(1, n_ref // 10), feats[0].flatten(1).shape[1]))
        ref, syn, mem, non = _reduce(*feats, dim=dim)
        p_syn, p_ref = gaussian_kde(syn.T), gaussian_kde(ref.T)
        score = [p_syn.logpdf(x.T) - p_ref.logpdf(x.T) for x in (mem, non)]
        return slice_result(ctx, *score, {"space": space, "pca_dim": dim, "bandwidth": "scott"})


# --------------------------------------------------------------------------------------------------- white box
def choose_signal(ctx: AuditContext, generator: Generator, keys: list[str], prefer: str | None = None
                  ) -> tuple[str | None, dict]:
    """Which signal to use, decided without the evaluated members.

    A single (or the preferred) key is used as is; the ``signal`` setting (``[options.attacks]``) pins one.
    Otherwise, when shadow models can be trained and the ``loss`` attack's ``signal_selection`` setting is
    ``"shadow"`` (its standard-profile default), the key with the best AUC between a shadow's reference-training and
    held-out reference patients wins (the shadow is shared with ``lira``); otherwise None: combine the
    reference-standardised signals (``reference_z``). The selection settings are the ``loss`` attack's whichever
    family asks, so one ``[options.loss]`` table governs them."""
    settings = ctx.settings(LossAttack)
    pinned = settings.get("signal")
    if pinned in keys:
        return pinned, {"selection": "option"}
    if prefer in keys:
        return prefer, {"selection": "family default"}
    if len(keys) == 1:
        return keys[0], {"selection": "only signal"}
    if ctx.train_shadow is None or settings["signal_selection"] != "shadow":
        return None, {"selection": "reference-standardised mean over signals"}
    from cmraudit.stats import auc

    from .lira import shadow_models

    aucs: dict[str, list[float]] = {k: [] for k in keys}
    for shadow, inside in shadow_models(ctx, int(settings.get("selection_shadows", 1))):
        ref = ctx.reference
        sig = membership_signals(shadow, ref, ctx.seed, ctx.device)
        is_in = np.isin(ref.patients, list(inside))
        for k in keys:
            aucs[k].append(auc(sig[k][is_in], sig[k][~is_in]))
    best = max(keys, key=lambda k: np.mean(aucs[k]))
    return best, {"selection": "shadow AUC on reference patients",
                  "selection_auc": {k: float(np.mean(v)) for k, v in aucs.items()}}


class _ScoringAttack(Attack):
    """An attack that runs the network on every scored slice (``scored``): a few slices per patient on the CPU
    profiles."""

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        # each scored slice costs network calls: 10 per patient keep the CPU profiles cheap (see scored_part); the
        # standard profile scores every slice. Users set it for every such attack in [options.attacks].
        return {"max_slices_per_patient": None if profile == "standard" else 10}

    def scored(self, ctx: AuditContext, role: str) -> SliceTable:
        return scored_part(ctx, role, ctx.settings(self).get("max_slices_per_patient"))


class _SignalAttack(_ScoringAttack):
    """Threshold attack on one family's white-box signal."""

    families: tuple[str, ...] = ()
    prefer: str | None = None

    def applies_to(self, generator: Generator | None) -> str | None:
        if generator is None:
            return "white-box attack: needs the trained generator"
        if generator.family not in self.families:
            return f"the signal is specific to {'/'.join(self.families)} generators, not {generator.family}"
        if not generator.has_membership_signal():
            return f"generator {generator.name!r} exposes no membership_signal"
        return None

    def run(self, ctx: AuditContext) -> AttackResult:
        gen = generator_or_skip(ctx)
        tables = self.scored(ctx, "members"), self.scored(ctx, "nonmembers")
        mem, non = (model_signals(ctx, t) for t in tables)
        keys = sorted(mem)
        key, details = choose_signal(ctx, gen, keys, self.prefer)
        if key is None:
            ref = model_signals(ctx, self.scored(ctx, "reference"))
            sm, sn = reference_z(ref, mem), reference_z(ref, non)
        else:
            sm, sn = mem[key], non[key]
        from cmraudit.stats import auc

        # reported for the sweep plot only: choosing on these would be optimistic
        sweep = {k: auc(mem[k], non[k]) for k in keys}
        arrays = {f"member_{k}": mem[k] for k in keys} | {f"nonmember_{k}": non[k] for k in keys}
        return slice_result(ctx, sm, sn, {"signal": key or "combined", **details, "sweep_auc_not_for_selection": sweep},
                            arrays, tables)


class LossAttack(_SignalAttack):
    name = "loss"
    families = ("diffusion", "flow", "other")
    description = ("Per-example denoising loss; the noise level is chosen on reference patients via one shadow "
                   "model (shared with lira) or, without shadows, the reference-standardised levels are averaged.")
    reference = ("Carlini et al. 2023, Extracting Training Data from Diffusion Models; Matsumoto et al. 2023, "
                 "Membership Inference Attacks against Diffusion Models")

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        # a selection shadow costs one more training run: the default on the standard profile only
        return {**super().profile_config(profile),
                "signal_selection": "shadow" if profile == "standard" else "reference"}


class ElboAttack(_SignalAttack):
    name = "elbo"
    families = ("vae",)
    prefer = "elbo"
    description = "The VAE's evidence lower bound per example: training images are explained better."
    reference = MonteCarlo.reference


class LoganAttack(_SignalAttack):
    name = "logan"
    families = ("gan",)
    prefer = "disc_logit"
    description = "The GAN discriminator's score: an overfit discriminator rates training images as more real."
    reference = "Hayes et al. 2019, LOGAN: Membership Inference Attacks Against Generative Models"


# --------------------------------------------------------------------------------------------------- SecMI / PIA
_DENOISER_METHODS = ("forward_noise", "predict_x0_and_noise")  # DenoiserView's members, named when one is missing


class _DenoiserAttack(_ScoringAttack):
    """An attack on the generator's ``DenoiserView`` (see ``cmraudit.api.DenoiserView``)."""

    def applies_to(self, generator: Generator | None) -> str | None:
        if generator is None:
            return "white-box attack: needs the trained generator"
        if not isinstance(generator, DenoiserView):
            missing = [m for m in _DENOISER_METHODS if not callable(getattr(generator, m, None))]
            return (f"generator {generator.name!r} ({generator.family}) does not implement cmraudit.DenoiserView "
                    f"(lacks the optional denoiser methods {', '.join(missing)})")
        return None

    def denoiser(self, ctx: AuditContext) -> DenoiserView:
        """The context's generator as a denoiser, or NotApplicable with the reason."""
        gen = generator_or_skip(ctx)
        reason = self.applies_to(gen)
        if reason or not isinstance(gen, DenoiserView):
            raise NotApplicable(reason or "not a DenoiserView")
        return gen

    def signal(self, gen: DenoiserView, batch: Batch, ctx: AuditContext) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def run(self, ctx: AuditContext) -> AttackResult:
        gen = self.denoiser(ctx)
        scores = []
        tables = self.scored(ctx, "members"), self.scored(ctx, "nonmembers")
        for table in tables:
            out = []
            for start in range(0, len(table), 64):
                batch = Batch.from_table(table, np.arange(start, min(start + 64, len(table)))).to(ctx.device)
                out.append(self.signal(gen, batch, ctx).double().cpu())
            scores.append(torch.cat(out).numpy())
        return slice_result(ctx, scores[0], scores[1], self.details(ctx), tables=tables)

    def details(self, ctx: AuditContext) -> dict:
        return {}


def _ddim_step(gen: DenoiserView, x: torch.Tensor, a: float, b: float, batch: Batch) -> torch.Tensor:
    x0_hat, noise_hat = gen.predict_x0_and_noise(x, a, batch)
    return gen.forward_noise(x0_hat, b, noise_hat)


def clean_split(ctx: AuditContext, gen: DenoiserView, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's split of the clean images (level 0) into data and noise: SecMI's first inversion step and PIA's
    noise estimate, the same network call for both. Memoised by the batch's content in the context (per model and
    audit), so the second of the two attacks reads it; deterministic, so reading it equals recomputing it."""
    memo = ctx.cache.setdefault("denoiser:clean-split", {})
    key = tuple(content_key(v) for v in (batch.images, batch.masks, batch.vendor, batch.pathology, batch.phase,
                                         batch.position) if v is not None)
    if key not in memo:
        memo[key] = gen.predict_x0_and_noise(batch.images, 0.0, batch)
    return memo[key]


class SecMI(_DenoiserAttack):
    name = "secmi"
    description = ("SecMI t-error: invert the image deterministically to noise level t, step once to t+Δ and back; "
                   "members come back closer (t = 0.1, Δ = 0.01 as in the paper's 100/1000, interval 10; "
                   "Δ = 0.05 on the CPU profiles).")
    reference = "Duan et al. 2023, Are Diffusion Models Vulnerable to Membership Inference Attacks? (SecMI)"

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        # the paper's interval (10 of 1000 steps) means 10 network calls to invert; 0.05 (2 calls) on CPU profiles
        return {**super().profile_config(profile), "interval": 0.01 if profile == "standard" else 0.05}

    def _levels(self, ctx: AuditContext) -> tuple[float, float]:
        settings = ctx.settings(self)
        return float(settings.get("level", 0.1)), float(settings["interval"])

    def signal(self, gen: DenoiserView, batch: Batch, ctx: AuditContext) -> torch.Tensor:
        t, delta = self._levels(ctx)
        x = batch.images
        grid = np.linspace(0.0, t, max(1, int(round(t / delta))) + 1)
        x0_hat, noise_hat = clean_split(ctx, gen, batch)
        x = gen.forward_noise(x0_hat, float(grid[1]), noise_hat)  # the inversion's first step, from level 0
        for a, b in zip(grid[1:-1], grid[2:]):  # the rest of the deterministic inversion to t
            x = _ddim_step(gen, x, float(a), float(b), batch)
        x_next = _ddim_step(gen, x, t, t + delta, batch)
        x_back = _ddim_step(gen, x_next, t + delta, t, batch)
        return -(x_back - x).pow(2).flatten(1).mean(1)

    def details(self, ctx: AuditContext) -> dict:
        t, delta = self._levels(ctx)
        return {"level": t, "interval": delta}


class PIA(_DenoiserAttack):
    name = "pia"
    description = ("PIA: noise the image to level t with the model's own noise estimate at t = 0 and compare the "
                   "model's estimate at t with it; members are consistent (t = 0.2 as in the paper's 200/1000).")
    reference = "Kong et al. 2024, An Efficient Membership Inference Attack for the Diffusion Model by Proximal Initialization (PIA)"

    def signal(self, gen: DenoiserView, batch: Batch, ctx: AuditContext) -> torch.Tensor:
        t = float(ctx.settings(self).get("level", 0.2))
        _, noise0 = clean_split(ctx, gen, batch)
        x_t = gen.forward_noise(batch.images, t, noise0)
        _, noise_t = gen.predict_x0_and_noise(x_t, t, batch)
        return -(noise_t - noise0).pow(2).flatten(1).mean(1)

    def details(self, ctx: AuditContext) -> dict:
        return {"level": float(ctx.settings(self).get("level", 0.2)), "norm": "l2"}


@hookimpl
def cmraudit_register_attacks(register) -> None:
    for cls in (GanLeaks, GanLeaksCalibrated, MonteCarlo, Domias, LossAttack, ElboAttack, LoganAttack, SecMI, PIA):
        register(cls)
