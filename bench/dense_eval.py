"""Benchmark: dense protocol (all within-group impostor pairs) vs the bare similarity matmul.

Both run over the same tiles (upper triangle of each group's block, ``chunk x chunk``,
float32); the baseline does only ``X[i0:i1] @ X[j0:j1].T``. Prints the median wall
time of each (interleaved repeats) and their ratio, and the tracemalloc peak of
each (numpy reports its allocations to tracemalloc) next to the tile size and
the size of a full similarity matrix.

    python bench/dense_eval.py [--n 20000] [--dim 512] [--groups 8] [--chunk-size 2048] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from fpr_plugin.eval import dense


def make_embeddings(n: int, dim: int, n_groups: int, per_identity: int, seed: int = 0):
    """Random identities (a centre + noise per image), identities spread evenly over the groups."""
    rng = np.random.default_rng(seed)
    n_ids = n // per_identity
    ids = np.repeat(np.arange(n_ids), per_identity)[:n]
    groups = ids % n_groups
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    x = centres[ids] + 1.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return x, ids, groups


def matmul_only(x: np.ndarray, ids: np.ndarray, groups: np.ndarray, chunk: int) -> float:
    """The baseline: the same tiles, similarity only (on the same normalised, sorted embeddings)."""
    xs, _, _, bounds, _ = dense.prepare(x, ids, groups)
    checksum = 0.0
    for _, i0, i1, j0, j1 in dense.iter_tiles(bounds, chunk):
        sim = xs[i0:i1] @ xs[j0:j1].T
        checksum += float(sim[0, 0])
    return checksum


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--per-identity", type=int, default=20)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    x, ids, groups = make_embeddings(args.n, args.dim, args.groups, args.per_identity)
    fprs = dense.DEFAULT_FPRS
    run_dense = lambda: dense.dense_fairness(x, ids, groups, fprs, chunk_size=args.chunk_size)  # noqa: E731
    run_matmul = lambda: matmul_only(x, ids, groups, args.chunk_size)  # noqa: E731

    run_dense()  # warm-up (BLAS threads, page faults)
    t_dense, t_matmul = [], []
    for _ in range(args.repeats):
        t_matmul.append(timed(run_matmul))
        t_dense.append(timed(run_dense))
    m_dense, m_matmul = statistics.median(t_dense), statistics.median(t_matmul)

    result = run_dense()
    n_imp = sum(result.n_impostor.values())
    peak_dense, peak_matmul = peak_bytes(run_dense), peak_bytes(run_matmul)
    tile = args.chunk_size * args.chunk_size * 4
    mib = 1 << 20
    print(f"dense protocol: N={args.n} D={args.dim} groups={args.groups} chunk={args.chunk_size} "
          f"impostor pairs={n_imp:,} genuine pairs={sum(result.n_genuine.values()):,} "
          f"tiles={dense.count_tiles(groups, args.chunk_size)}")
    print(f"time  (median of {args.repeats}): matmul only {m_matmul:.3f} s, dense {m_dense:.3f} s, "
          f"ratio {m_dense / m_matmul:.2f}x (target <= 3x)")
    print(f"peak memory (tracemalloc): matmul only {peak_matmul / mib:.1f} MiB, dense {peak_dense / mib:.1f} MiB; "
          f"one tile {tile / mib:.1f} MiB, embeddings {x.nbytes / mib:.1f} MiB, candidate buffer "
          f"<= 2 x {len(result.top_scores):,} x 6 B = {2 * len(result.top_scores) * 6 / mib:.1f} MiB, "
          f"full N x N matrix {args.n * args.n * 4 / mib:.0f} MiB")
    for r in result.at_fpr:
        fpr_g = ", ".join(f"{g}:{v['fpr']:.1e}" for g, v in r["groups"].items())
        print(f"  f={r['target_fpr']:.0e} k={r['k']} threshold={r['threshold']:.4f} group FPR {fpr_g}")


if __name__ == "__main__":
    main()
