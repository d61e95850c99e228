"""The report's pair-list and dense protocols on calibrated scores.

The protocols are those of :mod:`fpr_plugin.eval.evaluate` and
:func:`fpr_plugin.eval.dense.dense_fairness` (every within-group impostor pair,
one global threshold at each overall FPR), with each pair's cosine replaced by
the calibration's score; the report dicts come from the same functions.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fpr_plugin.eval.calibration.base import Calibration
from fpr_plugin.eval.dense import DenseResult, dense_fairness
from fpr_plugin.eval.evaluate import l2_normalize
from fpr_plugin.eval.sets.base import PairList

__all__ = ["calibrated_dense", "pair_list_scores"]


def calibrated_dense(embeddings: np.ndarray, identities: Any, groups: Any, calibration: Calibration,
                     fprs: Sequence[float], chunk_size: int = 2048,
                     progress: Callable[[int], Any] | None = None) -> DenseResult:
    """:func:`fpr_plugin.eval.dense.dense_fairness` on the calibrated scores of every within-group pair."""
    x = l2_normalize(embeddings, np.float64)
    clusters = calibration.assign(x, np.asarray(groups, dtype=object) if calibration.needs_groups else None)
    return dense_fairness(x, identities, groups, fprs, chunk_size=chunk_size, normalize=False, progress=progress,
                          score_tile=lambda cos, rows, cols: calibration.pair_scores(cos, rows[:, None], cols[None, :]),
                          tile_keys=clusters)


def pair_list_scores(embeddings: np.ndarray, pairs: PairList, calibration: Calibration,
                     image_groups: np.ndarray | None = None) -> np.ndarray:
    """Calibrated score of every pair of a pair list (``image_groups``: the oracle's group per image)."""
    x = l2_normalize(embeddings, np.float64)
    clusters = calibration.assign(x, image_groups if calibration.needs_groups else None)
    a, b = pairs.pairs[:, 0], pairs.pairs[:, 1]
    return calibration.pair_scores(np.einsum("ij,ij->i", x[a], x[b]), clusters[a], clusters[b])
