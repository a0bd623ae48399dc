"""Reference-model membership inference: offline LiRA with shadow generators trained on reference patients.

Carlini et al. 2022 ("Membership inference attacks from first principles"), offline variant: K shadow generators of
the same kind (same config and DP) are trained on random halves of the *reference* patients, so no shadow ever sees
an evaluated member or non-member. For each evaluated slice x the shadows give the distribution of the attack signal
when x is *out*; the score is how far the target's signal lies above it,

    score(x) = (s_target(x) − μ_out(x)) / σ_out,

with σ_out pooled over all examples (the paper's fixed-variance variant, recommended for few shadows). This is the
one-sided Gaussian likelihood test of "x is out" up to a monotone map, and it calibrates away per-example difficulty
as RMIA's reference-model ratio does (Zarifzadeh et al. 2024).

Signal: the generator's white-box ``membership_signal`` when it has one (the signal chosen on the shadows' own
reference in/out patients), else the samples-only GAN-Leaks distance −min_s ‖x − s‖ to each model's samples
(shadows sample with the same masks and labels as the target's synthetic set).

Cost: K extra training runs per model (K = ``shadows`` in ``[options.lira]``, default 4) plus scoring. Shadows are trained
through ``ctx.train_shadow`` (cached on disk by the run) and shared within the audit via ``ctx.cache``.
"""
from __future__ import annotations

import numpy as np
import torch

from cmraudit.api import Attack, AttackResult, AuditContext, Generator, NotApplicable
from cmraudit.hookspecs import hookimpl
from cmraudit.measure.neighbours import knn

from ._shared import generator_or_skip, images, membership_signals, pixel_scale, slice_result

DEFAULT_SHADOWS = 4


def shadow_subsets(reference: list[str], k: int, seed: int) -> list[list[str]]:
    """K random halves of the reference patients, deterministic from ``seed`` (subset j never depends on K)."""
    patients = sorted(reference)
    out = []
    for j in range(k):
        rng = np.random.default_rng([seed, 7919, j])
        out.append(sorted(rng.permutation(patients)[: max(1, len(patients) // 2)].tolist()))
    return out


def shadow_plan(reference: list[str], k: int, seed: int) -> list[tuple[list[str], int]]:
    """The ``(patients, seed)`` of each of the ``k`` shadows an audit with this run seed asks ``train_shadow`` for,
    in order: what a distributed executor trains ahead of the audit (which then reloads them). Empty when there
    are too few reference patients for shadows."""
    if k < 1 or len(reference) < 2:
        return []
    return [(patients, seed + 1000 + j) for j, patients in enumerate(shadow_subsets(reference, k, seed))]


def planned_shadows(ctx: AuditContext) -> list[tuple[list[str], int]]:
    """``shadow_plan`` for the audit ``ctx`` describes: the shadows ``LiRA.run`` will ask ``ctx.train_shadow`` for
    (only the split, profile, seed and options of ``ctx`` are read, so it can be built before the model exists)."""
    return shadow_plan(ctx.split.reference, shadow_count(ctx.settings(LiRA)), ctx.seed)


def shadow_count(settings: dict) -> int:
    """K from LiRA's settings (``ctx.settings(LiRA)``: ``[options.lira] shadows``)."""
    return int(settings.get("shadows", DEFAULT_SHADOWS))


def shadow_models(ctx: AuditContext, k: int) -> list[tuple[Generator, set[str]]]:
    """The first ``k`` shadow generators and the reference patients each was trained on (cached in ctx.cache)."""
    if ctx.train_shadow is None:
        raise NotApplicable("this audit cannot train shadow models (no train_shadow in the context)")
    if len(ctx.split.reference) < 2:
        raise NotApplicable("shadow models need at least two reference patients")
    out = []
    for j, (patients, seed) in enumerate(shadow_plan(ctx.split.reference, k, ctx.seed)):
        key = ("shadow", j, tuple(patients))
        if key not in ctx.cache:
            ctx.cache[key] = ctx.train_shadow(patients, seed)
        out.append((ctx.cache[key], set(patients)))
    return out


@torch.no_grad()
def _sample_like(generator: Generator, ctx: AuditContext) -> torch.Tensor:
    """Samples from ``generator`` with the target synthetic set's masks and labels, seeded."""
    syn = ctx.synthetic
    rng = torch.Generator(device=str(ctx.device)).manual_seed(int(ctx.seed))
    out = []
    for start in range(0, len(syn), 64):
        rows = np.arange(start, min(start + 64, len(syn)))
        t = syn.take(rows)
        out.append(generator.sample(t.masks.to(ctx.device), t.vendor_indices().to(ctx.device),
                                    t.pathology_indices().to(ctx.device), generator=rng).float().cpu())
    return torch.cat(out)


def _distance_signal(samples: torch.Tensor, table, ctx: AuditContext) -> np.ndarray:
    return -knn(images(table), samples, k=1, device=ctx.device).distance[:, 0].numpy() / pixel_scale(table)


class LiRA(Attack):
    name = "lira"
    trains_shadows = True
    description = (f"Offline LiRA: K shadow generators (option shadows, default {DEFAULT_SHADOWS}) trained on "
                   "random halves of the reference patients calibrate each example's signal. Cost: K extra "
                   "training runs per model.")
    reference = "Carlini et al. 2022, Membership Inference Attacks From First Principles (LiRA)"

    def applies_to(self, generator: Generator | None) -> str | None:
        if generator is None:
            return "needs the trained generator (shadow models are trained the same way)"
        return None

    def run(self, ctx: AuditContext) -> AttackResult:
        gen = generator_or_skip(ctx)
        k = shadow_count(ctx.settings(self))
        if k < 1:
            raise NotApplicable("[options.lira] shadows is 0")
        shadows = shadow_models(ctx, k)
        targets = (ctx.members, ctx.nonmembers)
        if gen.has_membership_signal():
            key, selection = self._choose_key(ctx, shadows)
            target = [membership_signals(gen, t, ctx.seed, ctx.device)[key] for t in targets]
            out = [[membership_signals(s, t, ctx.seed, ctx.device)[key] for s, _ in shadows] for t in targets]
            signal = {"signal": key, **selection}
        else:
            target = [_distance_signal(images(ctx.synthetic), t, ctx) for t in targets]
            out = [[_distance_signal(_sample_like(s, ctx), t, ctx) for s, _ in shadows] for t in targets]
            signal = {"signal": "nearest-synthetic distance (pixel)"}
        out_m, out_n = np.stack(out[0]), np.stack(out[1])  # (K, N)
        mu_m, mu_n = out_m.mean(0), out_n.mean(0)
        if k >= 2:
            resid = np.concatenate([(out_m - mu_m).ravel(), (out_n - mu_n).ravel()])
            sigma = float(np.sqrt((resid ** 2).sum() / max(1, resid.size - out_m.shape[1] - out_n.shape[1])))
        else:  # one shadow: no within-example spread to pool; fall back to the spread across examples
            sigma = float(np.concatenate([out_m[0], out_n[0]]).std())
        sigma = sigma if sigma > 0 else 1.0
        scores = [(target[0] - mu_m) / sigma, (target[1] - mu_n) / sigma]
        return slice_result(ctx, scores[0], scores[1], {"shadows": k, "sigma_out": sigma, **signal},
                            {"member_out_mean": mu_m, "nonmember_out_mean": mu_n})

    def _choose_key(self, ctx: AuditContext, shadows: list[tuple[Generator, set[str]]]) -> tuple[str, dict]:
        """The signal whose shadows best separate their own reference-training patients from the other reference
        patients (never the evaluated ones)."""
        from cmraudit.stats import auc

        ref = ctx.reference
        pinned = ctx.settings(self).get("signal")  # usually from [options.attacks]
        per_shadow = [(membership_signals(s, ref, ctx.seed, ctx.device), np.isin(ref.patients, list(inside)))
                      for s, inside in shadows]
        keys = sorted(per_shadow[0][0])
        if pinned in keys:
            return pinned, {"selection": "option"}
        aucs = {k: float(np.mean([auc(sig[k][m], sig[k][~m]) for sig, m in per_shadow if m.any() and (~m).any()]
                                 or [0.5])) for k in keys}
        return max(keys, key=aucs.get), {"selection": "shadow AUC on reference patients", "selection_auc": aucs}


@hookimpl
def cmraudit_register_attacks(register) -> None:
    register(LiRA)
