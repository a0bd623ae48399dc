"""Helpers shared by the built-in privacy attacks: tables to tensors, batched white-box signals, result assembly."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmraudit.api import AttackResult, AuditContext, Batch, Generator, content_key
from cmraudit.data.types import SliceTable

SIGNAL_BATCH = 64


def images(table: SliceTable) -> torch.Tensor:
    return table.images.float()


def pixel_scale(table: SliceTable) -> float:
    """Distances are reported as l2 / sqrt(H·W): a per-pixel RMS difference, comparable across image sizes."""
    return float(np.sqrt(table.images.shape[-1] * table.images.shape[-2]))


def slice_result(ctx: AuditContext, member_scores: np.ndarray, nonmember_scores: np.ndarray,
                 details: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None,
                 tables: tuple[SliceTable, SliceTable] | None = None) -> AttackResult:
    """An AttackResult with one score per member / non-member slice, in the order of ``tables`` (default: every
    member and non-member slice)."""
    members, nonmembers = tables or (ctx.members, ctx.nonmembers)
    return AttackResult(np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64),
                        members.patients.copy(), nonmembers.patients.copy(), level="slice",
                        details=details or {}, arrays=arrays or {})


def scored_part(ctx: AuditContext, role: str, limit: int | None) -> SliceTable:
    """A split role's slices as attacks that run the network on every slice score them.

    Every slice when ``limit`` is None or 0 (the standard profile's default). Otherwise at most ``limit`` per
    patient (the attack's ``max_slices_per_patient`` setting, 10 on the CPU profiles), evenly spread over the
    patient's phases and base-to-apex positions: the privacy unit is the patient, and a few slices per patient
    carry its signal at a fraction of the cost. Ten keep TPR at 1% FPR resolvable (≥ 100 non-member scores) from
    ten non-member patients on. Cached per role and limit in ``ctx.cache``."""
    key = f"scored:{role}:{limit}"
    if key not in ctx.cache:
        table = ctx.part(role)
        if limit:
            keep = []
            for rows in table.patient_rows().values():
                rows = rows[np.lexsort((table.slice_index[rows], table.phases[rows]))]
                keep.extend(rows[np.unique(np.linspace(0, len(rows) - 1, min(int(limit), len(rows))).round()
                                           .astype(int))])
            table = table.take(np.sort(np.asarray(keep, dtype=np.int64)))
        ctx.cache[key] = table
    return ctx.cache[key]


@torch.no_grad()
def membership_signals(generator: Generator, table: SliceTable, seed: int, device: str | torch.device = "cpu"
                       ) -> dict[str, np.ndarray]:
    """``generator.membership_signal`` over a whole table in batches. The noise stream is seeded once per table
    with ``seed``, so two tables scored with the same seed see draws from the same distribution."""
    rng = torch.Generator(device=str(device)).manual_seed(int(seed))
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(table), SIGNAL_BATCH):
        batch = Batch.from_table(table, np.arange(start, min(start + SIGNAL_BATCH, len(table)))).to(device)
        for key, value in generator.membership_signal(batch, rng).items():
            out.setdefault(key, []).append(value.detach().double().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def table_key(table: SliceTable) -> tuple[str, ...]:
    """The content of every column a generator's signals may read: images, masks, the conditioning labels and the
    patients (a slice's relative position counts its patient's slices)."""
    return tuple(content_key(column) for column in (table.images, table.masks, table.patients, table.vendors,
                                                    table.pathologies, table.phases, table.slice_index))


def model_signals(ctx: AuditContext, table: SliceTable) -> dict[str, np.ndarray]:
    """``membership_signals`` of the audited model over ``table``, once per run for the same slices: the canary
    audit's attacks calibrate on the same reference patients as the real audit's."""
    return ctx.shared_memo(("membership-signals", ctx.model, table_key(table), int(ctx.seed), str(ctx.device)),
                           lambda: membership_signals(generator_or_skip(ctx), table, ctx.seed, ctx.device))


def reference_z(reference: dict[str, np.ndarray], evaluated: dict[str, np.ndarray]) -> np.ndarray:
    """Average over signals of each signal standardised by its mean and spread on reference patients: combines a
    sweep (e.g. noise levels) without choosing among them on labelled data."""
    zs = []
    for key, ref in reference.items():
        spread = ref.std() if ref.std() > 0 else 1.0
        zs.append((evaluated[key] - ref.mean()) / spread)
    return np.mean(zs, axis=0)


def encoder_features(ctx: AuditContext, tables: list[SliceTable], settings: dict[str, Any]
                     ) -> list[torch.Tensor] | None:
    """In-domain encoder features for each table, or None when the encoder is unavailable or switched off
    (``features = false`` in the attack's ``settings``, usually from ``[options.attacks]``). The encoder is trained
    on members only, never on non-members."""
    if not settings.get("features", True):
        return None
    try:
        from cmraudit.measure.features import get_encoder
    except ImportError:
        return None
    encoder = get_encoder(ctx)
    # once per run for each encoder and content: every model's attacks and metrics, and its canary and null audits
    # (which use the same encoder), see the same member, non-member, reference and test slices
    if not encoder.key:  # an encoder that does not say what it learnt from: nothing to key a memo on
        return [encoder.features(images(table)) for table in tables]
    return [ctx.shared_memo(("encoder-features", encoder.key, content_key(table.images)),
                            lambda table=table: encoder.features(images(table))) for table in tables]


def generator_or_skip(ctx: AuditContext) -> Generator:
    from cmraudit.api import NotApplicable

    if ctx.generator is None:
        raise NotApplicable("needs the trained generator, not only its samples")
    return ctx.generator
