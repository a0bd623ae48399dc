"""Exact and near-copy nearest-neighbour search against brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from cmraudit.measure import neighbours as nb


def _smooth(n: int, size: int, seed: int) -> torch.Tensor:
    """Random images with image-like spatial correlation (low-pass filtered noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    k = torch.ones(1, 1, 5, 5) / 25
    return torch.nn.functional.conv2d(x, k, padding=2)[:, 0]


def test_knn_matches_sklearn_brute_force_with_small_memory_budget():
    g = torch.Generator().manual_seed(1)
    q, r = torch.randn(120, 1, 12, 12, generator=g), torch.randn(300, 1, 12, 12, generator=g)
    found = nb.knn(q, r, k=4, memory_mb=1)  # forces several chunks
    dist, idx = NearestNeighbors(n_neighbors=4, algorithm="brute").fit(r.flatten(1)).kneighbors(q.flatten(1))
    assert (found.index.numpy() == idx).all()
    np.testing.assert_allclose(found.distance.numpy(), dist, rtol=1e-5)


def test_group_nearest_and_count_within():
    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(50, 64, generator=g), torch.randn(90, 64, generator=g)
    groups = np.array([f"p{i % 7}" for i in range(90)])
    dist, idx, ids = nb.group_nearest(q, r, groups, memory_mb=1)
    full = torch.cdist(q.double(), r.double())
    for j, g in enumerate(ids):
        cols = np.flatnonzero(groups == g)
        best = full[:, cols].min(1)
        torch.testing.assert_close(dist[:, j], best.values)
        assert (idx[:, j].numpy() == cols[best.indices.numpy()]).all()
    values = full.flatten().sort().values
    middle = values.numel() // 2
    radius = float(values[middle] + values[middle + 1]) / 2  # halfway between two distances: no rounding ties
    assert (nb.count_within(q, r, radius) == (full <= radius).sum(1)).all()


def test_near_copy_finds_shifted_flipped_rescaled_copies():
    refs = _smooth(200, 32, 0)
    src = torch.arange(0, 200, 3)
    x = torch.roll(refs[src], shifts=(2, -1), dims=(-2, -1))
    x[::2] = x[::2].flip(-1)
    x[1::3] = x[1::3].flip(-2)
    x = 0.5 * x + 0.3 + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    near = nb.near_copy_knn(x, refs, k=1)
    assert (near.index[:, 0] == src).all()
    assert near.distance.max() < 0.2  # the 1% noise is ~10% of these images' contrast
    plain = nb.knn(x, refs, k=1)
    assert (plain.index[:, 0] == src).float().mean() < 0.5  # what the plain search misses
    pair = nb.near_copy_pair_distance(x, refs[src])
    torch.testing.assert_close(pair, near.distance[:, 0], rtol=1e-4, atol=1e-5)


def test_near_copy_distance_is_a_correlation_distance_between_unrelated_images():
    a, b = _smooth(30, 16, 2), _smooth(30, 16, 3)
    d = nb.near_copy_pair_distance(a, b, max_shift=0, flips=False)
    na, nbb = nb.normalise(a).flatten(1), nb.normalise(b).flatten(1)
    expected = (na - nbb).norm(dim=1).double()
    torch.testing.assert_close(d, expected, rtol=1e-4, atol=1e-5)
    dist, idx, _ = nb.near_copy_group_nearest(a, b, np.arange(30) % 5)
    assert dist.shape == (30, 5) and (dist > 0.3).all()


def test_near_twins_resolve_to_the_exact_nearest():
    """Two references closer to each other than float32 scores can tell apart: the exact nearest still wins."""
    g = torch.Generator().manual_seed(3)
    refs = torch.rand(50, 1, 32, 32, generator=g) * 2 - 1
    queries = torch.rand(200, 1, 32, 32, generator=g) * 2 - 1
    twin = queries.clone()
    twin[:, 0, 0, :4] += 1e-3                     # nearly the query itself...
    near = queries.clone()
    near[:, 0, 0, :4] += 4e-3                     # ...and a farther near-twin, listed first: the squared distances
    refs = torch.cat([near, refs, twin])          # differ by less than float32 resolves at these norms
    out = nb.knn(queries, refs, k=2)
    exact = torch.cdist(queries.flatten(1).double(), refs.flatten(1).double(),
                        compute_mode="donot_use_mm_for_euclid_dist")  # the mm shortcut cancels like float32 does
    assert torch.equal(out.index[:, 0], exact.argmin(1))
    assert (out.index[:, 0] >= 250).all() and (out.index[:, 1] < 200).all()
    torch.testing.assert_close(out.distance[:, 0], exact.min(1).values, rtol=1e-6, atol=1e-9)


def _twins(offset: float, n_near: int = 5):
    """Queries, and references holding for every query a twin (1e-3 off) and ``n_near`` farther near-twins (2e-3,
    3e-3, ... off, listed first) whose squared distances differ by far less than float32 or bfloat16 scores
    resolve at these norms, plus 50 unrelated images; the twins are the last 200 references, in query order."""
    g = torch.Generator().manual_seed(3)
    refs = torch.rand(50, 1, 32, 32, generator=g) * 2 - 1 + offset
    queries = torch.rand(200, 1, 32, 32, generator=g) * 2 - 1 + offset
    near = []
    for step in range(n_near, 0, -1):
        copy = queries.clone()
        copy[:, 0, 0, :4] += (1 + step) * 1e-3
        near.append(copy)
    twin = queries.clone()
    twin[:, 0, 0, :4] += 1e-3
    return queries, torch.cat([*near, refs, twin])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [1, 2])
def test_near_twins_far_from_the_origin_resolve_to_the_exact_nearest(precision, k):
    """Far from the origin (every pixel + 100) the float32 expansion ‖q‖² + ‖r‖² − 2q·r cannot order the twins
    (shown below): the float32 path must re-score them exactly, the bfloat16 path must decline to certify them."""
    queries, refs = _twins(100.0)
    q, r = queries.flatten(1), refs.flatten(1)
    naive = torch.addmm((r * r).sum(1), q, r.T, alpha=-2.0).argmin(1)
    exact = torch.cdist(q.double(), r.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert (naive != exact.argmin(1)).any()  # the case is hard for float32 scores
    out = nb.knn(queries, refs, k=k, precision=precision)
    best = exact.topk(k, dim=1, largest=False)
    assert torch.equal(out.index, best.indices)
    assert (out.index[:, 0] >= r.shape[0] - 200).all()
    torch.testing.assert_close(out.distance, best.values, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", ["smooth", "offset", "binary", "duplicates"])
@pytest.mark.parametrize("k", [1, 3])
def test_bfloat16_path_returns_the_float64_brute_force_answer(case, k):
    g = torch.Generator().manual_seed(7)
    q, r = _smooth(150, 20, 1), _smooth(400, 20, 2)
    if case == "offset":
        q, r = q + 3.0, r + 3.0
    elif case == "binary":  # masks: exact in bfloat16, so the remainders vanish
        q, r = (q > 0).float(), (r > 0).float()
    elif case == "duplicates":  # exact ties among the references, and queries that are references
        r = torch.cat([r, r[:50]])
        q = torch.cat([q[:100], r[torch.randint(0, 400, (50,), generator=g)]])
    out = nb.knn(q, r, k=k, precision="bfloat16", memory_mb=1)
    exact = torch.cdist(q.flatten(1).double(), r.flatten(1).double(), compute_mode="donot_use_mm_for_euclid_dist")
    best = exact.topk(k, dim=1, largest=False)
    torch.testing.assert_close(out.distance, best.values, rtol=1e-6, atol=1e-6)
    # the same distance, and the same neighbour wherever the k-th is not tied with the next
    chosen = exact.gather(1, out.index)
    torch.testing.assert_close(chosen, best.values, rtol=1e-6, atol=1e-6)


def test_bfloat16_error_bound_covers_the_gemm():
    """The bound the certificate relies on holds elementwise against float64 products, also for large offsets."""
    for offset in (0.0, 50.0):
        q, r = _smooth(64, 32, 4).flatten(1) + offset, _smooth(96, 32, 5).flatten(1) + offset
        q_high, r_high = q.bfloat16(), r.bfloat16()
        approx = (q_high @ r_high.T).float()
        exact = q.double() @ r.double().T
        dim = q.shape[1]
        bound = nb._gemm_dot_error(
            approx.abs(), q.norm(dim=1, keepdim=True) * (1 + nb._gamma(dim)),
            (q - q_high.float()).norm(dim=1, keepdim=True) * (1 + nb._gamma(dim)),
            r.norm(dim=1) * (1 + nb._gamma(dim)), (r - r_high.float()).norm(dim=1) * (1 + nb._gamma(dim)), dim, True)
        error = (approx.double() - exact).abs()
        assert (error <= bound).all()
        assert error.max() > bound.max() / 100  # and it is not vacuous


def test_the_float32_gemm_runs_in_full_precision_whatever_the_caller_set(monkeypatch):
    """A caller's ``set_float32_matmul_precision("medium")`` lets torch round GEMM inputs to TF32 or bfloat16, which
    would void the error bound: the search's GEMM must run at "highest" and the caller's setting come back."""
    seen = []
    addmm = torch.addmm

    def spy(*args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", spy)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        queries, refs = _twins(100.0)
        out = nb.knn(queries, refs, k=1, precision="float32")
        assert seen and set(seen) == {"highest"}
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(previous)
    exact = torch.cdist(queries.flatten(1).double(), refs.flatten(1).double(),
                        compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.equal(out.index[:, 0], exact.argmin(1))


def test_no_queries_give_empty_answers():
    out = nb.knn(torch.zeros(0, 1, 8, 8), torch.randn(5, 1, 8, 8), k=2)
    assert out.distance.shape == out.index.shape == (0, 2)
