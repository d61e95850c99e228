"""FSN, Fair Score Normalization (Terhörst, Kolf, Damer, Kirchbuchner, Kuijper, IJCB 2020), label-free.

Fit on the calibration pairs (:class:`.fitdata.FitData`):

1. k-means of the unit calibration embeddings into K clusters (:mod:`.kmeans`);
2. the global threshold ``thr_G`` at the target FPR over all calibration impostor
   pairs, and per cluster ``c`` the threshold ``thr_c`` at the same FPR over the
   impostor pairs with at least one image in ``c``;
3. a pair ``(i, j)`` scores ``s'_ij = s_ij - (Δthr_c(i) + Δthr_c(j)) / 2`` with
   ``Δthr_c = thr_c - thr_G``.

Thresholds follow the project's convention (:func:`fpr_plugin.eval.metrics.threshold_at_fpr`:
the ``(floor(f n) + 1)``-th largest impostor score). Details we chose where the
paper was not at hand to confirm them: a cluster's impostor pairs are those with
*at least one* image in it; a cluster where the FPR is not measurable
(``f * n_c < 1``) keeps ``Δthr_c = 0`` (the global threshold).
"""
from __future__ import annotations

import numpy as np

from fpr_plugin.eval.calibration.base import METHODS, Calibration, Fields, check_centroids, cluster_params
from fpr_plugin.eval.calibration.fitdata import DEFAULT_MAX_PAIRS, FitData
from fpr_plugin.eval.calibration.kmeans import effective_clusters, kmeans
from fpr_plugin.eval.metrics import check_fpr, rank_at_fpr, threshold_at_fpr

__all__ = ["FSN"]


class FSN(Calibration):
    """Fair Score Normalization: cosine shifted by the mean of its two clusters' threshold offsets."""

    method = "fsn"

    @classmethod
    def fit(cls, data: FitData, clusters: int = 100, fpr: float = 1e-3, seed: int = 0,
            model_sha256: str = "", max_pairs: int = DEFAULT_MAX_PAIRS) -> "FSN":
        """Fit on ``data`` with ``clusters`` k-means clusters (lowered for small sets) at target FPR ``fpr``."""
        fpr = check_fpr(fpr, "fpr")
        k = effective_clusters(clusters, data.embeddings.shape[0])
        centroids, labels = kmeans(data.embeddings, k, seed)
        imp = ~data.issame
        s = data.scores[imp]
        ka, kb = labels[data.pairs[imp, 0]], labels[data.pairs[imp, 1]]
        global_thr, _ = threshold_at_fpr(s, fpr)
        thresholds = np.full(k, global_thr)
        counts = np.zeros(k, np.int64)
        for c in range(k):
            mine = (ka == c) | (kb == c)
            counts[c] = int(mine.sum())
            if counts[c] and rank_at_fpr(fpr, int(counts[c])) >= 1:
                thresholds[c] = threshold_at_fpr(s[mine], fpr)[0]
        params = {"clusters": k, "clusters_requested": int(clusters), "fpr": fpr, "seed": int(seed),
                  "max_pairs": int(max_pairs)}
        state = {"centroids": centroids, "thresholds": thresholds, "global_threshold": float(global_thr),
                 "impostor_counts": counts}
        return cls(params, state, model_sha256, data.name, data.image_digests, data.identity_digests, data.embedding)

    @property
    def offsets(self) -> np.ndarray:
        """``Δthr_c = thr_c - thr_G`` per cluster."""
        return np.asarray(self.state["thresholds"]) - float(self.state["global_threshold"])

    def pair_scores(self, cosine: np.ndarray, ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
        delta = self.offsets
        return np.asarray(cosine, np.float64) - 0.5 * (delta[ka] + delta[kb])

    @classmethod
    def check_params(cls, fields: Fields) -> dict:
        return {**cluster_params(fields), "fpr": float(fields.number("fpr", 1e-300, 1.0))}

    @classmethod
    def check_state(cls, fields: Fields, params: dict) -> dict:
        k = params["clusters"]
        return {"centroids": check_centroids(fields, k), "thresholds": fields.array("thresholds", (k,)),
                "global_threshold": float(fields.number("global_threshold")),
                "impostor_counts": fields.array("impostor_counts", (k,), integer=True, low=0)}


METHODS[FSN.method] = FSN
