"""The report's pair-list and dense protocols on calibrated scores (same layouts as :mod:`fpr_plugin.eval.evaluate`).

:func:`calibrated_dense` is the dense protocol of :func:`fpr_plugin.eval.dense.dense_fairness`
(every within-group impostor pair, one global threshold at each overall FPR, the
``(floor(f n) + 1)``-th largest impostor score) with each tile's cosines replaced
by the calibration's scores; it keeps the impostor scores that can be above the
largest needed rank in a buffer (``O(max f * #impostors)``) and every genuine score.
:func:`pairs_entry` and :func:`dense_entry` restate the compact curves of
:func:`fpr_plugin.eval.evaluate.evaluate_pairs` / ``evaluate_dense`` for scores that are not cosines.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fpr_plugin.eval import metrics
from fpr_plugin.eval.calibration.base import Calibration
from fpr_plugin.eval.dense import DenseResult, iter_tiles
from fpr_plugin.eval.evaluate import CURVE_POINTS, l2_normalize
from fpr_plugin.eval.sets.base import PairList

__all__ = ["calibrated_dense", "dense_entry", "pairs_entry", "pair_list_scores"]


def _first_seen_codes(labels: Any) -> tuple[np.ndarray, list[str]]:
    arr = np.asarray(labels).astype(str)
    names, first, codes = np.unique(arr, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(names.shape[0], np.int64)
    rank[order] = np.arange(names.shape[0])
    return rank[codes], [str(names[i]) for i in order]


class _Top:
    """The ``k`` largest values offered (with a group index each)."""

    def __init__(self, k: int):
        self.k, self.bound = k, -np.inf
        self.vals: list[np.ndarray] = []
        self.tags: list[np.ndarray] = []
        self.size = 0

    def add(self, values: np.ndarray, tag: int) -> None:
        keep = values[values > self.bound] if self.bound > -np.inf else values
        if keep.size:
            self.vals.append(keep)
            self.tags.append(np.full(keep.size, tag, np.int16))
            self.size += keep.size
            if self.size > 2 * self.k + (1 << 16):
                self._shrink()

    def _shrink(self) -> None:
        vals, tags = np.concatenate(self.vals), np.concatenate(self.tags)
        if vals.size > self.k:
            idx = np.argpartition(vals, vals.size - self.k)[vals.size - self.k:]
            vals, tags = vals[idx], tags[idx]
            self.bound = float(vals.min())
        self.vals, self.tags, self.size = [vals], [tags], vals.size

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._shrink()
        order = np.argsort(-self.vals[0], kind="stable")
        return self.vals[0][order], self.tags[0][order]


def calibrated_dense(embeddings: np.ndarray, identities: Any, groups: Any, calibration: Calibration,
                     fprs: Sequence[float], chunk_size: int = 2048,
                     progress: Callable[[int], Any] | None = None) -> DenseResult:
    """:func:`fpr_plugin.eval.dense.dense_fairness` on the calibrated scores of every within-group pair."""
    fprs = [metrics.check_fpr(f, "fprs") for f in fprs]
    x = l2_normalize(embeddings, np.float64)
    ids, _ = _first_seen_codes(identities)
    gcodes, names = _first_seen_codes(groups)
    clusters = calibration.assign(x, np.asarray(groups, dtype=object) if calibration.needs_groups else None)
    order = np.lexsort((ids, gcodes))
    x, ids, gcodes, clusters = x[order], ids[order], gcodes[order], clusters[order]
    bounds = [(int(np.searchsorted(gcodes, g)), int(np.searchsorted(gcodes, g, side="right")))
              for g in range(len(names))]
    n_imp, n_gen = [], []
    for a, b in bounds:
        per_id = np.unique(ids[a:b], return_counts=True)[1]
        gen = int(np.sum(per_id * (per_id - 1) // 2))
        n_gen.append(gen)
        n_imp.append((b - a) * (b - a - 1) // 2 - gen)
    for name, ni, ng in zip(names, n_imp, n_gen):
        if ni == 0 or ng == 0:
            raise ValueError(f"group {name!r} has {ng} genuine and {ni} impostor pairs; the dense protocol needs both")
    total = sum(n_imp)
    ranks = [metrics.rank_at_fpr(f, total) for f in fprs]
    top = _Top(min(max(ranks) + 1, total))
    gen_scores, gen_groups = [], []
    for g, i0, i1, j0, j1 in iter_tiles(bounds, chunk_size):
        tile = calibration.pair_scores(x[i0:i1] @ x[j0:j1].T, clusters[i0:i1, None], clusters[None, j0:j1])
        upper = np.arange(j0, j1)[None, :] > np.arange(i0, i1)[:, None]
        same = ids[i0:i1, None] == ids[None, j0:j1]
        gen_scores.append(tile[upper & same])
        gen_groups.append(np.full(gen_scores[-1].size, g, np.int16))
        top.add(tile[upper & ~same], g)
        if progress is not None:
            progress(1)
    top_scores, top_groups = top.result()
    genuine, genuine_groups = np.concatenate(gen_scores), np.concatenate(gen_groups)
    at_fpr = []
    for f, k in zip(fprs, ranks):
        threshold = top_scores[k]
        fp = np.bincount(top_groups[top_scores > threshold], minlength=len(names))
        tp = np.bincount(genuine_groups[genuine > threshold], minlength=len(names))
        counts = {name: {"fp": int(fp[i]), "n_impostor": n_imp[i], "tp": int(tp[i]), "n_genuine": n_gen[i]}
                  for i, name in enumerate(names)}
        at_fpr.append(metrics.fairness_at_threshold(counts, f, float(threshold), k, total))
    return DenseResult(names, dict(zip(names, n_imp)), dict(zip(names, n_gen)), at_fpr, top_scores, top_groups,
                       genuine, genuine_groups)


def dense_entry(result: DenseResult, n_images: int) -> dict:
    """The report's dense dict (numbers and compact curves) of a :class:`DenseResult`."""
    curves, roc = {}, {}
    for gi, group in enumerate(result.groups):
        thresholds, fpr = result.fpr_curve(group)
        pick = np.unique(np.clip(np.round(np.logspace(0, np.log10(thresholds.shape[0]), CURVE_POINTS)).astype(int),
                                 1, thresholds.shape[0])) - 1
        thresholds, fpr = thresholds[pick], fpr[pick]
        gen = np.sort(result.genuine_scores[result.genuine_groups == gi])
        tpr = (gen.shape[0] - np.searchsorted(gen, thresholds, side="right")) / max(gen.shape[0], 1)
        curves[group] = {"threshold": thresholds.tolist(), "fpr": fpr.tolist()}
        roc[group] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return {"n_images": int(n_images), "n_impostor": result.n_impostor, "n_genuine": result.n_genuine,
            "at_fpr": result.at_fpr, "fpr_vs_threshold": curves, "roc": roc}


def pair_list_scores(embeddings: np.ndarray, pairs: PairList, calibration: Calibration,
                     image_groups: np.ndarray | None = None) -> np.ndarray:
    """Calibrated score of every pair of a pair list (``image_groups``: the oracle's group per image)."""
    x = l2_normalize(embeddings, np.float64)
    clusters = calibration.assign(x, image_groups if calibration.needs_groups else None)
    a, b = pairs.pairs[:, 0], pairs.pairs[:, 1]
    return calibration.pair_scores(np.einsum("ij,ij->i", x[a], x[b]), clusters[a], clusters[b])


def pairs_entry(scores: np.ndarray, pairs: PairList, fprs: Sequence[float]) -> dict:
    """The report's pair-list dict for given pair scores (as :func:`fpr_plugin.eval.evaluate.evaluate_pairs`)."""
    accuracy = metrics.group_kfold_accuracy(scores, pairs.issame, pairs.groups, pairs.folds)
    roc, curves, tpr_at = {}, {}, {}
    for group in dict.fromkeys(pairs.groups.tolist()):
        mask = pairs.groups == group
        s, y = scores[mask], pairs.issame[mask]
        fpr, tpr, _ = metrics.roc_curve(s, y)
        n_imp = int((~y).sum())
        grid = np.unique(np.r_[np.logspace(np.log10(1.0 / n_imp), 0.0, CURVE_POINTS), 1.0])
        roc[group] = {"auc": metrics.auc(fpr, tpr), "fpr": grid.tolist(),
                      "tpr": metrics.roc_at_fprs(fpr, tpr, grid).tolist()}
        imp_desc = np.sort(s[~y])[::-1]
        ranks = np.unique(np.clip(np.round(np.logspace(0, np.log10(max(n_imp, 1)), CURVE_POINTS)).astype(int),
                                  1, n_imp))
        thresholds = imp_desc[ranks - 1]
        above = n_imp - np.searchsorted(imp_desc[::-1], thresholds, side="right")
        curves[group] = {"threshold": thresholds.tolist(), "fpr": (above / n_imp).tolist()}
        tpr_at[group] = {str(f): (metrics.tpr_at_fpr(s, y, f) if f * n_imp >= 1 else None) for f in fprs}
    return {"n_pairs": int(scores.shape[0]), "accuracy": accuracy, "roc": roc, "tpr_at_fpr": tpr_at,
            "fpr_vs_threshold": curves, "at_fpr": metrics.pair_fairness(scores, pairs.issame, pairs.groups, fprs)}
