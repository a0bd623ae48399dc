"""Exact nearest-neighbour search as chunked matrix multiplication, and a near-copy search robust to small shifts,
flips and intensity rescaling.

Plain search: ‖q − r‖² = ‖q‖² + ‖r‖² − 2 q·r, one GEMM per chunk of queries (GPU when present), memory bounded by
``memory_mb``. float32 GEMM ranks the candidates; the best few are re-scored in float64 from the differences, so
the reported neighbours and distances are exact (identical to brute force), not rounding-order dependent.

Near-copy search (cost ≈ 1.2–1.5× the plain search, not × the number of transforms):
  * intensity: every image is normalised to zero mean and unit norm, so ‖a − b‖² = 2 − 2ρ with ρ the Pearson
    correlation — invariant to any affine intensity change (and nearly so to a mild gamma change);
  * candidates: references are ranked by the similarity of their windowed Fourier magnitudes, which ignore shifts;
    flips only mirror the magnitude's rows, so splitting it into even and odd parts gives a flip-invariant score
    from two GEMMs of half the image size (cheaper than the plain search's one GEMM);
  * exact scoring: only the top candidates are then scored at full resolution under every shift
    |dy|, |dx| ≤ max_shift and every flip, as one batched matmul: the normalised cross-correlation of the
    candidate's central crop with the query's equally sized shifted windows (real pixels only, no wrap-around).
The near-copy distance is sqrt(2 − 2 max ρ) over those transforms, in [0, 2] (0 = identical up to transform).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RERANK_EXTRA = 3  # float32 candidates beyond k re-scored exactly in float64
#: float32 unit roundoff times a safety factor of 16: a score's rounding error is about u·sqrt(D)·(‖q‖² + ‖r‖²)
_ROUNDING_MARGIN = 16 * 2.0 ** -24
DEFAULT_MEMORY_MB = 256


@dataclass
class Neighbours:
    """Per query: Euclidean ``distance`` (Q, k) float64 ascending and ``index`` (Q, k) int64 into the references.
    Near-copy results also carry ``transform`` (Q, k, 3): (flip code 0–3: bit 0 horizontal, bit 1 vertical, dy, dx)."""

    distance: torch.Tensor
    index: torch.Tensor
    transform: torch.Tensor | None = None


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _flat(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], -1).float()


def _rows_per_chunk(bytes_per_row: int, memory_mb: int) -> int:
    return max(1, int(memory_mb * 2**20) // max(1, bytes_per_row))


# --------------------------------------------------------------------------------------------------- plain
def knn(queries: torch.Tensor, refs: torch.Tensor, k: int = 1, *, memory_mb: int = DEFAULT_MEMORY_MB,
        device: str | torch.device | None = None) -> Neighbours:
    """Exact k nearest references (Euclidean) for each query; inputs (N, ...) are flattened."""
    dev = pick_device(device)
    q, r = _flat(queries), _flat(refs).to(dev)
    k = min(k, r.shape[0])
    m = min(k + RERANK_EXTRA, r.shape[0])
    r_sq = (r * r).sum(1)
    r_sq_max = r_sq.max()
    chunk = _rows_per_chunk(r.shape[0] * 4 * 2, memory_mb)
    dist, index = [], []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk].to(dev)
        # ‖r‖² − 2 q·r ranks references for a fixed query (‖q‖² is constant along the row)
        score = torch.addmm(r_sq, qc, r.T, beta=1.0, alpha=-2.0)
        vals, cand = score.topk(m, dim=1, largest=False)
        # Re-score in float64 only the rows whose k-th and next candidates are closer than float32 rounding could
        # blur (a tolerance of many times the typical error of a length-D dot product); elsewhere the float32
        # order is already exact and only the k distances are recomputed in float64.
        d, i = _exact_distances(qc, r, cand[:, :k])
        if m > k:
            tol = _ROUNDING_MARGIN * (qc * qc).sum(1) + _ROUNDING_MARGIN * r_sq_max
            rows = torch.nonzero(vals[:, k] - vals[:, k - 1] <= tol * (q.shape[1] ** 0.5)).flatten()
            if rows.numel():
                d[rows], i[rows] = _exact_rerank(qc[rows], r, cand[rows], k)
        dist.append(d.cpu())
        index.append(i.cpu())
    return Neighbours(torch.cat(dist), torch.cat(index))


def _exact_distances(qc: torch.Tensor, r: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances to given candidates, sorted (stable). Differences are taken in float32 (one rounding each, relative
    error 2^-24) and squared-summed in float64, so there is no cancellation as in ‖q‖² + ‖r‖² − 2q·r."""
    d = (qc.unsqueeze(1) - r[cand]).pow_(2).sum(-1, dtype=torch.float64).sqrt_()
    d, order = d.sort(dim=1, stable=True)
    return d, cand.gather(1, order)


def _exact_rerank(qc: torch.Tensor, r: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    d, i = _exact_distances(qc, r, cand)
    return d[:, :k], i[:, :k]


def group_nearest(queries: torch.Tensor, refs: torch.Tensor, groups: np.ndarray, *,
                  memory_mb: int = DEFAULT_MEMORY_MB, device: str | torch.device | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """For every query and every group (e.g. patient) of references: the distance to the group's nearest member
    and that member's index. Returns (distance (Q, G) float64, index (Q, G) int64, group ids (G,))."""
    dev = pick_device(device)
    ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # contiguous column range per group
    bounds = np.r_[0, np.cumsum(np.bincount(inverse, minlength=ids.size))]
    q, r = _flat(queries), _flat(refs)[torch.from_numpy(order)].to(dev)
    r_sq = (r * r).sum(1)
    chunk = _rows_per_chunk(r.shape[0] * 4 * 2 + ids.size * r.shape[1] * 8, memory_mb)
    order_t = torch.from_numpy(order).to(dev)
    dist, index = [], []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk].to(dev)
        score = torch.addmm(r_sq, qc, r.T, beta=1.0, alpha=-2.0)
        best = torch.stack([score[:, a:b].argmin(1) + a for a, b in zip(bounds[:-1], bounds[1:])], dim=1)
        d = (qc.double().unsqueeze(1) - r[best].double()).pow_(2).sum(-1).sqrt_()
        dist.append(d.cpu())
        index.append(order_t[best].cpu())
    return torch.cat(dist), torch.cat(index), ids


def count_within(queries: torch.Tensor, refs: torch.Tensor, radius: float | torch.Tensor, *,
                 memory_mb: int = DEFAULT_MEMORY_MB, device: str | torch.device | None = None) -> torch.Tensor:
    """Number of references within Euclidean ``radius`` of each query (radius scalar or per query)."""
    dev = pick_device(device)
    q, r = _flat(queries), _flat(refs).to(dev)
    r_sq = (r * r).sum(1)
    rad = torch.as_tensor(radius, dtype=torch.float32).expand(q.shape[0])
    chunk = _rows_per_chunk(r.shape[0] * 4 * 2, memory_mb)
    out = []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk].to(dev)
        d2 = torch.addmm(r_sq, qc, r.T, beta=1.0, alpha=-2.0).add_((qc * qc).sum(1, keepdim=True))
        out.append((d2 <= rad[start:start + chunk].to(dev).pow(2).unsqueeze(1)).sum(1).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------- near copies
def normalise(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, 1, H, W) → (N, H, W) with zero mean and unit L2 norm per image (constant images → 0)."""
    x = torch.as_tensor(images).float()
    x = x.reshape(x.shape[0], x.shape[-2], x.shape[-1])
    x = x - x.mean(dim=(1, 2), keepdim=True)
    return x / x.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]


def _spectral_features(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) normalised images → (2, N, ≈ H·(W/2+1)/2) shift- and flip-invariant candidate features.

    The magnitude of the Fourier transform ignores (circular) shifts; a Hann window makes small real shifts
    nearly circular, and the square root evens out the spectrum's dynamic range. For a real image, a horizontal
    or vertical flip maps the rfft magnitude's row ky to −ky, so the even and odd parts of the magnitude under
    that reversal give the flip-invariant score ⟨e, e'⟩ + |⟨o, o'⟩| from two GEMMs of half the image size.
    Rows are folded onto 0..H/2 with √2 weights so the GEMMs only see independent values."""
    h, w = x.shape[-2:]
    win = torch.hann_window(h, periodic=False, dtype=x.dtype, device=x.device)[:, None] \
        * torch.hann_window(w, periodic=False, dtype=x.dtype, device=x.device)[None, :]
    f = torch.fft.rfft2(x * win).abs().sqrt()
    f = f / f.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    mirrored = f[:, (-torch.arange(h, device=x.device)) % h]
    even, odd = (f + mirrored) / 2, (f - mirrored) / 2
    half = h // 2
    weight = torch.full((half + 1, 1), 2 ** 0.5, dtype=x.dtype, device=x.device)
    weight[0] = 1.0
    weight[half] = 1.0
    even = even[:, : half + 1] * weight
    odd = odd[:, 1:half] * 2 ** 0.5
    width = max(even[0].numel(), odd[0].numel())
    return torch.stack([F.pad(even.flatten(1), (0, width - even[0].numel())),
                        F.pad(odd.flatten(1), (0, width - odd[0].numel()))])


def _candidate_scores(qf: torch.Tensor, rf: torch.Tensor, flips: bool) -> torch.Tensor:
    """Spectral similarity, maximised over flips when asked, (chunk, N)."""
    even, odd = qf[0] @ rf[0].T, qf[1] @ rf[1].T
    return even + (odd.abs() if flips else odd)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit norm along the last dimension."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _refine(qn: torch.Tensor, crops: torch.Tensor, cand: torch.Tensor, max_shift: int, flips: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact max normalised cross-correlation over shifts and flips between each query and its candidates:
    (rho (B, C), transform (B, C, 3): flip of the query, then its window offset dy, dx).

    Each candidate's central crop (precomputed, zero-mean unit-norm) is correlated with every equally sized
    window of the (flipped) query — real pixels only, no wrap-around — by one grouped convolution, so the
    shifted windows are never materialised; window norms come from box filters."""
    b, c = cand.shape
    h, w = crops.shape[-2:]
    qv = torch.stack([qn, qn.flip(-1), qn.flip(-2), qn.flip(-1).flip(-2)] if flips else [qn])  # (F, B, H, W)
    raw = F.conv2d(qv, crops[cand].reshape(b * c, 1, h, w), groups=b)  # Σ window · crop (crop is zero-mean)
    mean = F.avg_pool2d(qv, (h, w), stride=1)
    power = F.avg_pool2d(qv * qv, (h, w), stride=1)
    norm = ((power - mean * mean).clamp_min(0) * (h * w)).sqrt().clamp_min(1e-12)  # (F, B, side, side)
    side = raw.shape[-1]
    corr = raw.view(len(qv), b, c, side, side) / norm.unsqueeze(2)
    best, arg = corr.permute(1, 2, 0, 3, 4).flatten(2).max(dim=2)  # over (flip, dy, dx)
    flip, shift = arg // (side * side), arg % (side * side)
    transform = torch.stack([flip, shift // side - max_shift, shift % side - max_shift], dim=-1)
    return best, transform


@dataclass
class _Prepared:
    full: torch.Tensor  # normalised images (N, H, W)
    crops: torch.Tensor  # central crops without the shift margin, zero-mean unit-norm (N, H − 2s, W − 2s)
    spectral: torch.Tensor  # (2, N, ~HW/2) shift- and flip-invariant candidate features


def _prepare(images: torch.Tensor, dev: torch.device, max_shift: int, spectral: bool = True) -> _Prepared:
    x = normalise(images).to(dev)
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    s = max_shift
    crop = x[:, s:x.shape[-2] - s, s:x.shape[-1] - s]
    crops = _unit(crop.flatten(1)).view_as(crop)
    return _Prepared(x, crops, _spectral_features(x) if spectral else x[:0])


def _to_distance(rho: torch.Tensor) -> torch.Tensor:
    return (2.0 - 2.0 * rho.double()).clamp_min(0.0).sqrt()


def near_copy_knn(queries: torch.Tensor, refs: torch.Tensor, k: int = 1, *, max_shift: int = 2, flips: bool = True,
                  candidates: int = 8, memory_mb: int = DEFAULT_MEMORY_MB,
                  device: str | torch.device | None = None) -> Neighbours:
    """k nearest references under intensity normalisation, shifts up to ``max_shift`` pixels and flips.

    Ranking is exact among the ``candidates`` best references by shift- and flip-invariant spectral similarity."""
    dev = pick_device(device)
    qp, rp = _prepare(queries, dev, max_shift), _prepare(refs, dev, max_shift)
    n_ref, hw = rp.full.shape[0], rp.full[0].numel()
    m = min(max(candidates, k), n_ref)
    n_var = 4 if flips else 1
    chunk = _rows_per_chunk(max(n_ref * 4 * 4, (m + n_var) * hw * 4 * 2), memory_mb)
    dist, index, trans = [], [], []
    for start in range(0, qp.full.shape[0], chunk):
        sl = slice(start, start + chunk)
        score = _candidate_scores(qp.spectral[:, sl], rp.spectral, flips)
        cand = score.topk(m, dim=1).indices
        rho, transform = _refine(qp.full[sl], rp.crops, cand, max_shift, flips)
        rho, order = rho.sort(dim=1, descending=True, stable=True)
        dist.append(_to_distance(rho[:, :k]).cpu())
        index.append(cand.gather(1, order[:, :k]).cpu())
        trans.append(transform.gather(1, order[:, :k, None].expand(-1, -1, 3)).cpu())
    return Neighbours(torch.cat(dist), torch.cat(index), torch.cat(trans))


def near_copy_group_nearest(queries: torch.Tensor, refs: torch.Tensor, groups: np.ndarray, *, max_shift: int = 2,
                            flips: bool = True, memory_mb: int = DEFAULT_MEMORY_MB,
                            device: str | torch.device | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``group_nearest`` in near-copy distance: each group's candidate is its best member by spectral similarity,
    then scored exactly under every shift and flip. Returns (distance (Q, G), index (Q, G), group ids)."""
    dev = pick_device(device)
    ids, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(inverse, minlength=ids.size))]
    qp = _prepare(queries, dev, max_shift)
    rp = _prepare(torch.as_tensor(refs)[torch.from_numpy(order)], dev, max_shift)
    order_t = torch.from_numpy(order).to(dev)
    hw, n_var = rp.full[0].numel(), (4 if flips else 1)
    chunk = _rows_per_chunk(max(rp.full.shape[0] * 4 * 4, (ids.size + n_var) * hw * 4 * 2), memory_mb)
    dist, index = [], []
    for start in range(0, qp.full.shape[0], chunk):
        sl = slice(start, start + chunk)
        score = _candidate_scores(qp.spectral[:, sl], rp.spectral, flips)
        cand = torch.stack([score[:, a:b].argmax(1) + a for a, b in zip(bounds[:-1], bounds[1:])], dim=1)
        rho, _ = _refine(qp.full[sl], rp.crops, cand, max_shift, flips)
        dist.append(_to_distance(rho).cpu())
        index.append(order_t[cand].cpu())
    return torch.cat(dist), torch.cat(index), ids


def near_copy_pair_distance(a: torch.Tensor, b: torch.Tensor, *, max_shift: int = 2, flips: bool = True) -> torch.Tensor:
    """Near-copy distance between paired images a[i] and b[i] (no search), (N,) float64."""
    pa = _prepare(a, torch.device("cpu"), max_shift, spectral=False)
    pb = _prepare(b, torch.device("cpu"), max_shift, spectral=False)
    out = []
    for start in range(0, pa.full.shape[0], 64):
        qn = pa.full[start:start + 64]
        cand = torch.arange(start, start + qn.shape[0]).unsqueeze(1)
        rho, _ = _refine(qn, pb.crops, cand, max_shift, flips)
        out.append(_to_distance(rho[:, 0]))
    return torch.cat(out)
