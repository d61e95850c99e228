"""Embedding cache: ``<cache>/<model sha256[:16]>_<dataset key>.npy``, written atomically.

The dataset key covers the image list's contents (bytes, or path + size + mtime
of each file, and the landmarks), so changed images are embedded again. The
embeddings are the whole cached result: what else the report says about a set
(its notes) comes from the loaded set itself, so a hit and a miss agree.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from fpr_plugin.atomic import atomic_write


def file_sha256(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(cache_dir: str | os.PathLike, model_sha256: str, dataset_key: str) -> Path:
    """Where the embeddings of one model on one data set live."""
    return Path(cache_dir) / f"{model_sha256[:16]}_{dataset_key}.npy"


def save_array_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to a temporary file in the same folder, then rename (nothing half-written)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.save would append ".npy" to a bare name
            np.save(handle, array, allow_pickle=False)

    atomic_write(path, write)


def cached_embeddings(cache_dir: str | os.PathLike, model_sha256: str, dataset_key: str,
                      compute: Callable[[], np.ndarray], expected_rows: int) -> tuple[np.ndarray, bool]:
    """Load the cached embeddings, or ``compute()`` and cache them; returns ``(embeddings, was_cached)``.

    A cached file with the wrong number of rows or non-finite values (a stale,
    foreign or damaged file) is recomputed.
    """
    path = cache_path(cache_dir, model_sha256, dataset_key)
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):  # not an .npy file: recompute
            cached = None
        if (cached is not None and cached.ndim == 2 and cached.shape[0] == expected_rows
                and np.isfinite(cached).all()):
            return cached, True
    embeddings = np.asarray(compute(), dtype=np.float32)
    save_array_atomic(path, embeddings)
    return embeddings, False
