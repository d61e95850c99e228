"""Embedding cache: ``<output>/cache/<model sha256[:16]>_<dataset key>.npy``, written atomically.

The dataset key covers the image list's contents (bytes, or path + size + mtime
of each file), so changed images are embedded again. What else shapes the
report (e.g. which image sizes were resized) is kept beside it in a ``.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, MutableMapping

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


def _read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def cached_embeddings(cache_dir: str | os.PathLike, model_sha256: str, dataset_key: str,
                      compute: Callable[[], np.ndarray], expected_rows: int,
                      meta: MutableMapping | None = None,
                      meta_of: Callable[[], dict] | None = None) -> tuple[np.ndarray, bool]:
    """Load the cached embeddings, or ``compute()`` and cache them; returns ``(embeddings, was_cached)``.

    A cached file with the wrong number of rows, non-finite values (a stale,
    foreign or damaged file) is recomputed. With ``meta_of``, what it returns
    after ``compute()`` is cached beside the embeddings and, on a hit, copied
    into ``meta`` (a hit without it is recomputed).
    """
    path = cache_path(cache_dir, model_sha256, dataset_key)
    meta_path = path.with_suffix(".json")
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):  # not an .npy file: recompute
            cached = None
        saved_meta = _read_meta(meta_path) if meta_of is not None else {}
        if (cached is not None and cached.ndim == 2 and cached.shape[0] == expected_rows
                and saved_meta is not None and np.isfinite(cached).all()):
            if meta is not None:
                meta.update(saved_meta)
            return cached, True
    embeddings = np.asarray(compute(), dtype=np.float32)
    if meta_of is not None:
        computed = meta_of()
        if meta is not None:
            meta.update(computed)
        text = json.dumps(computed, sort_keys=True)
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    save_array_atomic(path, embeddings)
    return embeddings, False
