"""Fitting a calibration of an ONNX model on a loaded, labelled set (what ``fpr-calibrate`` does, as a library)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from fpr_plugin.eval.calibration.base import METHODS, Calibration
from fpr_plugin.eval.calibration.fitdata import DEFAULT_MAX_PAIRS, fit_data

__all__ = ["fit_calibration", "calibrate_model"]


def fit_calibration(method: str, data, **options) -> Calibration:
    """Fit ``method`` ("fsn", "faircal", "oracle") on ``data``; ``options`` are that method's ``fit`` keywords."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method].fit(data, **options)


def calibrate_model(model: str | Path, fit_set, method: str, *, clusters: int = 100, fpr: float = 1e-3,
                    seed: int = 0, l2: float = 1e-3, max_pairs: int = DEFAULT_MAX_PAIRS, flip: bool = True,
                    batch_size: int = 64, providers: Sequence[str] | None = None, input_mean: float | None = None,
                    input_std: float | None = None, input_color: str | None = None, name: str | None = None,
                    progress: bool = False) -> Calibration:
    """Embed ``fit_set`` (an :class:`~fpr_plugin.eval.sets.EvalSet` with identities or pairs) with ``model``
    and fit ``method`` on it; the calibration records the model's sha256 and the fit set's digests."""
    from fpr_plugin.eval.cache import file_sha256
    from fpr_plugin.eval.runner import build_embedder, embed_set

    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    embedder = build_embedder(Path(model), providers, batch_size,
                              {"input_mean": input_mean, "input_std": input_std, "input_color": input_color})
    emb = embed_set(embedder, fit_set.images, batch_size, flip, f"embed {fit_set.name}", progress)
    data = fit_data(fit_set, emb, max_pairs, seed,
                    embedding={"flip": flip, "convention": embedder.input_info()["convention"]})
    data.name = name or fit_set.name
    if method == "oracle" and data.groups is None:
        raise ValueError(f"the oracle calibration needs a group per image; set {fit_set.name} does not give one")
    options = {"model_sha256": file_sha256(Path(model)), "max_pairs": max_pairs}
    if method == "fsn":
        options.update(clusters=clusters, fpr=fpr, seed=seed)
    elif method == "faircal":
        options.update(clusters=clusters, seed=seed, l2=l2)
    else:
        options.update(l2=l2)
    return fit_calibration(method, data, **options)
