"""Exact nearest-neighbour search, 5 000 queries × 5 000 references at 64×64, against scikit-learn and faiss.

    OMP_NUM_THREADS=2 python benchmarks/bench_neighbours.py [--n 5000] [--size 64] [--threads 2] [--repeats 3]

Prints the best-of-``repeats`` wall time of cmraudit.measure.neighbours.knn (its bfloat16 GEMM where this CPU has fast
bfloat16 units, and then also its float32 GEMM), sklearn NearestNeighbors(algorithm="brute")
and faiss IndexFlatL2 (skipped when faiss-cpu is not installed: ``pip install faiss-cpu``), checks that all return
the same neighbours, and the cost of the near-copy search (shifts ≤ 2 px, flips, intensity) relative to the plain
one. Images are low-pass filtered noise (image-like correlations), generated, not downloaded.
Targets: ≥ 2× faster than sklearn, within 1.15× of faiss, near-copy ≤ 3× plain.
"""
from __future__ import annotations

import argparse
import time

import torch


def images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from cmraudit.measure.neighbours import _bfloat16_is_fast, knn, near_copy_knn

    q, r = images(args.n, args.size, 0), images(args.n, args.size, 1)
    qn, rn = q.flatten(1).numpy(), r.flatten(1).numpy()
    print(f"{args.n} x {args.n} images at {args.size}x{args.size}, {args.threads} threads")
    t_ours, ours = best_of(lambda: knn(q, r, k=1), args.repeats)
    gemm = "bfloat16" if _bfloat16_is_fast(torch.device("cpu")) else "float32"
    print(f"cmraudit knn ({gemm} GEMM, certified) {t_ours:7.3f} s")
    if gemm == "bfloat16":
        t_f32, f32 = best_of(lambda: knn(q, r, k=1, precision="float32"), args.repeats)
        print(f"cmraudit knn (float32 GEMM, certified)  {t_f32:7.3f} s   identical neighbours: "
              f"{bool(torch.equal(f32.index, ours.index))}")

    from sklearn.neighbors import NearestNeighbors

    t_sk, (_, sk_idx) = best_of(lambda: NearestNeighbors(n_neighbors=1, algorithm="brute", n_jobs=args.threads)
                                .fit(rn).kneighbors(qn), args.repeats)
    same_sk = bool((sk_idx[:, 0] == ours.index[:, 0].numpy()).all())
    print(f"sklearn NearestNeighbors(brute)      {t_sk:7.3f} s   ratio {t_sk / t_ours:5.2f}x  "
          f"identical neighbours: {same_sk}")
    try:
        import faiss
    except ImportError:
        print("faiss IndexFlatL2                    skipped (pip install faiss-cpu)")
    else:
        faiss.omp_set_num_threads(args.threads)

        def run_faiss():
            index = faiss.IndexFlatL2(qn.shape[1])
            index.add(rn)
            return index.search(qn, 1)

        t_fa, (_, fa_idx) = best_of(run_faiss, args.repeats)
        same_fa = bool((fa_idx[:, 0] == ours.index[:, 0].numpy()).all())
        print(f"faiss IndexFlatL2                    {t_fa:7.3f} s   cmraudit/faiss {t_ours / t_fa:5.2f}x  "
              f"identical neighbours: {same_fa}")
    t_near, _ = best_of(lambda: near_copy_knn(q, r, k=1), args.repeats)
    print(f"near-copy search (shift<=2, flips)   {t_near:7.3f} s   cost vs plain {t_near / t_ours:5.2f}x")


if __name__ == "__main__":
    main()
