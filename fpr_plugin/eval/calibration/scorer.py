"""Calibrated pair scores for deployment: an ONNX model and the calibration fitted for it, checked to belong together.

Example::

    from fpr_plugin.eval.calibration import FairScorer

    scorer = FairScorer("model.onnx", "calib.json")
    p = scorer.score(faces_a, faces_b)          # aligned 112x112 BGR uint8 faces, one pair per row
    p = scorer.score_embeddings(emb_a, emb_b)   # or embeddings already made with the same model
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from fpr_plugin.cli_errors import UserError
from fpr_plugin.eval.cache import file_sha256
from fpr_plugin.eval.calibration.base import Calibration, load_calibration

__all__ = ["FairScorer"]


class FairScorer:
    """Embed faces with ``model`` (a path or an :class:`fpr_plugin.eval.embed.OnnxEmbedder`) and score pairs with
    ``calibration`` (a path or a :class:`Calibration`); UserError when the calibration was fitted for another model.

    ``embedder_options`` go to :class:`~fpr_plugin.eval.embed.OnnxEmbedder` when ``model`` is a path.
    """

    def __init__(self, model: str | os.PathLike | Any, calibration: str | os.PathLike | Calibration,
                 flip: bool | None = None, **embedder_options: Any):
        from fpr_plugin.eval.embed import OnnxEmbedder

        self.embedder = model if isinstance(model, OnnxEmbedder) else OnnxEmbedder(model, **embedder_options)
        self.calibration = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
        self.model_sha256 = file_sha256(self.embedder.model_path)
        if self.calibration.model_sha256 != self.model_sha256:
            raise UserError(f"calibration ({self.calibration.describe()}) was fitted for model sha256 "
                            f"{self.calibration.model_sha256}, not for {self.embedder.model_path} "
                            f"(sha256 {self.model_sha256}); fit one for this model with fpr-calibrate")
        # embed the way the calibration's fit set was embedded unless told otherwise
        self.flip = bool(self.calibration.embedding.get("flip", True)) if flip is None else bool(flip)

    def embed(self, images: Sequence[np.ndarray] | np.ndarray, color: str = "bgr") -> np.ndarray:
        """Embeddings ``[N, D]`` of aligned 112x112 uint8 faces (``color``: their channel order)."""
        return self.embedder.embed(images, color=color, flip=self.flip)

    def score_embeddings(self, emb_a: np.ndarray, emb_b: np.ndarray, groups_a: Any = None,
                         groups_b: Any = None) -> np.ndarray:
        """Calibrated score of each pair of embeddings (the oracle also needs each image's group)."""
        return self.calibration.score(emb_a, emb_b, groups_a, groups_b)

    def score(self, images_a: Sequence[np.ndarray] | np.ndarray, images_b: Sequence[np.ndarray] | np.ndarray,
              color: str = "bgr", groups_a: Any = None, groups_b: Any = None) -> np.ndarray:
        """Calibrated score of each pair ``(images_a[i], images_b[i])`` of aligned faces."""
        if len(images_a) != len(images_b):
            raise ValueError(f"images_a and images_b must pair up, got {len(images_a)} and {len(images_b)} images")
        return self.score_embeddings(self.embed(images_a, color), self.embed(images_b, color), groups_a, groups_b)
