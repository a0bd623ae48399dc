"""``example-attack``: a black-box membership attack from the synthetic set alone, calibrated and per patient.

For every real slice x of a candidate patient the attack measures d_syn(x), the distance to the closest synthetic
image, and d_ref(x), the distance to the closest image of the reference patients (real data the model never saw).
The slice score is log d_ref(x) − log d_syn(x): high when the generator produced something closer to x than
unseen real data usually is. This is the calibrated full black-box attack of Chen et al., "GAN-Leaks: A Taxonomy
of Membership Inference Attacks against Generative Models", CCS 2020 (Sec. 5.1 and 5.3), with the reference set
as the calibration model. A patient's score is the mean of its slice scores: the privacy unit is the patient.

Distances are Euclidean in a small feature space: the image average-pooled to at most ``feature_size`` pixels a
side, which keeps anatomy and contrast and drops the pixel noise that no generator reproduces.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cmraudit import Attack, AttackResult, AuditContext, NotApplicable


def pooled_features(images: torch.Tensor, feature_size: int) -> torch.Tensor:
    """(N, 1, H, W) → (N, F) float32 features: average pooling by an integer factor down to ≤ feature_size."""
    factor = max(1, -(-images.shape[-1] // feature_size))  # ceil division
    return F.avg_pool2d(images.float(), factor, ceil_mode=True).flatten(1)


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Distance from every query row to its closest bank row (chunked so memory stays bounded)."""
    return torch.cat([torch.cdist(queries[i:i + chunk], bank).min(dim=1).values
                      for i in range(0, len(queries), chunk)]) if len(queries) else queries.new_zeros(0)


def per_patient_mean(scores: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean score per patient, patients in first-appearance order."""
    ids = np.array(list(dict.fromkeys(patients.tolist())), dtype=str)
    return np.array([scores[patients == p].mean() for p in ids], dtype=np.float64), ids


class CalibratedNearestNeighbourAttack(Attack):
    name = "example-attack"
    kind = "mia"
    description = "per-patient distance to the closest synthetic image, calibrated by the closest reference image"
    reference = ("Chen, Yu, Zhang, Fritz. GAN-Leaks: A Taxonomy of Membership Inference Attacks against "
                 "Generative Models. CCS 2020")

    def run(self, ctx: AuditContext) -> AttackResult:
        # run.toml: [options.example-attack] feature_size = 32   (or --set options.example-attack.feature_size=32)
        feature_size = int(ctx.options.get(self.name, {}).get("feature_size", 16))
        synthetic, reference = ctx.synthetic, ctx.reference
        if len(synthetic) == 0 or len(reference) == 0:
            raise NotApplicable("needs a non-empty synthetic set and reference patients for calibration")
        syn = pooled_features(synthetic.images, feature_size)
        ref = pooled_features(reference.images, feature_size)
        scores, patients, arrays = {}, {}, {}
        for role, table in (("member", ctx.members), ("nonmember", ctx.nonmembers)):
            query = pooled_features(table.images, feature_size)
            d_syn = nearest_distance(query, syn).double().numpy()
            d_ref = nearest_distance(query, ref).double().numpy()
            tiny = 1e-8  # an exact copy has d_syn = 0: keep its score finite (and very high)
            slice_scores = np.log(d_ref + tiny) - np.log(d_syn + tiny)
            scores[role], patients[role] = per_patient_mean(slice_scores, table.patients)
            arrays[f"{role}_slice_distance_synthetic"] = d_syn
            arrays[f"{role}_slice_distance_reference"] = d_ref
        return AttackResult(scores["member"], scores["nonmember"], patients["member"], patients["nonmember"],
                            level="patient", arrays=arrays,
                            details={"feature_size": feature_size, "aggregation": "mean of slice scores",
                                     "synthetic_images": len(synthetic), "reference_slices": len(reference)})
