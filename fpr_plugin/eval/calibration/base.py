"""The shared base of the post-hoc calibrations: cluster assignment, pair scoring, and the JSON file.

A calibration maps the cosine ``s`` of a pair of (L2-normalised) embeddings and
the clusters ``k_a, k_b`` of its two images to a calibrated score
(:meth:`Calibration.pair_scores`); the clusters come from the nearest centroid of
the fitted k-means (:mod:`.kmeans`) or, for the oracle, from the true group labels.

The file (``to_dict`` / ``save``) is JSON::

    {"format": "fpr-calibration", "version": 1, "method": "faircal",
     "params": {...}, "model_sha256": "<64 hex>", "fit_set": "dense-fit",
     "fit_images": ["<16 hex>", ...], "fit_identities": ["<16 hex>", ...],
     "embedding": {"flip": true, ...}, "state": {...per method...}}

:func:`load_calibration` checks every field (types, shapes, finite numbers) and
raises :class:`fpr_plugin.cli_errors.UserError` naming the file and the key;
nothing in the file is evaluated.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fpr_plugin.atomic import atomic_write
from fpr_plugin.cli_errors import UserError
from fpr_plugin.eval.evaluate import l2_normalize

__all__ = ["FORMAT", "VERSION", "Calibration", "Fields", "load_calibration", "METHODS"]

FORMAT = "fpr-calibration"
VERSION = 1
_SHA = re.compile(r"^([0-9a-f]{64})?$")  # empty: fitted without a model file
_DIGEST = re.compile(r"^[0-9a-f]{16}$")

#: method name -> Calibration subclass (filled by the method modules)
METHODS: dict[str, type["Calibration"]] = {}


class Fields:
    """Checked access to a JSON object: every error names the file and the dotted key."""

    def __init__(self, data: Any, source: str, prefix: str = ""):
        if not isinstance(data, dict):
            where = f"key {prefix.rstrip('.')!r}" if prefix else "the file"
            raise UserError(f"{source}: {where} must be a JSON object, got {type(data).__name__}")
        self.data, self.source, self.prefix = data, source, prefix

    def error(self, key: str, expected: str, value: Any = None) -> UserError:
        shown = "" if value is None else f", got {_short(value)}"
        return UserError(f"{self.source}: key {self.prefix + key!r} must be {expected}{shown}")

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise UserError(f"{self.source}: key {self.prefix + key!r} is missing")
        return self.data[key]

    def sub(self, key: str) -> "Fields":
        return Fields(self.get(key), self.source, f"{self.prefix}{key}.")

    def string(self, key: str, pattern: re.Pattern | None = None) -> str:
        value = self.get(key)
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            raise self.error(key, "a string" + (f" matching {pattern.pattern}" if pattern else ""), value)
        return value

    def number(self, key: str, low: float = -math.inf, high: float = math.inf, integer: bool = False) -> float:
        value = self.get(key)
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not math.isfinite(value) or not low <= value <= high:
            kind = "an integer" if integer else "a finite number"
            raise self.error(key, f"{kind} in [{low:g}, {high:g}]", value)
        return value

    def array(self, key: str, shape: tuple, integer: bool = False, low: float = -math.inf) -> np.ndarray:
        """A nested list of finite numbers of the given shape (None in ``shape``: any length there)."""
        value = self.get(key)
        expected = f"a {len(shape)}-D list of finite {'integers' if integer else 'numbers'} of shape " \
                   f"{tuple('*' if s is None else s for s in shape)}"
        flat = []

        def walk(v: Any, depth: int) -> list[int]:
            if depth == len(shape):
                good = isinstance(v, int) if integer else isinstance(v, (int, float))
                if isinstance(v, bool) or not good or not math.isfinite(v) or v < low:
                    raise self.error(key, expected, v)
                flat.append(v)
                return []
            if not isinstance(v, list) or (shape[depth] is not None and len(v) != shape[depth]):
                raise self.error(key, expected)
            inner = [walk(item, depth + 1) for item in v]
            if any(i != inner[0] for i in inner):
                raise self.error(key, expected + " (ragged)")
            return [len(v)] + (inner[0] if inner else [0] * (len(shape) - depth - 1))

        dims = walk(value, 0)
        return np.array(flat, dtype=np.int64 if integer else np.float64).reshape(dims)

    def strings(self, key: str, pattern: re.Pattern | None = None) -> list[str]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or \
                (pattern is not None and not all(pattern.match(v) for v in value)):
            raise self.error(key, "a list of strings" + (f" matching {pattern.pattern}" if pattern else ""))
        return list(value)


def cluster_params(fields: Fields) -> dict:
    """The parameters every k-means method stores: clusters (used, requested), seed, max_pairs."""
    return {"clusters": int(fields.number("clusters", 1, 1e7, integer=True)),
            "clusters_requested": int(fields.number("clusters_requested", 1, 1e9, integer=True)),
            "seed": int(fields.number("seed", 0, 2**63, True)),
            "max_pairs": int(fields.number("max_pairs", 1, 2**63, integer=True))}


def check_centroids(fields: Fields, k: int) -> np.ndarray:
    """The stored ``[k, D]`` k-means centroids (D >= 1)."""
    centroids = fields.array("centroids", (k, None))
    if centroids.shape[1] < 1:
        raise fields.error("centroids", "a non-empty [K, D] list")
    return centroids


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class Calibration:
    """A fitted post-hoc score calibration (subclasses: :class:`.FSN`, :class:`.FairCal`, :class:`.Oracle`)."""

    method: ClassVar[str] = ""
    #: whether the clusters are the true groups (the test pairs' groups must then be given)
    needs_groups: ClassVar[bool] = False

    def __init__(self, params: dict, state: dict, model_sha256: str = "", fit_set: str = "",
                 fit_images: list[str] | None = None, fit_identities: list[str] | None = None,
                 embedding: dict | None = None):
        self.params, self.state = dict(params), dict(state)
        self.model_sha256, self.fit_set = model_sha256, fit_set
        self.fit_images, self.fit_identities = list(fit_images or []), list(fit_identities or [])
        self.embedding = dict(embedding or {})

    # ------------------------------------------------------------------ scoring
    def assign(self, unit_embeddings: np.ndarray, groups: Any = None) -> np.ndarray:
        """Cluster index of every (unit) embedding: the nearest centroid (the oracle: its group)."""
        from fpr_plugin.eval.calibration.kmeans import assign

        return assign(unit_embeddings, self.state["centroids"])

    def pair_scores(self, cosine: np.ndarray, ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
        """Calibrated scores of pairs with cosines ``cosine`` whose images are in clusters ``ka``, ``kb``
        (arrays broadcast together, e.g. a tile and its row and column clusters)."""
        raise NotImplementedError

    def score(self, emb_a: np.ndarray, emb_b: np.ndarray, groups_a: Any = None, groups_b: Any = None) -> np.ndarray:
        """Calibrated score of each pair ``(emb_a[i], emb_b[i])`` (embeddings need not be normalised)."""
        a, b = l2_normalize(emb_a, np.float64), l2_normalize(emb_b, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"emb_a and emb_b must have one shape, got {a.shape} and {b.shape}")
        dim = self.dimension
        if dim is not None and a.shape[1] != dim:
            raise ValueError(f"embeddings have {a.shape[1]} dimensions; this calibration was fitted on {dim}")
        return self.pair_scores(np.einsum("ij,ij->i", a, b), self.assign(a, groups_a), self.assign(b, groups_b))

    @property
    def dimension(self) -> int | None:
        """Embedding size the calibration was fitted on (None when it does not depend on it)."""
        centroids = self.state.get("centroids")
        return None if centroids is None else int(np.asarray(centroids).shape[1])

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        """The JSON-ready dict of the calibration (the file's layout, see the module docstring)."""
        return {"format": FORMAT, "version": VERSION, "method": self.method, "params": _jsonable(self.params),
                "model_sha256": self.model_sha256, "fit_set": self.fit_set, "fit_images": list(self.fit_images),
                "fit_identities": list(self.fit_identities), "embedding": _jsonable(self.embedding),
                "state": _jsonable(self.state)}

    @staticmethod
    def from_dict(data: Any, source: str = "calibration") -> "Calibration":
        """The calibration of a dict from :meth:`to_dict`; UserError naming ``source`` and the key when it is bad."""
        top = Fields(data, source)
        if top.get("format") != FORMAT:
            raise top.error("format", repr(FORMAT), top.get("format"))
        version = top.get("version")
        if version != VERSION or isinstance(version, bool):
            raise top.error("version", f"{VERSION} (this fpr_plugin reads version {VERSION})", version)
        method = top.string("method")
        if method not in METHODS:
            raise top.error("method", f"one of {sorted(METHODS)}", method)
        cls = METHODS[method]
        embedding = top.sub("embedding")
        for key, value in embedding.data.items():
            if not isinstance(value, (str, int, float, bool)) or value is None:
                raise embedding.error(key, "a string, number or boolean", value)
        params = cls.check_params(top.sub("params"))
        state = cls.check_state(top.sub("state"), params)
        return cls(params, state, top.string("model_sha256", _SHA), top.string("fit_set"),
                   top.strings("fit_images", _DIGEST), top.strings("fit_identities", _DIGEST), dict(embedding.data))

    @classmethod
    def check_params(cls, fields: Fields) -> dict:
        """The method's parameters, checked (subclasses)."""
        raise NotImplementedError

    @classmethod
    def check_state(cls, fields: Fields, params: dict) -> dict:
        """The method's fitted state as arrays, checked (subclasses)."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> Path:
        """Write the calibration as JSON, all or nothing (:func:`fpr_plugin.atomic.atomic_write`)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), allow_nan=False)

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")

        atomic_write(path, write)
        return path

    def describe(self) -> str:
        """One line: method, clusters, fit set, model."""
        return f"{self.method} fitted on {self.fit_set or '?'} for model {self.model_sha256[:16]}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def load_calibration(path: str | os.PathLike) -> Calibration:
    """A calibration from its JSON file; UserError naming the file (and key) when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not a calibration JSON file ({exc})") from None
    return Calibration.from_dict(data, str(path))
