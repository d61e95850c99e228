"""k-means of face embeddings for the cluster-based calibrations (pure numpy, deterministic given the seed).

Euclidean k-means on L2-normalised embeddings: k-means++ initialisation (each next
centre drawn with probability proportional to the squared distance to the nearest
centre chosen so far, from ``numpy.random.default_rng(seed)``), then Lloyd
iterations (assign every point to its nearest centre, move every centre to the mean
of its points) until no assignment changes or ``max_iter``. Centres are plain means
(not re-normalised). A centre left without points is moved to the point farthest
from its own centre. Ties in the nearest centre go to the lowest index.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MIN_PER_CLUSTER", "assign", "effective_clusters", "kmeans", "squared_distances"]


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``[N, K]`` squared Euclidean distances (float64, clipped at 0)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centroids, np.float64)
    d = np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * x @ c.T + np.einsum("ij,ij->i", c, c)[None, :]
    return np.maximum(d, 0.0)


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every row of ``x`` (int64 ``[N]``)."""
    return np.argmin(squared_distances(x, centroids), axis=1)


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    centres = [int(rng.integers(n))]
    closest = squared_distances(x, x[centres])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # every point sits on a centre: take the first unused point
            unused = np.setdiff1d(np.arange(n), centres)
            nxt = int(unused[0])
        else:
            nxt = int(rng.choice(n, p=closest / total))
        centres.append(nxt)
        closest = np.minimum(closest, squared_distances(x, x[[nxt]])[:, 0])
    return x[centres].copy()


def kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids [k, D], labels [N])`` of Euclidean k-means on the rows of ``x`` (see the module docstring)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"kmeans: expected an [N, D] array with N >= 1, got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: k must be in [1, N={x.shape[0]}], got {k}")
    rng = np.random.default_rng(seed)
    centroids = _plus_plus(x, k, rng)
    labels = assign(x, centroids)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        for c in np.nonzero(counts == 0)[0]:  # an empty cluster takes the point farthest from its centre
            far = int(np.argmax(np.sum((x - centroids[labels]) ** 2, axis=1)))
            counts[labels[far]] -= 1
            sums[labels[far]] -= x[far]
            labels[far] = c
            counts[c], sums[c] = 1, x[far]
        centroids = sums / counts[:, None]
        new = assign(x, centroids)
        if np.array_equal(new, labels):
            break
        labels = new
    return centroids, labels


#: fewest images per cluster on average: a larger requested K is lowered to N // MIN_PER_CLUSTER
MIN_PER_CLUSTER = 5


def effective_clusters(requested: int, n: int) -> int:
    """The K used for ``n`` embeddings: ``requested`` lowered to ``max(1, n // MIN_PER_CLUSTER)``."""
    if int(requested) < 1:
        raise ValueError(f"clusters must be >= 1, got {requested}")
    return int(min(int(requested), max(1, n // MIN_PER_CLUSTER)))
