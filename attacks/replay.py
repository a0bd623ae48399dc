"""Stencil replay: does conditioning on a patient's own mask reproduce that patient's image?

A mask-conditioned generator sees each training patient's mask next to the patient's image. If it memorised the
pair, feeding the same mask back (the "stencil") replays the patient: the output is closer to that patient's real
image than a non-member's output is to the non-member's real image under the same procedure. Non-members therefore
give the null distribution: a generator that only learned "anatomy → plausible image" produces outputs equally close
for both groups, since the mask alone explains the shared anatomy.

Score per slice: −‖G(mask) − x‖ / sqrt(HW) for the patient's real slice x and its own mask, vendor and pathology
(seeded sampling). Up to ``slices`` slices per patient (``[options.stencil-replay]``, default 4 on the standard
profile, 3 on the CPU ones; evenly spread from base to apex) keep the cost at a few sampling passes. The near-copy distance (shift/flip/intensity-robust) is saved too.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmraudit.api import Attack, AttackResult, AuditContext, Generator
from cmraudit.data.types import SliceTable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.neighbours import near_copy_pair_distance

from ._shared import generator_or_skip, pixel_scale


def spread_rows(table: SliceTable, per_patient: int) -> np.ndarray:
    """Up to ``per_patient`` rows of each patient, evenly spaced through its slices (all rows if per_patient ≤ 0)."""
    rows = []
    for _, r in sorted(table.patient_rows().items()):
        if 0 < per_patient < len(r):
            r = r[np.unique(np.linspace(0, len(r) - 1, per_patient).round().astype(int))]
        rows.append(r)
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


@torch.no_grad()
def replay(generator: Generator, table: SliceTable, seed: int, device: str) -> torch.Tensor:
    """The generator's outputs for every slice's own mask and labels, (N, 1, H, W), seeded."""
    rng = torch.Generator(device=str(device)).manual_seed(int(seed))
    out = []
    for start in range(0, len(table), 64):
        t = table.take(np.arange(start, min(start + 64, len(table))))
        out.append(generator.sample(t.masks.to(device), t.vendor_indices().to(device),
                                    t.pathology_indices().to(device), generator=rng).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 1, table.image_size, table.image_size))


class StencilReplay(Attack):
    name = "stencil-replay"
    kind = "replay"
    description = ("Condition the generator on each member's and non-member's own masks and measure how close the "
                   "output is to that patient's real slice; members closer than non-members means the model "
                   "replays patients from their stencils.")
    reference = ("cmraudit; in the spirit of reconstruction attacks on conditional generators (Carlini et al. "
                 "2023; Somepalli et al. 2023, Diffusion Art or Digital Forgery?)")

    @classmethod
    def profile_config(cls, profile: str) -> dict[str, Any]:
        # every replayed slice is one sampling run: 3 per patient on the CPU profiles, 4 on the standard profile
        return {"slices": 4 if profile == "standard" else 3}

    def applies_to(self, generator: Generator | None) -> str | None:
        return "needs the trained generator to condition on real masks" if generator is None else None

    def run(self, ctx: AuditContext) -> AttackResult:
        gen = generator_or_skip(ctx)
        settings = ctx.settings(self)
        per_patient = int(settings["slices"])
        tables, outputs, pixel, near = [], [], [], []
        for table in (ctx.members, ctx.nonmembers):
            t = table.take(spread_rows(table, per_patient))
            out = replay(gen, t, ctx.seed, ctx.device)  # same seed for both roles: the same noise law
            tables.append(t)
            outputs.append(out)
            pixel.append(((out - t.images.float()).flatten(1).norm(dim=1) / pixel_scale(t)).double().numpy())
            near.append(near_copy_pair_distance(out, t.images).numpy())
        k = min(int(settings.get("pairs", 8)), len(pixel[0]))
        closest = np.argsort(pixel[0], kind="stable")[:k]
        idx = torch.from_numpy(closest)
        arrays = {"member_pixel_distance": pixel[0], "nonmember_pixel_distance": pixel[1],
                  "member_near_copy_distance": near[0], "nonmember_near_copy_distance": near[1],
                  "pairs_mask": tables[0].masks[idx].numpy().astype(np.int8),
                  "pairs_real": tables[0].images[idx, 0].numpy().astype(np.float16),
                  "pairs_output": outputs[0][idx, 0].numpy().astype(np.float16)}
        details = {"slices_per_patient": per_patient, "distance": "l2/sqrt(HW)",
                   "median_distance": {"members": float(np.median(pixel[0])), "nonmembers": float(np.median(pixel[1]))},
                   "pairs": [{"patient": str(tables[0].patients[i]), "slice_index": int(tables[0].slice_index[i]),
                              "phase": str(tables[0].phases[i]), "pixel_distance": float(pixel[0][i])}
                             for i in closest]}
        return AttackResult(-pixel[0], -pixel[1], tables[0].patients.copy(), tables[1].patients.copy(),
                            level="slice", details=details, arrays=arrays)


@hookimpl
def cmraudit_register_attacks(register) -> None:
    register(StencilReplay)
