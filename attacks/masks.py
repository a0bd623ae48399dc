"""Audits of generated masks (two-stage generation: a mask generator, then an image generator on its masks).

They apply only when the synthetic set's masks were generated (``ctx.synthetic.meta["mask_source"] ==
"generated"``); with real stencils the masks are real patients' by construction and these questions do not arise.

* ``mask-plausibility`` (metric): the anatomical checks of ``cmraudit.measure.anatomy`` on the generated masks, beside
  the same checks on held-out real masks (reference and test patients), which are the baseline: real masks break
  some rules too (open basal rings, apical RV fragments).
* ``mask-memorization`` (attack): does the mask generator replay a member's anatomy? The distance between masks is
  1 - mean foreground Dice after small-shift alignment (``cmraudit.measure.mask_distance``). Each member and
  non-member patient is scored by how close the generated set comes to any of its masks (minus the smallest
  distance), so a generator that copies training anatomy gives members higher scores (the patient-level
  distance-to-closest-record attack of Chen et al. 2020, "GAN-Leaks", on label maps). Also reported: the DCR
  share, P(closest member closer than the closest held-out patient) per generated mask with equal patient counts
  (Platzer & Reutterer 2021), and its real baseline — the same share for the non-members' own masks, which no
  model produced (≈ 0.5).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cmraudit.api import Attack, AttackResult, AuditContext, Metric, MetricValue, NotApplicable
from cmraudit.data.types import SliceTable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure import anatomy
from cmraudit.measure.mask_distance import dice_distance, per_patient_min
from cmraudit.stats.patients import cluster_bootstrap_mean

from .memorization import dcr_share


def generated_masks_or_skip(ctx: AuditContext) -> SliceTable:
    """The synthetic set when its masks were generated; NotApplicable otherwise or when it is empty."""
    source = ctx.synthetic.meta.get("mask_source")
    if source != "generated":
        raise NotApplicable(f"the synthetic set's masks are not generated (mask source {source!r}): they are real "
                            "patients' stencils, audited by stencil-replay")
    if len(ctx.synthetic) == 0:
        raise NotApplicable("the synthetic set is empty")
    return ctx.synthetic


def held_out(ctx: AuditContext, exclude: set[str] = frozenset()) -> SliceTable:
    """Reference and test patients' slices (never trained on), less any patient in ``exclude``."""
    patients = [p for p in [*ctx.split.reference, *ctx.split.test] if p not in exclude]
    return ctx.data.select_patients(patients)


class MaskPlausibility(Metric):
    name = "mask-plausibility"
    category = "fidelity"
    description = ("Share of generated masks that pass the short-axis anatomy checks (LV one region enclosed by a "
                   "myocardial ring, RV one crescent beside it, apart from the LV), beside held-out real masks; "
                   "structure areas compared by W1, overall and per pathology.")
    reference = ("Painchaud et al. 2020, Cardiac Segmentation with Strong Anatomical Guarantees; Bernard et al. "
                 "2018 (ACDC)")

    def compute(self, ctx: AuditContext) -> dict[str, MetricValue]:
        synthetic = generated_masks_or_skip(ctx)
        real = held_out(ctx)
        if len(real) == 0:
            real = ctx.data
        summary = anatomy.compare(synthetic.masks, real.masks, synthetic.pathologies, real.pathologies)
        plausible = anatomy.check_masks(synthetic.masks).plausible.astype(np.float64)
        share, ci = cluster_bootstrap_mean(plausible, synthetic.patients, n_boot=400, seed=ctx.seed)
        w1 = [v for v in summary["area_w1"].values() if v is not None]
        real_share = summary["real"]["plausible_share"]
        # ``real_vs_real`` (as fidelity's values carry it): what the real masks score, the "as good as real" line
        return {
            "plausible": MetricValue(share, "higher", ci, details={
                **summary, "real_vs_real": real_share,
                "description": "share of generated masks passing every anatomical check"}),
            "plausible_gap": MetricValue(float(summary["plausible_gap"]), "higher", details={
                "real_plausible": real_share, "real_vs_real": 0.0,
                "description": "plausible share of the generated masks minus that of the real ones"}),
            "area_w1": MetricValue(float(np.mean(w1)), "lower", details={
                "per_structure": summary["area_w1"],
                "description": "W1 between generated and real structure areas (fraction of the image), mean over "
                               "RV, MYO, LV"}),
        }


#: a generated mask "replays" a member when it is this many times closer to the member's mask than to any held-out
#: patient's (the memorisation attack's 1/3 for images)
REPLAY_RATIO = 1 / 3


class MaskMemorization(Attack):
    name = "mask-memorization"
    kind = "memorization"
    reads_samples_only = True
    description = ("Does the mask generator replay a member's anatomy? Member vs non-member patients scored by how "
                   "close the generated masks come to their own (1 - Dice after a small shift), and the DCR share "
                   "against held-out patients with its real baseline.")
    reference = ("Chen et al. 2020, GAN-Leaks; Platzer & Reutterer 2021, Holdout-Based Empirical Assessment of "
                 "Mixed-Type Synthetic Data")

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return {"max_shift": 2 if profile == "standard" else 1, "dcr_repeats": 20}

    def run(self, ctx: AuditContext) -> AttackResult:
        synthetic = generated_masks_or_skip(ctx)
        members, nonmembers = ctx.members, ctx.nonmembers
        if len(members.patient_ids) < 2 or len(nonmembers.patient_ids) < 1:
            raise NotApplicable("needs at least two member patients and one non-member patient")
        holdout = held_out(ctx, exclude=set(synthetic.patients.tolist()))
        settings = ctx.settings(self)
        shift, repeats = int(settings.get("max_shift", 1)), int(settings.get("dcr_repeats", 20))

        def closest(source: SliceTable, real: SliceTable) -> tuple[np.ndarray, np.ndarray]:
            return per_patient_min(dice_distance(source.masks, real.masks, shift, ctx.device), real.patients)

        d_members, member_ids = closest(synthetic, members)
        d_nonmembers, nonmember_ids = closest(synthetic, nonmembers)
        details: dict[str, Any] = {"max_shift": shift, "distance": "1 - mean foreground Dice",
                                   "n_generated": int(len(synthetic))}
        arrays = {"closest_member_distance": d_members.min(1), "closest_nonmember_distance": d_nonmembers.min(1)}
        share_d = np.minimum(d_members.min(1), d_nonmembers.min(1))
        details["closest_distance"] = {"mean": float(share_d.mean()), "min": float(share_d.min())}
        details["copies_share"] = float((d_members.min(1) <= 1e-6).mean())  # exact copies of a member's mask
        if len(holdout.patient_ids):
            d_hold, _ = closest(synthetic, holdout)
            _, share, ci = dcr_share(d_members, d_hold, synthetic.patients, repeats, ctx.seed)
            # the real baseline: non-members' own masks stand in for the generated set (no model made them)
            b_members, _ = closest(nonmembers, members)
            b_hold, _ = closest(nonmembers, holdout)
            _, base, base_ci = dcr_share(b_members, b_hold, nonmembers.patients, repeats, ctx.seed)
            details["dcr_share"] = {"value": share, "ci": list(ci), "real_baseline": base,
                                    "real_baseline_ci": list(base_ci), "holdout_patients": len(holdout.patient_ids)}
            arrays["closest_holdout_distance"] = d_hold.min(1)
        # per generated mask, for the release filter: a replay is much closer to a member's mask than to any
        # never-trained-on patient's (the ratio rule of cmraudit.attacks.memorization, on 1 - Dice)
        reference = arrays.get("closest_holdout_distance", arrays["closest_nonmember_distance"])
        arrays["mask_replayed"] = arrays["closest_member_distance"] < REPLAY_RATIO * reference
        details["replayed_share"] = float(arrays["mask_replayed"].mean())
        return AttackResult(-d_members.min(0), -d_nonmembers.min(0), np.asarray(member_ids, str),
                            np.asarray(nonmember_ids, str), level="patient", details=details, arrays=arrays)


@hookimpl
def cmraudit_register_attacks(register) -> None:
    register(MaskMemorization)


@hookimpl
def cmraudit_register_metrics(register) -> None:
    register(MaskPlausibility)
