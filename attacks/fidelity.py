"""Fidelity [fidelity]: how close the synthetic set is to real cardiac MRI — and what two real sets score.

Every number compares the synthetic set with a real *target* split no model was trained on (test patients; the
reference or non-member split when the synthetic set was conditioned on test masks), and is computed a second time
for the *real counterpart* — the real slices whose masks conditioned the synthetic images (matched by patient,
phase and slice), or the non-members when those are unknown. The counterpart's number, ``details["real_vs_real"]``,
is what "as good as real" reads for this metric at this sample size.

Feature-space values use cmraudit's in-domain encoder (cmraudit.measure.features): "FD on cmraudit's in-domain encoder",
not FID, and only comparable within one run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmraudit.api import AuditContext, Metric, MetricValue, NotApplicable, content_key
from cmraudit.data.types import LABELS, SliceTable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.features import Encoder, get_encoder
from cmraudit.measure.fidelity_math import (
    feature_frechet_distance,
    fine_texture_power_ratio,
    kernel_inception_distance,
    mean_pairwise_ms_ssim,
    prdc,
    spectrum_distance,
    structure_intensity_w1,
)
from cmraudit.measure.segmenter import evaluate


@dataclass(frozen=True)
class FidelityConfig:
    kid_subsets: int = 50
    kid_subset_size: int = 100
    prdc_k: int = 5  # Naeem et al. 2020's recommended k
    msssim_pairs: int = 256
    fd_bootstrap: int = 20  # resamples for FD's percentile CI (0: no CI)
    max_images: int = 2000  # larger sets are subsampled (PRDC is quadratic in memory)


PROFILE_CONFIGS = {
    "smoke": FidelityConfig(kid_subsets=10, kid_subset_size=50, fd_bootstrap=0, max_images=500),
    "quick": FidelityConfig(),
    "standard": FidelityConfig(kid_subsets=100, kid_subset_size=1000, msssim_pairs=1000, fd_bootstrap=100,
                               max_images=5000),
}

#: name -> (better direction, what it measures)
VALUES = {
    "fd": ("lower", "Fréchet distance on cmraudit's in-domain encoder features (not FID)"),
    "kid": ("lower", "kernel distance (unbiased polynomial MMD^2) on the in-domain features, mean over subsets"),
    "precision": ("higher", "share of synthetic images inside the real feature manifold (k-NN balls across patients)"),
    "recall": ("higher", "share of real images inside the synthetic feature manifold"),
    "density": ("higher", "how many real neighbourhoods hold a synthetic image, / k (about 1 for real data)"),
    "coverage": ("higher", "share of real neighbourhoods holding at least one synthetic image"),
    **{f"wasserstein_{name}": ("lower", f"W1 between {name} pixel intensities (images in [-1, 1])")
       for name in ("LV", "MYO", "RV", "BG")},
    "psd_distance": ("lower", "mean |difference| of radial log10 power spectra (blur, noise, up-sampling artefacts)"),
    "fine_texture_gap": ("lower", "|log2| of the synthetic over the real images' power at the upper half of spatial "
                                  "frequencies: 0 as grainy as real; the ratio in details (> 1 grainier, < 1 smoother)"),
    "mask_dice": ("higher", "Dice of a members-trained segmenter on the synthetic images vs their conditioning masks"),
    "diversity_msssim": ("lower", "|mean MS-SSIM of slice pairs (different patients, same vendor): synthetic - real|"),
}


def fidelity_config(ctx: AuditContext) -> FidelityConfig:
    """The profile's FidelityConfig (``Fidelity.profile_config``) with the user's ``[options.fidelity]`` over it."""
    return FidelityConfig(**ctx.settings(Fidelity))


HELD_OUT = ("test", "reference", "nonmembers")  # never trained on, by the generator or by the encoder


def real_sets(ctx: AuditContext) -> tuple[str, SliceTable, str, SliceTable]:
    """(target description, target, baseline description, real counterpart), sharing no patient.

    The counterpart is the real slices the synthetic set was conditioned on, row for row (same patient, phase and
    slice), so it differs from the synthetic set only in its pixels; the target is every held-out patient left.
    When the conditioning slices are not all in the data, the counterpart is the non-members and the target the
    test and reference patients.
    """
    index = {key: i for i, key in enumerate(zip(ctx.data.patients.tolist(), ctx.data.phases.tolist(),
                                                ctx.data.slice_index.tolist()))}
    syn = ctx.synthetic
    rows = [index.get(key) for key in zip(syn.patients.tolist(), syn.phases.tolist(), syn.slice_index.tolist())]
    conditioning = set(syn.patients.tolist())
    if rows and all(r is not None for r in rows):
        source, counterpart, roles = "conditioning slices", ctx.data.take(rows), HELD_OUT
    else:
        source, counterpart, roles = "non-member slices", ctx.nonmembers, ("test", "reference")
    taken = conditioning | set(counterpart.patient_ids)
    used = [r for r in roles if set(getattr(ctx.split, r)) - taken]
    target = ctx.data.select_patients([p for r in used for p in getattr(ctx.split, r) if p not in taken])
    if len(target) <= PROFILE_CONFIGS["quick"].prdc_k or len(counterpart) <= PROFILE_CONFIGS["quick"].prdc_k:
        raise NotApplicable("too few held-out real slices outside the conditioning patients for a real target")
    return "+".join(used), target, source, counterpart


def _subsample(table: SliceTable, limit: int, seed: int) -> SliceTable:
    if len(table) <= limit:
        return table
    return table.take(np.sort(np.random.default_rng(seed).choice(len(table), limit, replace=False)))


def _fd_ci(real: np.ndarray, fake: np.ndarray, n_boot: int, seed: int) -> tuple[float, float] | None:
    if n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    boots = [feature_frechet_distance(real[rng.integers(0, len(real), len(real))],
                                      fake[rng.integers(0, len(fake), len(fake))]) for _ in range(n_boot)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(lo), float(hi)


def fidelity_numbers(target: SliceTable, target_features: np.ndarray, target_msssim: float, fake: SliceTable,
                     encoder: Encoder, config: FidelityConfig, seed: int) -> dict[str, MetricValue]:
    """Every fidelity value of ``fake`` against ``target`` (features and pairwise MS-SSIM of the target given)."""
    feats = encoder.features(fake.images).double().numpy()
    out: dict[str, MetricValue] = {}

    def put(name: str, value: float, ci: tuple[float, float] | None = None, **details: Any) -> None:
        out[name] = MetricValue(float(value), VALUES[name][0], ci, {"description": VALUES[name][1], **details})

    put("fd", feature_frechet_distance(target_features, feats), _fd_ci(target_features, feats, config.fd_bootstrap,
                                                                       seed), feature_dim=int(feats.shape[1]))
    kid, kid_ci, kid_std = kernel_inception_distance(target_features, feats, config.kid_subsets,
                                                     config.kid_subset_size, seed)
    put("kid", kid, kid_ci, subset_std=kid_std, subsets=config.kid_subsets,
        subset_size=min(config.kid_subset_size, len(feats), len(target_features)))
    try:  # neighbourhoods across patients (slices of one patient are near-duplicates, not independent samples)
        manifold, neighbours = prdc(target_features, feats, config.prdc_k, target.patients, fake.patients), \
            "other patients' slices"
    except ValueError:  # too few patients for k neighbours outside each one's own: fall back to any slice
        manifold, neighbours = prdc(target_features, feats, config.prdc_k), "any other slice"
    for name, value in manifold.items():
        put(name, value, k=config.prdc_k, neighbours=neighbours)
    for label, name in LABELS.items():
        put(f"wasserstein_{name}", structure_intensity_w1(target.images, target.masks, fake.images, fake.masks, label))
    put("psd_distance", spectrum_distance(target.images, fake.images))
    ratio = fine_texture_power_ratio(target.images, fake.images)
    put("fine_texture_gap", abs(float(np.log2(ratio))), ratio=ratio,
        reading="grainier than real" if ratio > 1 else "smoother than real")
    seg = evaluate(encoder.unet, fake, seed=seed, hd95=False)
    dice_ci = tuple(seg["dice_ci"]) if seg["dice_ci"] else None
    put("mask_dice", seg["dice"]["mean"], dice_ci, by_structure=seg["dice"],
        by_vendor={v: s["dice"]["mean"] for v, s in seg["by_vendor"].items()})
    ms, ms_err = mean_pairwise_ms_ssim(fake.images, config.msssim_pairs, seed, fake.patients, fake.vendors)
    put("diversity_msssim", abs(ms - target_msssim), samples_msssim=ms, samples_stderr=ms_err,
        real_msssim=target_msssim)
    return out


def _table_key(table: SliceTable) -> tuple[str, ...]:
    """What the target and baseline numbers read of a real table: pixels, patients and vendors."""
    return tuple(content_key(column) for column in (table.images, table.patients, table.vendors))


class Fidelity(Metric):
    name = "fidelity"
    category = "fidelity"
    description = ("FD/KID/PRDC on cmraudit's in-domain encoder, per-structure intensity W1, power spectrum, "
                   "mask consistency and MS-SSIM diversity, each next to a real-vs-real baseline")
    reference = ("Heusel 2017 (FD); Bińkowski 2018 (KID); Naeem 2020 (PRDC); Durall 2020 (spectra); "
                 "Odena 2017 (MS-SSIM diversity)")

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        """Every FidelityConfig field for ``profile`` (PROFILE_CONFIGS; an unknown profile gets quick's)."""
        return dataclasses.asdict(PROFILE_CONFIGS.get(profile, PROFILE_CONFIGS["quick"]))

    def compute(self, ctx: AuditContext) -> dict[str, MetricValue]:
        if len(ctx.synthetic) <= PROFILE_CONFIGS["quick"].prdc_k:
            raise NotApplicable(f"synthetic set too small ({len(ctx.synthetic)} images)")
        config = fidelity_config(ctx)
        encoder = get_encoder(ctx)
        role, target, source, counterpart = real_sets(ctx)
        target = _subsample(target, config.max_images, ctx.seed)
        fake = _subsample(ctx.synthetic, config.max_images, ctx.seed)
        counterpart = _subsample(counterpart, len(fake), ctx.seed)  # same size: FD and KID depend on it

        # the target's features and the real-vs-real baseline depend on real slices only: once per run, shared by
        # every model (the baseline is a whole fidelity_numbers pass on the counterpart)
        target_key = (encoder.key, _table_key(target), repr(config), ctx.seed)
        target_features, target_msssim = ctx.shared_memo(("fidelity-target", *target_key), lambda: (
            encoder.features(target.images).double().numpy(),
            mean_pairwise_ms_ssim(target.images, config.msssim_pairs, ctx.seed + 1, target.patients,
                                  target.vendors)[0]))
        values = fidelity_numbers(target, target_features, target_msssim, fake, encoder, config, ctx.seed)
        baseline = ctx.shared_memo(("fidelity-baseline", *target_key, _table_key(counterpart)), lambda: (
            fidelity_numbers(target, target_features, target_msssim, counterpart, encoder, config, ctx.seed)))
        for name, value in values.items():
            value.details.update(real_vs_real=baseline[name].value, real_vs_real_ci=baseline[name].ci,
                                 target=role, n_target=len(target), n_synthetic=len(fake), baseline_source=source)
        return values


@hookimpl
def cmraudit_register_metrics(register) -> None:
    register(Fidelity)
