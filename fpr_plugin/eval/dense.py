"""Dense low-FPR protocol: every within-group impostor pair, one global threshold.

For ``N`` embeddings with an identity and a group each, the impostor set is every
pair ``(i, j)``, ``i < j``, of the same group and different identities; the
genuine set is every pair of the same identity. Similarities are computed in
square tiles of ``chunk_size`` rows/columns (memory ``O(chunk_size**2)``), and the
global threshold at each overall FPR ``f`` is the exact ``(floor(f*n)+1)``-th
largest impostor similarity (see :mod:`fpr_plugin.eval.metrics`), found without
sorting all pairs: one pass keeps a candidate buffer of the ``K`` largest
impostor similarities seen so far (``K`` = the largest rank needed + 1), filtering
each tile against the buffer's current ``K``-th value and shrinking the buffer with
``np.partition``. The buffer remembers each candidate's group, so every group's
false-positive count at every threshold comes from the same pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from fpr_plugin.eval.metrics import check_fpr, fairness_at_threshold, rank_at_fpr

DEFAULT_FPRS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class DenseResult:
    """Output of :func:`dense_fairness`.

    ``at_fpr``: one :func:`~fpr_plugin.eval.metrics.fairness_at_threshold` dict per
    target FPR. ``top_scores`` / ``top_groups``: the largest impostor similarities
    (descending) and their group index, enough to draw every group's FPR for all
    thresholds down to the one at the largest target FPR. ``genuine_scores`` /
    ``genuine_groups``: all genuine similarities.
    """

    groups: list[str]
    n_impostor: dict[str, int]
    n_genuine: dict[str, int]
    at_fpr: list[dict]
    top_scores: np.ndarray
    top_groups: np.ndarray
    genuine_scores: np.ndarray
    genuine_groups: np.ndarray

    def fpr_curve(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """``(thresholds, fpr)`` of one group at each candidate threshold (accept ``score > threshold``)."""
        gi = self.groups.index(group)
        is_g = (self.top_groups == gi).astype(np.int64)
        # at threshold top_scores[i] the accepted candidates are those strictly above it
        above = np.cumsum(is_g) - is_g
        ends = np.r_[np.nonzero(np.diff(self.top_scores))[0], self.top_scores.shape[0] - 1]
        first_of_run = np.r_[0, ends[:-1] + 1]
        return self.top_scores[first_of_run], above[first_of_run] / self.n_impostor[group]


class _TopK:
    """Running buffer of the ``k`` largest values seen (with a small integer tag each)."""

    def __init__(self, k: int):
        self.k = k
        self.bound = -np.inf  # every value <= bound can never enter the final top k
        self._vals: list[np.ndarray] = []
        self._tags: list[np.ndarray] = []
        self._size = 0
        self._limit = max(2 * k, 1 << 16)

    def add(self, values: np.ndarray, tag: int) -> None:
        """Offer a 1-D array of values (reordered in place when it is large and no bound is known yet)."""
        if self.bound == -np.inf and values.shape[0] > self._limit:
            # the k-th largest of any subset is a lower bound of the final k-th largest: start from
            # this array's own top k instead of copying all of it into the buffer
            cut = values.shape[0] - self.k
            values.partition(cut)
            values = values[cut:]
            if values[0] > -np.inf:
                self._vals.append(values.copy())
                self._tags.append(np.full(self.k, tag, dtype=np.int16))
                self._size += self.k
                self.bound = values[0]
                return
        keep = values > self.bound
        if not keep.any():
            return
        picked = values[keep]
        self._vals.append(picked)
        self._tags.append(np.full(picked.shape[0], tag, dtype=np.int16))
        self._size += picked.shape[0]
        if self._size > self._limit:
            self._shrink()

    def _shrink(self) -> None:
        vals, tags = np.concatenate(self._vals), np.concatenate(self._tags)
        if vals.shape[0] > self.k:
            idx = np.argpartition(vals, vals.shape[0] - self.k)[vals.shape[0] - self.k:]
            vals, tags = vals[idx], tags[idx]
            self.bound = vals.min()
        self._vals, self._tags, self._size = [vals], [tags], vals.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The top values, descending, and their tags."""
        self._shrink()
        vals, tags = self._vals[0], self._tags[0]
        order = np.argsort(-vals, kind="stable")
        return vals[order], tags[order]


def _encode(labels: Any, name: str, n: int) -> tuple[np.ndarray, list]:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array with one entry per embedding ({n}), got shape {arr.shape}")
    # order of first appearance
    names, first, codes = np.unique(arr, return_index=True, return_inverse=True)
    rank = np.empty(names.shape[0], dtype=np.int64)
    rank[np.argsort(first)] = np.arange(names.shape[0])
    ordered = [names[i].item() if hasattr(names[i], "item") else names[i] for i in np.argsort(first)]
    return rank[codes], [str(x) for x in ordered]


def iter_tiles(group_bounds: Sequence[tuple[int, int]], chunk_size: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Upper-triangle tiles ``(group, i0, i1, j0, j1)`` with ``j0 >= i0`` inside each group's row range."""
    for g, (a, b) in enumerate(group_bounds):
        for i0 in range(a, b, chunk_size):
            i1 = min(i0 + chunk_size, b)
            for j0 in range(i0, b, chunk_size):
                yield g, i0, i1, j0, min(j0 + chunk_size, b)


class Prepared(NamedTuple):
    """Embeddings sorted by (group, identity) and what the pass needs of them (:func:`prepare`)."""

    x: np.ndarray  # [N, D], sorted (and L2-normalised unless told not to)
    id_sorted: np.ndarray  # identity code of each sorted row
    group_names: list[str]  # in order of first appearance
    bounds: list[tuple[int, int]]  # each group's row range in the sorted order
    order: np.ndarray  # sorted row -> input row


def prepare(embeddings: Any, identities: Any, groups: Any, normalize: bool = True) -> Prepared:
    """Validate, L2-normalise and sort embeddings by (group, identity); returns the pieces the pass needs."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"embeddings must be [N, D] with N >= 2, got shape {x.shape}")
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or inf")
    id_codes, _ = _encode(identities, "identities", x.shape[0])
    group_codes, group_names = _encode(groups, "groups", x.shape[0])
    order = np.lexsort((id_codes, group_codes))
    x = np.ascontiguousarray(x[order])  # a copy: normalised in place below
    if normalize:
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no N x D temporary
        if np.any(norms == 0):
            raise ValueError("embeddings contain an all-zero row; cannot L2-normalise")
        x /= norms
    id_sorted, group_sorted = id_codes[order], group_codes[order]
    bounds = []
    for g in range(len(group_names)):
        idx = np.nonzero(group_sorted == g)[0]
        bounds.append((int(idx[0]), int(idx[-1]) + 1))
    return Prepared(x, id_sorted, group_names, bounds, order)


def _pair_counts(id_sorted: np.ndarray, bounds: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    n_imp, n_gen = [], []
    for a, b in bounds:
        n = b - a
        per_id = np.bincount(id_sorted[a:b] - id_sorted[a:b].min())
        gen = int(np.sum(per_id * (per_id - 1) // 2))
        n_gen.append(gen)
        n_imp.append(n * (n - 1) // 2 - gen)
    return n_imp, n_gen


#: ``score_tile(cosines [i, j], keys of the rows [i], keys of the columns [j]) -> scores [i, j]``
TileScore = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def dense_fairness(embeddings: Any, identities: Any, groups: Any, fprs: Sequence[float] = DEFAULT_FPRS,
                   chunk_size: int = 2048, normalize: bool = True,
                   progress: Callable[[int], Any] | None = None, score_tile: TileScore | None = None,
                   tile_keys: Any = None) -> DenseResult:
    """Global threshold at each overall FPR over all within-group impostor pairs, and every group's FPR/TPR there.

    ``embeddings`` ``[N, D]`` (float32 stays float32), ``identities`` and ``groups`` ``[N]``.
    ``progress``, if given, is called with the number of tiles done after each tile.
    ``score_tile``, if given, turns each tile's cosines into the scores the protocol
    thresholds (a post-hoc calibration), given ``tile_keys[N]`` (e.g. each embedding's
    cluster) of the tile's rows and columns.
    Memory: one ``chunk_size x chunk_size`` tile plus a buffer of about
    ``2 * max(fprs) * #impostors`` candidates.
    """
    fprs = [check_fpr(f, "fprs") for f in fprs]
    if not fprs:
        raise ValueError("fprs must hold at least one target FPR")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x, id_sorted, group_names, bounds, order = prepare(embeddings, identities, groups, normalize)
    if score_tile is not None:
        keys = np.asarray(tile_keys)
        if keys.shape[:1] != (x.shape[0],):
            raise ValueError(f"tile_keys must hold one entry per embedding ({x.shape[0]}), got shape {keys.shape}")
        keys = keys[order]
    n_imp, n_gen = _pair_counts(id_sorted, bounds)
    for name, ni, ng in zip(group_names, n_imp, n_gen):
        if ni == 0 or ng == 0:
            raise ValueError(f"group {name!r} has {ng} genuine and {ni} impostor pairs; the dense protocol needs both")
    total_imp = sum(n_imp)
    ranks = [rank_at_fpr(f, total_imp) for f in fprs]
    top = _TopK(min(max(ranks) + 1, total_imp))
    gen_scores, gen_groups = [], []

    for g, i0, i1, j0, j1 in iter_tiles(bounds, chunk_size):
        sim = x[i0:i1] @ x[j0:j1].T
        if score_tile is not None:
            sim = np.array(score_tile(sim, keys[i0:i1], keys[j0:j1]), dtype=sim.dtype)
        same_id_possible = id_sorted[i1 - 1] >= id_sorted[j0]  # identities are sorted inside a group
        if same_id_possible or j0 < i1:
            rows = np.arange(i0, i1)[:, None]
            cols = np.arange(j0, j1)[None, :]
            drop = cols <= rows  # lower triangle and diagonal: each pair once
            if same_id_possible:
                same = id_sorted[i0:i1, None] == id_sorted[None, j0:j1]
                genuine = same & ~drop
                gen_scores.append(sim[genuine])
                gen_groups.append(np.full(gen_scores[-1].shape[0], g, dtype=np.int16))
                drop |= same
            sim[drop] = -np.inf
        top.add(sim.ravel(), g)
        if progress is not None:
            progress(1)

    top_scores, top_groups = top.result()
    genuine_scores = np.concatenate(gen_scores) if gen_scores else np.empty(0, x.dtype)
    genuine_groups = np.concatenate(gen_groups) if gen_groups else np.empty(0, np.int16)
    at_fpr = []
    for f, k in zip(fprs, ranks):
        threshold = float(top_scores[k])
        accepted = top_scores > top_scores[k]
        fp = np.bincount(top_groups[accepted], minlength=len(group_names))
        tp = np.bincount(genuine_groups[genuine_scores > top_scores[k]], minlength=len(group_names))
        counts = {name: {"fp": int(fp[gi]), "n_impostor": n_imp[gi], "tp": int(tp[gi]), "n_genuine": n_gen[gi]}
                  for gi, name in enumerate(group_names)}
        at_fpr.append(fairness_at_threshold(counts, f, threshold, k, total_imp))
    return DenseResult(group_names, dict(zip(group_names, n_imp)), dict(zip(group_names, n_gen)), at_fpr,
                       top_scores, top_groups, genuine_scores, genuine_groups)


def count_tiles(groups: Any, chunk_size: int) -> int:
    """How many tiles :func:`dense_fairness` computes (for a progress bar)."""
    _, counts = np.unique(np.asarray(groups), return_counts=True)
    total = 0
    for n in counts:
        b = -(-int(n) // chunk_size)
        total += b * (b + 1) // 2
    return total
