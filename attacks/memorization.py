"""Memorisation: is a synthetic image a (near) copy of one training patient's image?

For every synthetic image: the distance to the nearest image of each training patient and of each held-out
(non-member) patient, in up to three spaces —
  pixel      l2 / sqrt(HW) (per-pixel RMS difference);
  near-copy  sqrt(2 − 2ρ), ρ the correlation maximised over shifts ≤ 2 px and flips after per-image intensity
             normalisation (``cmraudit.measure.neighbours``): catches shifted, flipped and re-windowed copies;
  encoder    the in-domain encoder's features (``cmraudit.measure.features``), when available.

Reported (in ``details`` / ``arrays``):
  * DCR distributions to train and to holdout, and the DCR share P(d_train < d_holdout) with a CI from
    resampling synthetic, training and held-out patients. The training side is subsampled to as many patients as
    the holdout (averaged over repeats), so a model that does not memorise scores 50% (as in SynthEval / the
    "DCR share" of Platzer & Reutterer 2021).
  * The memorisation ratio d1/d2 < 1/3 (Carlini et al. 2023, "Extracting Training Data from Diffusion Models";
    Gu et al. 2023, DiffMemorize) at patient level: d1 = the nearest training patient, d2 = the nearest *other*
    training patient — the privacy unit is the patient, and a patient's own neighbouring slices must not hide a
    copy. An image is memorised when the ratio is below 1/3 in pixel or near-copy space.
  * The share of memorised synthetic images and of training patients with at least one memorised image.
  * The k closest (lowest-ratio) synthetic/training pairs, images included, for the report gallery.

Membership scores (level "patient"): for every member and non-member patient, minus the near-copy distance from
the patient's closest slice to any synthetic image — a patient copied by the generator has a synthetic twin.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmraudit.api import Attack, AttackResult, AuditContext, NotApplicable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.neighbours import group_nearest, near_copy_group_nearest

from ._shared import encoder_features, images, pixel_scale

RATIO_THRESHOLD = 1 / 3


def dcr_share(d_train: np.ndarray, d_holdout: np.ndarray, groups: np.ndarray, repeats: int = 20, seed: int = 0,
              n_boot: int = 500) -> tuple[np.ndarray, float, tuple[float, float]]:
    """P(d_train < d_holdout) (ties count ½) with equal numbers of patients on both sides.

    d_train (S, P_train) and d_holdout (S, P_holdout) are per-patient nearest distances. The larger side is
    subsampled to the smaller side's patient count ``repeats`` times; returns the per-image share averaged over
    repeats and its mean. The CI resamples all three sources of chance — the synthetic images' conditioning
    patients (``groups``), the training patients and the held-out patients — because with few patients the
    particular patients drawn, not the number of synthetic images, dominate the spread."""
    rng = np.random.default_rng(seed)
    n = min(d_train.shape[1], d_holdout.shape[1])
    per_image = np.zeros(d_train.shape[0])
    for _ in range(repeats):
        tr = d_train[:, rng.choice(d_train.shape[1], n, replace=False)].min(1)
        ho = d_holdout[:, rng.choice(d_holdout.shape[1], n, replace=False)].min(1)
        per_image += (tr < ho) + 0.5 * (tr == ho)
    per_image /= repeats
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    boot = np.empty(n_boot)
    for b in range(n_boot):
        tr = d_train[:, rng.integers(0, d_train.shape[1], n)].min(1)
        ho = d_holdout[:, rng.integers(0, d_holdout.shape[1], n)].min(1)
        weight = np.bincount(rng.integers(0, group_index.max() + 1, group_index.max() + 1),
                             minlength=group_index.max() + 1)[group_index]
        boot[b] = (weight * ((tr < ho) + 0.5 * (tr == ho))).sum() / max(weight.sum(), 1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return per_image, float(per_image.mean()), (float(lo), float(hi))


def _second_smallest(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (index of the smallest column, smallest value, second smallest value)."""
    order = np.argsort(d, axis=1)[:, :2]
    rows = np.arange(d.shape[0])
    return order[:, 0], d[rows, order[:, 0]], d[rows, order[:, 1]]


class Memorization(Attack):
    name = "memorization"
    kind = "memorization"
    reads_samples_only = True
    description = ("Nearest training vs held-out patient for every synthetic image (pixel, near-copy robust to "
                   "shifts/flips/intensity, and encoder space): DCR share, memorisation ratio d1/d2 < 1/3, "
                   "memorised patients, closest pairs.")
    reference = ("Carlini et al. 2023, Extracting Training Data from Diffusion Models; Gu et al. 2023, On "
                 "Memorization in Diffusion Models")

    def run(self, ctx: AuditContext) -> AttackResult:
        train, hold, syn = ctx.members, ctx.nonmembers, ctx.synthetic
        if len(syn) == 0:
            raise NotApplicable("the synthetic set is empty")
        if len(train.patient_ids) < 2 or len(hold.patient_ids) < 1:
            raise NotApplicable("needs at least two member patients and one non-member patient")
        settings = ctx.settings(self)
        shift = int(settings.get("near_copy_max_shift", 2))
        spaces: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        scale = pixel_scale(syn)
        d_tr, i_tr, ids_tr = group_nearest(images(syn), images(train), train.patients, device=ctx.device)
        d_ho, _, ids_ho = group_nearest(images(syn), images(hold), hold.patients, device=ctx.device)
        spaces["pixel"] = (d_tr.numpy() / scale, d_ho.numpy() / scale, i_tr.numpy(), ids_tr, ids_ho)
        d_tr, i_tr, _ = near_copy_group_nearest(images(syn), images(train), train.patients, max_shift=shift,
                                                device=ctx.device)
        d_ho, _, _ = near_copy_group_nearest(images(syn), images(hold), hold.patients, max_shift=shift,
                                             device=ctx.device)
        spaces["near_copy"] = (d_tr.numpy(), d_ho.numpy(), i_tr.numpy(), ids_tr, ids_ho)
        feats = encoder_features(ctx, [syn, train, hold], settings)
        if feats is not None:
            d_tr, i_tr, _ = group_nearest(feats[0], feats[1], train.patients, device=ctx.device)
            d_ho, _, _ = group_nearest(feats[0], feats[2], hold.patients, device=ctx.device)
            spaces["encoder"] = (d_tr.numpy(), d_ho.numpy(), i_tr.numpy(), ids_tr, ids_ho)

        details: dict[str, Any] = {"ratio_threshold": RATIO_THRESHOLD, "near_copy_max_shift": shift,
                                   "spaces": list(spaces), "dcr_share": {}, "memorised_share": {}}
        arrays: dict[str, np.ndarray] = {}
        ratios: dict[str, np.ndarray] = {}
        repeats = int(settings.get("dcr_repeats", 20))
        for space, (dt, dh, _, _, _) in spaces.items():
            _, d1, d2 = _second_smallest(dt)
            ratios[space] = d1 / np.maximum(d2, 1e-12)
            _, share, ci = dcr_share(dt, dh, syn.patients, repeats, ctx.seed)
            details["dcr_share"][space] = {"value": share, "ci": list(ci)}
            details["memorised_share"][space] = float((ratios[space] < RATIO_THRESHOLD).mean())
            arrays[f"dcr_train_{space}"] = dt.min(1)
            arrays[f"dcr_holdout_{space}"] = dh.min(1)
            arrays[f"ratio_{space}"] = ratios[space]
        memorised = (ratios["pixel"] < RATIO_THRESHOLD) | (ratios["near_copy"] < RATIO_THRESHOLD)
        arrays["memorised"] = memorised
        near_tr, near_ho, near_idx, _, _ = spaces["near_copy"]
        nn_patient = ids_tr[near_tr.argmin(1)]
        hit = set(nn_patient[memorised].tolist())
        details["memorised"] = {"share": float(memorised.mean()), "n": int(memorised.sum()), "of": int(len(syn)),
                                "patients_share": len(hit) / len(ids_tr), "patients": sorted(hit)}
        details["pairs"] = self._pairs(ctx, ratios["near_copy"], near_tr, near_idx, ids_tr, arrays)
        return AttackResult(-near_tr.min(0), -near_ho.min(0), np.asarray(ids_tr, str), np.asarray(ids_ho, str),
                            level="patient", details=details, arrays=arrays)

    def _pairs(self, ctx: AuditContext, ratio: np.ndarray, d_tr: np.ndarray, idx: np.ndarray, ids: np.ndarray,
               arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The k lowest-ratio synthetic images with their nearest training image (images kept for the gallery)."""
        k = min(int(ctx.settings(self).get("pairs", 8)), len(ratio))
        chosen = np.argsort(ratio, kind="stable")[:k]
        col = d_tr[chosen].argmin(1)
        train_rows = idx[chosen, col]
        arrays["pairs_synthetic_index"] = chosen
        arrays["pairs_train_index"] = train_rows
        arrays["pairs_synthetic"] = ctx.synthetic.images[torch.from_numpy(chosen), 0].numpy().astype(np.float16)
        arrays["pairs_train"] = ctx.members.images[torch.from_numpy(train_rows), 0].numpy().astype(np.float16)
        return [{"synthetic_index": int(s), "train_index": int(t), "train_patient": str(ids[c]),
                 "near_copy_distance": float(d_tr[s, c]), "ratio": float(ratio[s])}
                for s, t, c in zip(chosen, train_rows, col)]


@hookimpl
def cmraudit_register_attacks(register) -> None:
    register(Memorization)
