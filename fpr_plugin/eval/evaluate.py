"""From embeddings to the report's numbers: pair-list protocol and dense protocol of one test set."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fpr_plugin.eval import metrics
from fpr_plugin.eval.dense import DenseResult, dense_fairness
from fpr_plugin.eval.sets.base import PairList

#: points kept per compact curve in report.json (exact curve values at log-spaced FPRs)
CURVE_POINTS = 200


def l2_normalize(embeddings: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows raise)."""
    x = np.asarray(embeddings, dtype=dtype)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{int(np.sum(norms == 0))} embedding(s) are all zero; cannot normalise")
    return x / norms


def _log_grid(lowest: float, points: int = CURVE_POINTS) -> np.ndarray:
    return np.unique(np.r_[np.logspace(np.log10(lowest), 0.0, points), 1.0])


def _fpr_vs_threshold(imp_desc: np.ndarray, n_impostor: int) -> dict:
    """Group FPR at thresholds taken at log-spaced ranks of its impostor scores (descending array)."""
    n = imp_desc.shape[0]
    ranks = np.unique(np.clip(np.round(np.logspace(0, np.log10(max(n, 1)), CURVE_POINTS)).astype(int), 1, n))
    thresholds = imp_desc[ranks - 1]
    # FPR at threshold t (accept > t) = #{scores > t} / n_impostor
    counts = n - np.searchsorted(imp_desc[::-1], thresholds, side="right")
    return {"threshold": thresholds.tolist(), "fpr": (counts / n_impostor).tolist()}


def pair_cosines(embeddings: np.ndarray, pairs: PairList) -> np.ndarray:
    """Cosine similarity of every pair of a pair list (float64)."""
    x = l2_normalize(embeddings, np.float64)
    return np.einsum("ij,ij->i", x[pairs.pairs[:, 0]], x[pairs.pairs[:, 1]])


def evaluate_pairs(embeddings: np.ndarray, pairs: PairList, fprs: Sequence[float]) -> dict:
    """Accuracy (k-fold per group, avg, std), ROC per group, TPR at each FPR, group FPRs at the global threshold."""
    return pairs_report(pair_cosines(embeddings, pairs), pairs, fprs)


def pairs_report(scores: np.ndarray, pairs: PairList, fprs: Sequence[float]) -> dict:
    """:func:`evaluate_pairs` for given pair scores (cosines, or a calibration's scores)."""
    accuracy = metrics.group_kfold_accuracy(scores, pairs.issame, pairs.groups, pairs.folds)
    roc, curves, tpr_at = {}, {}, {}
    for group in dict.fromkeys(pairs.groups.tolist()):
        mask = pairs.groups == group
        s, y = scores[mask], pairs.issame[mask]
        fpr, tpr, _ = metrics.roc_curve(s, y)
        n_imp = int((~y).sum())
        grid = _log_grid(1.0 / n_imp)
        roc[group] = {"auc": metrics.auc(fpr, tpr), "fpr": grid.tolist(),
                      "tpr": metrics.roc_at_fprs(fpr, tpr, grid).tolist()}
        curves[group] = _fpr_vs_threshold(np.sort(s[~y])[::-1], n_imp)
        tpr_at[group] = {str(f): (metrics.tpr_at_fpr(s, y, f) if f * n_imp >= 1 else None) for f in fprs}
    return {"n_pairs": int(scores.shape[0]), "accuracy": accuracy, "roc": roc, "tpr_at_fpr": tpr_at,
            "fpr_vs_threshold": curves, "at_fpr": metrics.pair_fairness(scores, pairs.issame, pairs.groups, fprs)}


def evaluate_dense(embeddings: np.ndarray, identities: Any, groups: Any, fprs: Sequence[float],
                   chunk_size: int = 2048, progress: Callable[[int], Any] | None = None) -> dict:
    """Dense protocol numbers plus compact curves: group FPR vs threshold and group ROC (down to the top candidates)."""
    result = dense_fairness(embeddings, identities, groups, fprs, chunk_size=chunk_size, progress=progress)
    return dense_report(result, np.asarray(embeddings).shape[0])


def dense_report(result: DenseResult, n_images: int) -> dict:
    """The report's dense dict (numbers and compact curves) of a :class:`~fpr_plugin.eval.dense.DenseResult`."""
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
    return {"n_images": int(n_images), "n_impostor": result.n_impostor,
            "n_genuine": result.n_genuine, "at_fpr": result.at_fpr, "fpr_vs_threshold": curves, "roc": roc}
