"""cmraudit's identity network: an embedding in which slices of one patient lie close together, whatever the slice.

Packhäuser et al. (2022, "Deep learning-based patient re-identification is able to exploit the biometric nature of
medical chest X-ray data", Sci Rep 12:14851) showed that a network trained only to tell "same patient?" re-identifies
patients from images it never saw. cmraudit trains such a network on the run's REFERENCE patients' real slices
only — never members, non-members or test patients — and uses it to ask whether a synthetic image shows one
particular patient (``cmraudit.attacks.reidentification``).

Network: four 3x3 conv blocks (GroupNorm, SiLU; stride 2 from the second on), global average pooling and a linear
map to ``dim`` numbers, L2-normalised: ``embed(images)`` returns unit vectors, so a dot product is the cosine
similarity. Loss: supervised contrastive (Khosla et al. 2020, NeurIPS): each batch holds ``batch_patients`` patients
with ``batch_slices`` slices each, drawn from both phases (ED and ES) and all slice positions, and every other slice
of the same patient is a positive. Mild augmentation (gamma, contrast, a shift of a pixel or two, noise) keeps the
network from keying on exact pixel values, so a generator's re-rendering of a patient still matches.

``verify`` is the check that makes the network's answers mean something: on held-out patients (the split's test
patients), same-patient slice pairs must be more similar than different-patient pairs.

The network is deterministic from the seed and cached per run under a fingerprint of what it learnt from
(reference patients, pixel content, seed, recipe), in ``cmraudit.measure.segmenter.cache_dir`` beside the other
real-data networks, so a model's null-baseline side run, the run's other models and a resumed run reuse it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.types import SliceTable
from ..errors import RunError
from ..stats import auc, auc_ci
from ..training.checkpoint import seeded_init

if TYPE_CHECKING:
    from ..api import AuditContext

__all__ = ["IdentityConfig", "IdentityNet", "Verification", "get_identity_net", "train_identity",
           "verify"]


@dataclass(frozen=True)
class IdentityConfig:
    steps: int = 300
    dim: int = 64
    width: int = 32
    batch_patients: int = 8
    batch_slices: int = 4
    lr: float = 3e-3
    temperature: float = 0.1
    augment: bool = True


class IdentityNet(nn.Module):
    """(N, 1, H, W) images in [-1, 1] → (N, dim) unit vectors; any H, W (global pooling)."""

    def __init__(self, dim: int = 64, width: int = 32) -> None:
        super().__init__()
        chans = (1, width // 2, width, 2 * width, 2 * width)
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(min(8, chans[i + 1]), chans[i + 1]), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.body(x).mean(dim=(-2, -1))), dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Unit embeddings (N, dim) float32 on the CPU."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
        self.eval()
        device = next(self.parameters()).device
        out = [self(images[i:i + batch_size].to(device, torch.float32)).cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros((0, self.head.out_features))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per image: gamma in [0.8, 1.25], contrast ×[0.9, 1.1], brightness ±0.05, a roll of up to 2 px, noise ≤ 0.03."""
    b = x.shape[0]
    gamma = torch.exp(torch.empty(b, 1, 1, 1).uniform_(math.log(0.8), math.log(1.25), generator=gen))
    scale = torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=gen)
    shift = torch.empty(b, 1, 1, 1).uniform_(-0.05, 0.05, generator=gen)
    sigma = torch.empty(b, 1, 1, 1).uniform_(0.0, 0.03, generator=gen)
    noise = torch.randn(x.shape, generator=gen) * sigma
    rolls = torch.randint(-2, 3, (b, 2), generator=gen).tolist()
    x = ((x + 1) / 2).clamp(0, 1) ** gamma.to(x.device)
    x = (x * 2 - 1) * scale.to(x.device) + shift.to(x.device) + noise.to(x.device)
    return torch.stack([torch.roll(x[i], shifts=(dy, dx), dims=(-2, -1)) for i, (dy, dx) in enumerate(rolls)])


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out) of unit embeddings ``z`` with patient ``labels``."""
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positive.sum(1)
    keep = n_pos > 0
    mean_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)[keep] / n_pos[keep]
    return -mean_log_prob.mean()


def train_identity(table: SliceTable, config: IdentityConfig | None = None, seed: int = 0,
                   device: str | torch.device = "cpu") -> IdentityNet:
    """Train an identity network on ``table``'s slices (the reference patients); deterministic from ``seed``.

    Each step draws ``batch_patients`` patients and ``batch_slices`` of each one's slices (any phase, any position)
    with a seeded generator; Adam with cosine decay. ``steps = 0`` returns the untrained network."""
    config = config or IdentityConfig()
    rows = list(table.patient_rows().values())
    if len(rows) < 2:
        raise RunError("the identity network needs real slices of at least two patients to learn from")
    with seeded_init(seed):
        net = IdentityNet(config.dim, config.width)
    net = net.to(device)
    gen = torch.Generator().manual_seed(seed)
    images = table.images.float()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.steps, 1))
    n_patients = min(config.batch_patients, len(rows))
    net.train()
    for _ in range(config.steps):
        chosen = torch.randperm(len(rows), generator=gen)[:n_patients].tolist()
        picked, labels = [], []
        for label, p in enumerate(chosen):
            r = rows[p]
            # without replacement where the patient has enough slices: two identical views teach nothing
            order = torch.randperm(len(r), generator=gen)[:config.batch_slices] if len(r) >= config.batch_slices \
                else torch.randint(0, len(r), (config.batch_slices,), generator=gen)
            picked.append(torch.from_numpy(r[order.numpy()]))
            labels += [label] * config.batch_slices
        x = images[torch.cat(picked)]
        if config.augment:
            x = _augment(x, gen)
        loss = supcon_loss(net(x.to(device)), torch.tensor(labels, device=device), config.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


# ------------------------------------------------------------------------------------------------ verification
@dataclass(frozen=True)
class Verification:
    """Same-patient vs different-patient pair AUC of cosine similarity on held-out patients."""

    auc: float
    ci: tuple[float, float]
    n_patients: int
    n_same_pairs: int
    n_different_pairs: int

    def as_details(self) -> dict[str, Any]:
        return {"identity_verification_auc": self.auc, "identity_verification_auc_ci": list(self.ci),
                "identity_verification": {"patients": self.n_patients, "same_patient_pairs": self.n_same_pairs,
                                          "different_patient_pairs": self.n_different_pairs,
                                          "unit": "held-out test patients (patient bootstrap)"}}


def verify(net: IdentityNet, table: SliceTable, n_boot: int = 1000, seed: int = 0) -> Verification:
    """How well ``net`` re-identifies the patients of ``table`` (which it must not have been trained on).

    Positives: every pair of two different slices of one patient (other positions and the other phase). Negatives:
    every pair of slices of two different patients. Score: cosine similarity. The AUC comes from ``cmraudit.stats``.

    The unit of the CI is the patient: ``stats.auc_ci`` resamples clusters, so each positive pair is clustered
    under its patient and each negative pair is entered once from each side, clustered under its anchor patient
    (both orders of a pair: the AUC is unchanged, as every negative counts twice). A resampled patient thus brings
    all its same-patient pairs and all its pairs with other patients, so a patient who happens to look like many
    others, or whose slices happen to be alike, is never counted as hundreds of independent pairs. (The partner of
    a negative pair is not resampled jointly with its anchor; with the pairs of every anchor entered, this is the
    usual one-way cluster approximation.)"""
    patients = table.patients
    if len(set(patients.tolist())) < 2:
        raise RunError("verification needs at least two held-out patients")
    z = net.embed(table.images.float()).double()
    sim = (z @ z.T).numpy()
    same = patients[:, None] == patients[None, :]
    i, j = np.triu_indices(len(patients), k=1)
    pos = same[i, j]
    pos_scores, pos_groups = sim[i[pos], j[pos]], patients[i[pos]]
    a, b = np.nonzero(~same)  # ordered pairs: each different-patient pair from both anchors
    neg_scores, neg_groups = sim[a, b], patients[a]
    if pos_scores.size == 0:
        raise RunError("verification needs patients with at least two slices")
    value = auc(pos_scores, neg_scores)
    lo, hi = auc_ci(pos_scores, neg_scores, pos_groups, neg_groups, n_boot=n_boot, seed=seed)
    return Verification(value, (lo, hi), len(set(patients.tolist())), int(pos_scores.size), int(neg_scores.size // 2))


# ------------------------------------------------------------------------------------------- the run's network
def _load(path: Path, key: str, config: IdentityConfig) -> IdentityNet | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("fingerprint") != key:
            return None
        net = IdentityNet(config.dim, config.width)
        net.load_state_dict(blob["state_dict"])
        return net.eval()
    except Exception:  # noqa: BLE001 - a cache entry is only a speed-up: stale or broken means retrain
        return None


def get_identity_net(ctx: AuditContext, config: IdentityConfig) -> IdentityNet:
    """The run's identity network, trained on ``ctx.reference`` only.

    Memoised for the run in ``ctx.shared`` and saved (atomically) as ``identity-<fingerprint>.pt`` in
    ``cmraudit.measure.segmenter.cache_dir(ctx)``, so side runs (which get a fresh ``ctx.cache``), the run's other
    models and reruns load it instead of training again. A context without a work folder (``workdir`` left at its
    default ``.``, as in hand-built test contexts) and no ``cache_dir`` option is memoised only, never written to
    disk beside the current directory."""
    # the segmenter's cache machinery: the same fingerprint of what a network learns from, the same atomic save
    from .segmenter import cache_dir, fingerprint, save_segmenter

    table = ctx.reference
    key = fingerprint(table, ctx.seed, config, what="identity")
    on_disk = bool(ctx.options.get("cache_dir")) or Path(ctx.workdir) != Path(".")
    path = cache_dir(ctx) / f"identity-{key}.pt"

    def load_or_train() -> IdentityNet:
        net = _load(path, key, config) if on_disk else None
        if net is None:
            net = train_identity(table, config, seed=ctx.seed, device=ctx.device)
            if on_disk:
                save_segmenter(net, config, path, key)
        net = net.to(ctx.device).eval()
        net.fingerprint = key  # what it learnt from: the key of results memoised across the run's contexts
        return net

    return ctx.shared_memo(("identity", key, str(path), str(ctx.device)), load_or_train)
