"""FairCal (Salvador, Cairns, Voleti, Marshall, Oberman, ICLR 2022), label-free, over a per-cluster beta map base.

Fit: k-means of the unit calibration embeddings into K clusters (:mod:`.kmeans`);
for every cluster ``k`` a beta calibration map ``μ_k`` (:mod:`.beta`) fitted on the
calibration pairs with at least one image in ``k`` (its pair set ``S_k``). A pair
whose images fall in clusters ``k1``, ``k2`` gets the probability
``θ μ_k1(s) + (1 - θ) μ_k2(s)``, ``θ = |S_k1| / (|S_k1| + |S_k2|)``.

Choices where the paper leaves room: a cluster whose pair set lacks genuine or
impostor pairs uses the map fitted on all calibration pairs (keeping its own
``|S_k|`` as weight; equal weights when both are 0); the maps are L2-regularised
(``l2``, default 1e-3) so they stay finite on separable data.
"""
from __future__ import annotations

import numpy as np

from fpr_plugin.eval.calibration.base import METHODS, Calibration, Fields, check_centroids, cluster_params
from fpr_plugin.eval.calibration.beta import beta_features, fit_beta
from fpr_plugin.eval.calibration.fitdata import DEFAULT_MAX_PAIRS, FitData
from fpr_plugin.eval.calibration.kmeans import effective_clusters, kmeans

__all__ = ["ClusterBeta", "FairCal", "fit_cluster_maps"]

#: default L2 penalty of the beta maps' two slopes
DEFAULT_L2 = 1e-3


def fit_cluster_maps(scores: np.ndarray, issame: np.ndarray, pairs: np.ndarray, labels: np.ndarray,
                     n_clusters: int, l2: float) -> dict:
    """Per cluster beta parameters ``[K, 3]`` and pair counts ``[K]``, and the map of all pairs (``global_beta``)."""
    global_beta = fit_beta(scores, issame, l2)
    betas = np.tile(global_beta, (n_clusters, 1))
    counts = np.zeros(n_clusters, np.int64)
    la, lb = labels[pairs[:, 0]], labels[pairs[:, 1]]
    for c in range(n_clusters):
        mine = (la == c) | (lb == c)
        counts[c] = int(mine.sum())
        y = issame[mine]
        if y.any() and not y.all():
            betas[c] = fit_beta(scores[mine], y, l2)
    return {"betas": betas, "pair_counts": counts, "global_beta": global_beta}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class ClusterBeta(Calibration):
    """A beta map per cluster, mixed by the two clusters' pair counts (FairCal; the oracle with groups)."""

    def pair_scores(self, cosine: np.ndarray, ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
        f1, f2 = beta_features(cosine)
        betas = np.asarray(self.state["betas"], np.float64)
        counts = np.asarray(self.state["pair_counts"], np.float64)
        ka, kb = np.asarray(ka), np.asarray(kb)
        pa = _sigmoid(betas[ka, 0] * f1 + betas[ka, 1] * f2 + betas[ka, 2])
        pb = _sigmoid(betas[kb, 0] * f1 + betas[kb, 1] * f2 + betas[kb, 2])
        wa, wb = counts[ka], counts[kb]
        total = wa + wb
        theta = np.divide(wa, total, out=np.full(np.broadcast(wa, wb).shape, 0.5), where=total > 0)
        return theta * pa + (1.0 - theta) * pb

    @classmethod
    def _check_maps(cls, fields: Fields, k: int) -> dict:
        return {"betas": fields.array("betas", (k, 3)),
                "pair_counts": fields.array("pair_counts", (k,), integer=True, low=0),
                "global_beta": fields.array("global_beta", (3,))}


class FairCal(ClusterBeta):
    """FairCal: beta calibration per k-means cluster, a pair's probability mixed from its two clusters' maps."""

    method = "faircal"

    @classmethod
    def fit(cls, data: FitData, clusters: int = 100, seed: int = 0, l2: float = DEFAULT_L2,
            model_sha256: str = "", max_pairs: int = DEFAULT_MAX_PAIRS) -> "FairCal":
        """Fit on ``data`` with ``clusters`` k-means clusters (lowered for small sets)."""
        k = effective_clusters(clusters, data.embeddings.shape[0])
        centroids, labels = kmeans(data.embeddings, k, seed)
        maps = fit_cluster_maps(data.scores, data.issame, data.pairs, labels, k, l2)
        params = {"clusters": k, "clusters_requested": int(clusters), "seed": int(seed), "l2": float(l2),
                  "max_pairs": int(max_pairs)}
        return cls(params, {"centroids": centroids, **maps}, model_sha256, data.name, data.image_digests,
                   data.identity_digests, data.embedding)

    @classmethod
    def check_params(cls, fields: Fields) -> dict:
        return {**cluster_params(fields), "l2": float(fields.number("l2", 0.0))}

    @classmethod
    def check_state(cls, fields: Fields, params: dict) -> dict:
        k = params["clusters"]
        return {"centroids": check_centroids(fields, k), **cls._check_maps(fields, k)}


METHODS[FairCal.method] = FairCal
