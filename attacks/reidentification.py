"""Re-identification: does a synthetic image show THIS patient, even when it is no pixel copy?

Membership inference asks "was this patient trained on?"; the disclosure an ethics board fears is a synthetic image
in which a training patient can be recognised. Packhäuser et al. (2022, "Deep learning-based patient
re-identification is able to exploit the biometric nature of medical chest X-ray data", Sci Rep 12:14851) showed
that a network trained to verify "same patient?" re-identifies patients from images it has never seen, and that
it re-identifies training patients in synthetic images. This attack does the same for cardiac MRI:

1. An identity network (``cmraudit.measure.identity``: a small CNN, unit embeddings, supervised contrastive loss
   with the other slices and the other phase of a patient as positives) is trained on the REFERENCE patients' real
   slices only. Its verification AUC on the held-out TEST patients (same-patient vs different-patient slice pairs,
   patient-bootstrap CI) is reported; if its CI does not clear ``min_verification_auc`` (0.6) the network cannot
   re-identify real patients, so it cannot vouch for synthetic ones either, and the attack is skipped
   (``NotApplicable``, the reason stating the AUC) instead of reporting a reassuring number.
2. Every synthetic image and every member and non-member slice is embedded. The similarity of a synthetic image to
   a patient is its cosine similarity to that patient's most similar slice, as Packhäuser et al. verify image
   against image. The embedding is trained to bring all of a patient's slices (both phases, every position)
   together, so a new rendering of the patient lands near some of them; a slice-level match also keeps the
   position: an apical image of a patient is compared with that patient's apical slices, where a centroid would
   average base and apex (on the phantom, centroids left two thirds of copied images unflagged). Patients with more
   slices get more chances, but members and non-members are drawn from one population, so the comparison stays
   fair.

Membership score (level "patient"): for each member and non-member patient, the mean of the ``top_k`` (3) largest
similarities between a synthetic image and the patient. A leak may be a handful of images among thousands, so a
mean over all images would dilute it; the top few rather than the single best keep one chance look-alike from
deciding. Members and non-members face the same synthetic set, so AUC, CI and TPR at low FPR (from
``cmraudit.stats``) are comparable between them.

Per synthetic image: its best identity match among the member and non-member patients, and the similarity. The
threshold is calibrated on non-members: a generator that never saw the members treats members and non-members
alike (both are unseen draws from one population), so the best match of its images to the non-member patients
shows how similar an image gets to an unseen patient by chance. With as many members as non-members, the threshold
exceeded by ``flag_rate`` (1%) of the images' best non-member matches is exceeded by the same share of best member
matches: that share is the false-flag rate. With n_M members and n_N non-members the best of more patients is
larger, so the threshold is the best-non-member similarity exceeded by a share 1 − (1 − flag_rate)^(n_N / n_M)
of the images (exact for independent patients, conservative when similarities are correlated). An image is
flagged when its best match is a member above the threshold; reported are the share of flagged images and the
share of member patients with at least one flagged image (and, for comparison, the share of images whose best
match is a non-member above the threshold).

Arrays (in ``ctx.synthetic``'s order): ``synthetic_best_patient`` (str), ``synthetic_similarity`` (float),
``synthetic_flagged`` (bool), plus each image's best member and best non-member similarity.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmraudit.api import Attack, AttackResult, AuditContext, NotApplicable, content_key
from cmraudit.data.types import SliceTable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.identity import IdentityConfig, get_identity_net, verify

from ._shared import images, scored_part

#: identity-network training steps per profile: ~4 s on one CPU thread at 64 px for quick (verification AUC ≈ 0.99
#: on the 12 held-out patients of phantom:60), ~1 s at 32 px for smoke (≈ 0.88 on phantom:20, whose split leaves
#: only 4 reference patients to learn from), GPU-sized for standard
PROFILE_STEPS = {"smoke": 150, "quick": 100, "standard": 1000}


def patient_similarity(z_syn: np.ndarray, z_real: np.ndarray, patients: np.ndarray, chunk: int = 1024
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(patient ids in first-appearance order, (S, P) similarity of each synthetic image to each patient): the
    cosine similarity to the patient's most similar slice. Computed in chunks of synthetic images."""
    ids = np.asarray(list(dict.fromkeys(patients.tolist())), dtype=str)
    rank = {p: i for i, p in enumerate(ids.tolist())}
    column_patient = np.asarray([rank[p] for p in patients.tolist()], dtype=np.int64)
    by_patient = np.argsort(column_patient, kind="stable")
    starts = np.searchsorted(column_patient[by_patient], np.arange(len(ids)))
    real = z_real[by_patient].T
    out = np.empty((len(z_syn), len(ids)))
    for i in range(0, len(z_syn), chunk):
        out[i:i + chunk] = np.maximum.reduceat(z_syn[i:i + chunk] @ real, starts, axis=1)
    return ids, out


class ReidentificationAttack(Attack):
    name = "reidentification"
    kind = "memorization"
    reads_samples_only = True
    description = ("Patient re-identification: an identity network trained on reference patients (verified on "
                   "test patients) matches every synthetic image to its most similar member or non-member patient; "
                   "flags images that re-identify a member above a threshold calibrated on non-members.")
    reference = ("Packhäuser et al. 2022, Deep learning-based patient re-identification is able to exploit the "
                 "biometric nature of medical chest X-ray data, Sci Rep 12:14851")

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        return {"identity_steps": PROFILE_STEPS.get(profile, PROFILE_STEPS["quick"])}

    @staticmethod
    def identity_config(settings: dict[str, Any]) -> IdentityConfig:
        default = IdentityConfig()
        return IdentityConfig(
            steps=int(settings.get("identity_steps", default.steps)),
            dim=int(settings.get("identity_dim", default.dim)),
            width=int(settings.get("identity_width", default.width)),
            batch_patients=int(settings.get("identity_batch_patients", default.batch_patients)),
            batch_slices=int(settings.get("identity_batch_slices", default.batch_slices)),
            lr=float(settings.get("identity_lr", default.lr)),
            temperature=float(settings.get("identity_temperature", default.temperature)),
            augment=bool(settings.get("identity_augment", default.augment)))

    def run(self, ctx: AuditContext) -> AttackResult:
        syn = ctx.synthetic
        if len(syn) == 0:
            raise NotApplicable("the synthetic set is empty")
        if len(ctx.split.members) < 1 or len(ctx.split.nonmembers) < 1:
            raise NotApplicable("needs at least one member and one non-member patient")
        if len(ctx.split.reference) < 2:
            raise NotApplicable("needs at least two reference patients to train the identity network on")
        if len(ctx.split.test) < 2:
            raise NotApplicable("needs at least two test patients to verify the identity network on")
        settings = ctx.settings(self)
        net = get_identity_net(ctx, self.identity_config(settings))
        details: dict[str, Any] = self._verification(ctx, net, settings)

        members, nonmembers = ctx.members, ctx.nonmembers
        z_syn, z_m, z_n = (self._embed(ctx, net, t) for t in (syn, members, nonmembers))
        ids_m, sim_m = patient_similarity(z_syn, z_m, members.patients)  # (S, n_M) cosine similarities
        ids_n, sim_n = patient_similarity(z_syn, z_n, nonmembers.patients)  # (S, n_N)

        k = max(1, min(int(settings.get("top_k", 3)), len(syn)))
        score_m = -np.sort(-sim_m, axis=0)[:k].mean(0)
        score_n = -np.sort(-sim_n, axis=0)[:k].mean(0)

        best_m, best_n = sim_m.max(1), sim_n.max(1)
        is_member = best_m >= best_n  # ties: the member (the disclosure side)
        best_patient = np.where(is_member, ids_m[sim_m.argmax(1)], ids_n[sim_n.argmax(1)]).astype(str)
        similarity = np.maximum(best_m, best_n)

        alpha = float(settings.get("flag_rate", 0.01))
        if not 0 < alpha < 1:
            raise ValueError(f"reidentification: flag_rate must lie in (0, 1), got {alpha}")
        # a best match over n_M members vs over n_N non-members: see the module docstring
        exceed = 1 - (1 - alpha) ** (len(ids_n) / len(ids_m))
        threshold = float(np.quantile(best_n, 1 - exceed, method="higher"))
        flagged = is_member & (similarity > threshold)
        nonmember_hits = ~is_member & (similarity > threshold)
        hit = sorted(set(best_patient[flagged].tolist()))
        details.update({
            "score": f"mean of the top {k} similarities of a synthetic image to the patient (cosine, to the patient's "
                     "most similar slice)",
            "top_k": k,
            "threshold": threshold,
            "calibration": {"flag_rate": alpha, "nonmember_exceed_share": exceed, "n_synthetic": len(syn),
                            "resolvable": bool(len(syn) * exceed >= 1), "n_members": len(ids_m),
                            "n_nonmembers": len(ids_n)},
            "reidentified": {"images_share": float(flagged.mean()), "n_images": int(flagged.sum()),
                             "of_images": len(syn), "patients_share": len(hit) / len(ids_m),
                             "n_patients": len(hit), "of_patients": len(ids_m), "patients": hit,
                             "threshold": threshold},
            "nonmember_matches_above_threshold_share": float(nonmember_hits.mean()),
        })
        arrays = {"synthetic_best_patient": best_patient, "synthetic_similarity": similarity.astype(np.float64),
                  "synthetic_flagged": flagged.astype(bool), "synthetic_best_member_similarity": best_m,
                  "synthetic_best_nonmember_similarity": best_n}
        return AttackResult(score_m, score_n, ids_m, ids_n, level="patient", details=details, arrays=arrays)

    @staticmethod
    def _embed(ctx: AuditContext, net: torch.nn.Module, table: SliceTable) -> np.ndarray:
        """The identity embeddings of ``table`` (float64), once per run for the same slices."""
        return ctx.shared_memo(("identity-embedding", net.fingerprint, content_key(table.images)),
                               lambda: net.embed(images(table)).double().numpy())

    def _verification(self, ctx: AuditContext, net: torch.nn.Module, settings: dict[str, Any]) -> dict[str, Any]:
        """The identity network's verification AUC on the test patients; NotApplicable when it cannot re-identify."""
        limit = int(settings.get("verification_slices_per_patient", 8)) or None
        test = scored_part(ctx, "test", limit)
        n_boot = int(settings.get("verification_boot", 1000))
        # the same for every model of the run: the network and the test patients do not change
        check = ctx.shared_memo(("identity-verification", net.fingerprint, content_key(test.images),
                                 content_key(test.patients), n_boot, ctx.seed),
                                lambda: verify(net, test, n_boot=n_boot, seed=ctx.seed))
        floor = float(settings.get("min_verification_auc", 0.6))
        if check.ci[0] <= floor:
            raise NotApplicable(
                f"the identity network cannot re-identify real patients: verification AUC {check.auc:.3f} "
                f"(95% CI {check.ci[0]:.3f}-{check.ci[1]:.3f}) on {check.n_patients} held-out test patients; its CI "
                f"must clear {floor:g} (min_verification_auc)")
        return {**check.as_details(), "min_verification_auc": floor}


@hookimpl
def cmraudit_register_attacks(register) -> None:
    register(ReidentificationAttack)
