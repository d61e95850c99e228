"""What a calibration is fitted on: unit embeddings, labelled pairs, per-image groups, and where they came from.

A dense set (an identity per image) gives every pair ``i < j`` (genuine: same
identity); past ``max_pairs`` pairs all genuine pairs are kept and the impostor
pairs are a uniform sample (seeded). A set with only a pair list gives its pairs.
Image and identity *digests* (the first 16 hex digits of SHA-256 of an image's
bytes, of its resolved path, or of an identity name) are kept in the calibration
so that ``fpr-eval`` can tell a test set that shares images or identities with the
fit set.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fpr_plugin.eval.evaluate import l2_normalize

__all__ = ["DEFAULT_MAX_PAIRS", "FitData", "all_pairs", "digest", "fit_data", "identity_digests", "image_digests",
           "image_groups"]

#: pairs of a dense fit set beyond which the impostor pairs are sampled
DEFAULT_MAX_PAIRS = 5_000_000


def digest(value: bytes | str) -> str:
    """First 16 hex digits of the SHA-256 of bytes or of a UTF-8 string."""
    data = value if isinstance(value, bytes) else value.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def image_digests(eval_set: Any) -> list[str]:
    """Sorted digests of a set's images: of the bytes for encoded images, of the resolved path for files."""
    out = set()
    for src in eval_set.images.sources:
        out.add(digest(src) if isinstance(src, bytes) else digest(str(Path(src).resolve())))
    return sorted(out)


def identity_digests(eval_set: Any) -> list[str]:
    """Sorted digests of a set's identity names (empty for a set without identities)."""
    if eval_set.identities is None:
        return []
    return sorted({digest(str(i)) for i in eval_set.identities.tolist()})


def image_groups(eval_set: Any) -> np.ndarray | None:
    """Group name of every image: the dense set's groups, else read from the pair list (``a/b`` pairs give ``a`` to
    the first image and ``b`` to the second); None when some image gets no group or two different ones."""
    if eval_set.image_groups is not None:
        return np.asarray(eval_set.image_groups, dtype=object)
    pairs = eval_set.pairs
    groups: list[str | None] = [None] * len(eval_set.images)
    for (a, b), g in zip(pairs.pairs.tolist(), pairs.groups.tolist()):
        parts = str(g).split("/")
        ga, gb = (parts[0], parts[0]) if len(parts) != 2 else (parts[0], parts[1])
        for index, name in ((a, ga), (b, gb)):
            if groups[index] not in (None, name):
                return None
            groups[index] = name
    if any(g is None for g in groups):
        return None
    return np.array(groups, dtype=object)


def all_pairs(identities: np.ndarray, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs [P, 2], issame [P])``: every pair ``i < j``, or all genuine pairs and a sample of impostor pairs."""
    ids = np.unique(np.asarray(identities).astype(str), return_inverse=True)[1]
    n = ids.shape[0]
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, 1)
        return np.column_stack([i, j]).astype(np.int64), ids[i] == ids[j]
    order = np.argsort(ids, kind="stable")
    gen = []
    starts = np.r_[0, np.nonzero(np.diff(ids[order]))[0] + 1, n]
    for a, b in zip(starts[:-1], starts[1:]):
        members = np.sort(order[a:b])
        if b - a > 1:
            ii, jj = np.triu_indices(b - a, 1)
            gen.append(np.column_stack([members[ii], members[jj]]))
    genuine = np.concatenate(gen).astype(np.int64) if gen else np.empty((0, 2), np.int64)
    want = max(max_pairs - genuine.shape[0], 1)
    rng = np.random.default_rng(seed)
    picked: set[tuple[int, int]] = set()
    while len(picked) < want:
        i = rng.integers(n, size=2 * want)
        j = rng.integers(n, size=2 * want)
        keep = (i < j) & (ids[i] != ids[j])
        for pair in zip(i[keep].tolist(), j[keep].tolist()):
            picked.add(pair)
            if len(picked) >= want:
                break
    impostor = np.array(sorted(picked), dtype=np.int64)
    pairs = np.concatenate([genuine, impostor])
    return pairs, np.r_[np.ones(genuine.shape[0], bool), np.zeros(impostor.shape[0], bool)]


@dataclass
class FitData:
    """Unit embeddings ``[N, D]`` (float64), pairs ``[P, 2]`` with same-person flags, optional group per image,
    and the fit set's name and digests."""

    embeddings: np.ndarray
    pairs: np.ndarray
    issame: np.ndarray
    groups: np.ndarray | None = None
    name: str = ""
    image_digests: list[str] = field(default_factory=list)
    identity_digests: list[str] = field(default_factory=list)
    embedding: dict = field(default_factory=dict)  # how the embeddings were made (flip, input convention)

    def __post_init__(self) -> None:
        self.embeddings = l2_normalize(self.embeddings, np.float64)
        self.pairs = np.asarray(self.pairs, np.int64).reshape(-1, 2)
        self.issame = np.asarray(self.issame, bool)
        n = self.embeddings.shape[0]
        if self.issame.shape != (self.pairs.shape[0],):
            raise ValueError(f"issame must hold one flag per pair ({self.pairs.shape[0]}), got {self.issame.shape}")
        if self.pairs.size and (self.pairs.min() < 0 or self.pairs.max() >= n):
            raise ValueError(f"pairs must index the {n} embeddings")
        if self.issame.all() or not self.issame.any():
            raise ValueError("a calibration needs genuine and impostor pairs; the fit set has only one kind")
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=object)
            if self.groups.shape != (n,):
                raise ValueError(f"groups must hold one name per embedding ({n}), got {self.groups.shape}")

    @property
    def scores(self) -> np.ndarray:
        """Cosine similarity of every pair (float64)."""
        x = self.embeddings
        return np.einsum("ij,ij->i", x[self.pairs[:, 0]], x[self.pairs[:, 1]])


def fit_data(eval_set: Any, embeddings: np.ndarray, max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0,
             embedding: dict | None = None) -> FitData:
    """The :class:`FitData` of a loaded set (:class:`fpr_plugin.eval.sets.EvalSet`) and its embeddings: all pairs
    from the identities when it has them, else its pair list."""
    if eval_set.identities is not None:
        pairs, issame = all_pairs(eval_set.identities, max_pairs, seed)
    elif eval_set.pairs is not None:
        pairs, issame = eval_set.pairs.pairs, eval_set.pairs.issame
    else:
        raise ValueError(f"set {eval_set.name}: a calibration needs a labelled set (identities or a pair list)")
    return FitData(embeddings, pairs, issame, image_groups(eval_set), eval_set.name, image_digests(eval_set),
                   identity_digests(eval_set), dict(embedding or {}))
