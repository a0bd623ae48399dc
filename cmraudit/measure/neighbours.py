"""Exact nearest-neighbour search as chunked matrix multiplication, and a near-copy search robust to small shifts,
flips and intensity rescaling.

Plain search: ‖q − r‖² = ‖q‖² + ‖r‖² − 2 q·r, one GEMM per chunk of queries (GPU when present), memory bounded by
``memory_mb``. The GEMM (bfloat16 where the CPU has fast bfloat16 units, else float32) only proposes candidates:
the best are scored from differences, and a rounding-error bound proves that no other reference can be nearer
(or, for near ties, says which references to score too). The reported neighbours are exact (identical to brute
force in float64), whatever the GEMM's precision and rounding order.

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

(Longer than the other modules on purpose: the candidate GEMM, the rounding-error bound that certifies it and the
exact rescoring of near ties share one set of invariants; apart, the bound would sit away from the code it bounds.)
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
    return (x.flatten(1) if x.dim() > 1 else x.reshape(-1, 1)).float()


def _rows_per_chunk(bytes_per_row: int, memory_mb: int) -> int:
    return max(1, int(memory_mb * 2**20) // max(1, bytes_per_row))


# --------------------------------------------------------------------------------------------------- plain
def knn(queries: torch.Tensor, refs: torch.Tensor, k: int = 1, *, memory_mb: int = DEFAULT_MEMORY_MB,
        device: str | torch.device | None = None, precision: str = "auto") -> Neighbours:
    """Exact k nearest references (Euclidean) for each query; inputs (N, ...) are flattened.

    The GEMM only proposes candidates; every answer is then proved exact (see ``_certified_knn``).
    precision: the GEMM's, "float32" or "bfloat16" (3-4x faster on CPUs with bfloat16 dot-product units,
    AVX512-BF16 or AMX); "auto" takes bfloat16 where a quick measurement finds it fast, float32 elsewhere.
    Both return the same neighbours."""
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', not {precision!r}")
    dev = pick_device(device)
    q, r = _flat(queries), _flat(refs).to(dev)
    k = min(k, r.shape[0])
    bfloat16 = precision == "bfloat16" or (precision == "auto" and r.shape[1] >= 256 and _bfloat16_is_fast(dev))
    return _certified_knn(q, r, k, memory_mb, dev, bfloat16)


#: unit roundoffs: bfloat16 keeps 8 significant bits, float32 24
_BF16_U, _F32_U = 2.0 ** -8, 2.0 ** -24


def _certified_knn(q: torch.Tensor, r: torch.Tensor, k: int, memory_mb: int, dev: torch.device,
                   bfloat16: bool) -> Neighbours:
    """Candidates from one GEMM per chunk of queries, each answer then proved exact with a rounding-error bound.

    Vectors are centred on the reference mean (distances do not change; norms, and with them rounding errors,
    shrink). The GEMM's score ‖r‖² − 2v̂ of each reference is within a bound E of the true ‖r‖² − 2q·r
    (``_gemm_dot_error``: output rounding, float32 accumulation, and in bfloat16 the remainders of the split
    q = q_h + q_l, bounded by Cauchy–Schwarz with their measured norms). The k + 1 best scores are scored exactly
    from differences; when the next score minus E still exceeds the k-th exact distance (as a score), no other
    reference can be nearer and the answer is proved. Otherwise (near ties, duplicate references) every reference
    whose score minus E is not above that limit is scored exactly. A float32 GEMM, as
    ‖q‖² + ‖r‖² − 2q·r, cannot order near twins far from the origin by itself; this is what makes both
    precisions exact. Assumes the GEMM accumulates in float32, as oneDNN, MKL and cuBLAS do (a test checks the
    bound against float64 products)."""
    n_ref, dim = r.shape
    if q.shape[0] == 0:
        return Neighbours(torch.zeros((0, k), dtype=torch.float64), torch.zeros((0, k), dtype=torch.long))
    # candidates scored exactly (the next score certifies them): one spare in bfloat16, whose wider error bound
    # would otherwise leave more near-runner-up answers unproved
    m = min(k + 1 if bfloat16 else k, n_ref)
    gamma = _gamma(dim)
    mean = r.mean(0)
    rc = r - mean
    r_sq = (rc * rc).sum(1)
    # norms computed in float32 are within a factor (1 ± γ_D) of the true ones: bounds are rounded up
    big_r = r_sq.max().sqrt() * (1 + gamma)
    r_gemm = rc.bfloat16() if bfloat16 else rc
    big_r_low = torch.linalg.vector_norm(rc - r_gemm.float(), dim=1).max() * (1 + gamma) if bfloat16 else 0.0
    chunk = _rows_per_chunk(n_ref * (2 + 4 + 4), memory_mb)
    dist, index = [], []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk].to(dev)
        q_cent = qc - mean
        q_sq = (q_cent * q_cent).sum(1)
        q_norm = q_sq.sqrt() * (1 + gamma)
        q_gemm = q_cent.bfloat16() if bfloat16 else q_cent
        q_low = torch.linalg.vector_norm(q_cent - q_gemm.float(), dim=1) * (1 + gamma) if bfloat16 else 0.0
        if bfloat16:
            dot = (q_gemm @ r_gemm.T).float()
            dot_max = dot.abs().amax(1)  # the output rounding is relative to it
            score = dot.mul_(-2.0).add_(r_sq)  # in place: the (chunk, N) block is the only large buffer
        else:
            with _float32_matmul_exactly():
                score = torch.addmm(r_sq, q_gemm, r_gemm.T, beta=1.0, alpha=-2.0)
            dot_max = q_norm * big_r  # Cauchy–Schwarz: no pass over the block needed
        vals, cand = score.topk(min(m + 1, n_ref), dim=1, largest=False)
        d, i = _exact_distances(qc, r, cand[:, :m])
        d, i = d[:, :k], i[:, :k]
        if n_ref > m:
            # |score − (‖r‖² − 2q·r)|: the dot product's error twice, ‖r‖²'s float32 sum, the subtraction's
            # rounding; the last 0.1% covers the float32 arithmetic of this bound itself
            err = 2.0 * _gemm_dot_error(dot_max, q_norm, q_low, big_r, big_r_low, dim, bfloat16)
            err = (err + gamma * big_r.square() + _F32_U * (big_r.square() + 2.0 * dot_max)) * 1.001
            # a reference at least as near as the k-th candidate has a true centred score at most `limit`
            # (the k-th distance rounded up, plus the centring's rounding, as a score)
            reach = d[:, k - 1].float() * (1 + 2 * gamma) + 2 * _F32_U * (q_norm + big_r)
            limit = reach.square() - q_sq * (1 - gamma)
            for row in torch.nonzero(vals[:, m] - err <= limit).flatten().tolist():
                cols = torch.nonzero(score[row] - err[row] <= limit[row]).flatten()
                cols = torch.unique(torch.cat([cols, cand[row, :m]]))  # the candidates qualify; kept whatever
                d_row, i_row = _exact_distances(qc[row:row + 1], r, cols.unsqueeze(0))
                d[row], i[row] = d_row[0, :k], i_row[0, :k]
        dist.append(d.cpu())
        index.append(i.cpu())
    return Neighbours(torch.cat(dist), torch.cat(index))


@contextlib.contextmanager
def _float32_matmul_exactly():
    """float32 GEMMs in full float32 for the error bound to hold: a caller's
    ``torch.set_float32_matmul_precision("high")`` would otherwise round their inputs to TF32 or bfloat16."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _gamma(n: int) -> float:
    """γ_n = n·u/(1 − n·u): the relative error bound of a float32 sum of n terms (Higham, Accuracy and Stability
    of Numerical Algorithms, §3.1)."""
    return n * _F32_U / (1 - n * _F32_U)


def _gemm_dot_error(dot_abs: torch.Tensor, q_norm: torch.Tensor, q_low, r_norm: torch.Tensor, r_low, dim: int,
                    bfloat16: bool) -> torch.Tensor:
    """Bound on |v̂ − q·r| for v̂ the GEMM's output: float32 accumulation (γ_D‖q_h‖‖r_h‖, the products of
    bfloat16 values being exact in float32), and for bfloat16 also the output's rounding (u_bf16·|v̂|) and the
    remainders q_l = q − q_h, r_l = r − r_h by Cauchy–Schwarz (‖q_h‖‖r_l‖ + ‖q_l‖‖r‖). Arguments broadcast and
    are upper bounds: |v̂|, ‖q‖, ‖q_l‖, ‖r‖, ‖r_l‖ (remainders 0 in float32)."""
    q_high, r_high = q_norm + q_low, r_norm + r_low  # ‖q_h‖ ≤ ‖q‖ + ‖q_l‖
    error = _gamma(dim) * q_high * r_high
    if bfloat16:
        error = error + _BF16_U / (1 - _BF16_U) * dot_abs + q_high * r_low + q_low * r_norm
    return error


@functools.lru_cache(maxsize=None)
def _bfloat16_is_fast(dev: torch.device) -> bool:
    """Whether a bfloat16 GEMM runs well over 1.5x faster than a float32 one here (CPU only; measured once)."""
    if dev.type != "cpu":
        return False
    a, b = torch.randn(256, 2048), torch.randn(2048, 512)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a.bfloat16(), b.bfloat16()) < best(a, b) / 1.5


def _exact_distances(qc: torch.Tensor, r: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances to given candidates, sorted (stable), float64. Differences are taken in float32 (one rounding each,
    relative error 2^-24), so there is no cancellation as in ‖q‖² + ‖r‖² − 2q·r, and squared-summed in float32
    (relative error at most γ_D, about 1e-7 in practice); rows where two candidates lie within that error of each
    other are summed again in float64, so the order is exact."""
    diff = qc.unsqueeze(1) - r[cand]
    d2, order = diff.square().sum(-1).sort(dim=1, stable=True)
    tolerance = 2.5 * _gamma(diff.shape[-1]) * d2[:, 1:]
    close = torch.nonzero((d2[:, 1:] - d2[:, :-1] <= tolerance).any(1)).flatten()
    d = d2.double()
    if close.numel():
        d[close], order[close] = diff[close].square().sum(-1, dtype=torch.float64).sort(dim=1, stable=True)
    return d.sqrt_(), cand.gather(1, order)


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
    mean = r.mean(0)  # centred scores: no cancellation for images far from the origin (distances unchanged)
    r_cent = r - mean
    r_sq = (r_cent * r_cent).sum(1)
    chunk = _rows_per_chunk(r.shape[0] * 4 * 2 + ids.size * r.shape[1] * 8, memory_mb)
    order_t = torch.from_numpy(order).to(dev)
    dist, index = [], []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk].to(dev)
        score = torch.addmm(r_sq, qc - mean, r_cent.T, beta=1.0, alpha=-2.0)
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
    mean = r.mean(0)  # centred: no cancellation for images far from the origin
    r = r - mean
    r_sq = (r * r).sum(1)
    rad = torch.as_tensor(radius, dtype=torch.float32).expand(q.shape[0])
    chunk = _rows_per_chunk(r.shape[0] * 4 * 2, memory_mb)
    out = []
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk].to(dev) - mean
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
    even, odd = (qf[0] @ rf[0].T).float(), (qf[1] @ rf[1].T).float()
    return even + (odd.abs() if flips else odd)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit norm along the last dimension."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _window_sums(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sums of x over every h×w window (stride 1, valid). The windows here nearly cover the image (only
    the shift margin is left out), so each is the whole sum minus a few edge rows and columns: O(H·W) per image,
    where avg_pool2d with a near-image-sized kernel costs O(H·W·h·w) and a float64 cumsum is slow on CPU."""
    return _edge_trimmed_sums(_edge_trimmed_sums(x, w, -1), h, -2)


def _edge_trimmed_sums(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Along ``dim`` (length L): the sums over [d, d + size) for d = 0 … L − size, as total − head(d) − tail(d)."""
    n_off = x.shape[dim] - size + 1
    total = x.sum(dim, keepdim=True)
    edge = n_off - 1
    if edge == 0:
        return total
    first, last = x.narrow(dim, 0, edge), x.narrow(dim, x.shape[dim] - edge, edge)
    zero = torch.zeros_like(total)
    head = torch.cat([zero, first.cumsum(dim)], dim)  # Σ_{y<d}
    tail = torch.cat([last.flip(dim).cumsum(dim).flip(dim), zero], dim)  # Σ_{y≥d+size}
    return total - head - tail


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
    total, power = _window_sums(qv, h, w), _window_sums(qv * qv, h, w)
    norm = (power - total * total / (h * w)).clamp_min(0).sqrt().clamp_min(1e-12)  # (F, B, side, side)
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
    if not spectral:
        return _Prepared(x, crops, x[:0])
    # the spectra only rank candidates for the exact refinement: bfloat16 where its GEMMs are fast
    features = _spectral_features(x)
    return _Prepared(x, crops, features.bfloat16() if _bfloat16_is_fast(dev) else features)


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
