"""Batched face embedding with onnxruntime, for models exported by fpr_plugin.export and for other models.

A model's input convention (:class:`fpr_plugin.face_input.InputConvention`: mean, std, channel
order) comes from the arguments, else from the model's ONNX metadata (``input_mean``,
``input_std``, ``input_color``, which fpr-export writes), else insightface's: RGB,
``(pixel - 127.5) / 127.5``, ``[N, 3, 112, 112]``. A graph with a fixed batch runs that batch
(the last one padded). A graph that lists stale inputs is run from a pruned copy
(:mod:`fpr_plugin.eval.onnx_prune`). Images are given as uint8 HWC arrays whose channel order
is stated with ``color``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fpr_plugin.eval.onnx_prune import loadable_model
from fpr_plugin.face_input import IMAGE_SIZE, check_color, resolve_convention, to_blob

__all__ = ["OnnxEmbedder", "default_providers"]


def default_providers() -> list[str]:
    """CUDA then CPU when onnxruntime has CUDA, else CPU only."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _check_face(face: np.ndarray, index: int) -> np.ndarray:
    face = np.asarray(face)
    if face.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or face.dtype != np.uint8:
        raise ValueError(
            f"images[{index}] must be an aligned {IMAGE_SIZE}x{IMAGE_SIZE}x3 uint8 image, got shape "
            f"{face.shape} dtype {face.dtype} (use embed_photos for unaligned photos with landmarks)"
        )
    return face


class OnnxEmbedder:
    """Embed aligned faces (or photos + 5 landmarks) with an ONNX face-embedding model.

    ``input_mean``/``input_std``/``input_color`` override the model's metadata (None: read it, else
    insightface's 127.5/127.5/RGB). ``cache_dir``: where a pruned copy of a graph with stale inputs is
    kept (default :func:`fpr_plugin.eval.onnx_prune.default_cache_dir`).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        batch_size: int = 64,
        *,
        input_mean: float | None = None,
        input_std: float | None = None,
        input_color: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {str(path)!r} does not exist")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if providers is None:
            providers = default_providers()
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise ValueError(
                f"onnxruntime providers {unknown} are not available; available: "
                f"{ort.get_available_providers()}"
            )
        self.model_path = str(path)
        load_path, self.pruned_inputs = loadable_model(path, cache_dir)
        self.loaded_path = str(load_path)  # the model file, or its pruned copy
        try:
            self.session = ort.InferenceSession(self.loaded_path, providers=list(providers))
        except Exception as exc:  # onnxruntime's own exception types: not a loadable ONNX graph
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{self.model_path} is not an ONNX model onnxruntime can load "
                             f"({' '.join(first.split())[:200]}); expected an exported .onnx face-embedding model") \
                from None
        self.providers = self.session.get_providers()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if inputs else []
        if (
            len(inputs) != 1
            or len(shape) != 4
            or shape[1:] != [3, IMAGE_SIZE, IMAGE_SIZE]
            or inputs[0].type != "tensor(float)"
        ):
            described = ", ".join(f"{i.name} {i.shape} {i.type}" for i in inputs)
            raise ValueError(
                f"{self.model_path} is not a face-embedding model: expected one float input "
                f"[N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}], found {described}"
            )
        if len(outputs) != 1 or len(outputs[0].shape) != 2 or not isinstance(outputs[0].shape[1], int):
            described = ", ".join(f"{o.name} {o.shape}" for o in outputs)
            raise ValueError(
                f"{self.model_path} is not a face-embedding model: expected one output [N, D], "
                f"found {described}"
            )
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.embedding_size: int = outputs[0].shape[1]
        # A graph exported with a fixed batch runs that batch only; the last one is padded.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.batch_size = self.fixed_batch or int(batch_size)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.convention, self.convention_origin = resolve_convention(
            metadata, input_mean, input_std, input_color, source=self.model_path)

    def input_info(self) -> dict:
        """What the report says about how the model was fed: convention, its origin, batch, pruned inputs."""
        c = self.convention
        return {"convention": c.describe(), "mean": c.mean, "std": c.std, "color": c.color,
                "origin": dict(self.convention_origin), "fixed_batch": self.fixed_batch,
                "pruned_inputs": len(self.pruned_inputs),
                "loaded_from": self.loaded_path if self.pruned_inputs else None}

    def _forward(self, blob: np.ndarray) -> np.ndarray:
        count = len(blob)
        if self.fixed_batch and count < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - count, *blob.shape[1:]), blob.dtype)
            blob = np.concatenate([blob, pad])
        (out,) = self.session.run([self.output_name], {self.input_name: blob})
        return out[:count].astype(np.float32, copy=False)

    def _run(
        self, count: int, face_at: Callable[[int], np.ndarray], color: str, flip: bool, progress: bool
    ) -> np.ndarray:
        from tqdm.auto import tqdm

        check_color(color)
        embeddings = np.empty((count, self.embedding_size), np.float32)
        starts = range(0, count, self.batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
            stop = min(start + self.batch_size, count)
            faces = np.stack([face_at(i) for i in range(start, stop)])
            out = self._forward(to_blob(faces, color, convention=self.convention))
            if flip:  # flip test: emb(img) + emb(horizontally flipped img)
                out = out + self._forward(to_blob(faces, color, flip=True, convention=self.convention))
            embeddings[start:stop] = out
        return embeddings

    def embed(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        color: str = "bgr",
        flip: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeddings ``float32 [N, D]`` (not normalised) of aligned 112x112 uint8 faces.

        ``color`` is the channel order of ``images`` ("bgr" as from cv2.imread, or "rgb");
        ``flip`` adds the embedding of the mirrored face.
        """
        return self._run(len(images), lambda i: _check_face(images[i], i), color, flip, progress)

    def embed_photos(
        self,
        images: Sequence[np.ndarray],
        landmarks: np.ndarray | Sequence[np.ndarray],
        color: str = "bgr",
        flip: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeddings of unaligned photos, each aligned first from its 5 landmarks ``[N, 5, 2]``

        (eyes, nose, mouth corners in pixels) with insightface's ``face_align.norm_crop``.
        """
        from insightface.utils.face_align import norm_crop

        landmarks = np.asarray(landmarks, dtype=np.float32)
        if landmarks.shape != (len(images), 5, 2):
            raise ValueError(
                f"landmarks must have shape [{len(images)}, 5, 2] (one set of 5 (x, y) points per "
                f"image), got {list(landmarks.shape)}"
            )

        def aligned(i: int) -> np.ndarray:
            img = np.asarray(images[i])
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"images[{i}] must be an HxWx3 uint8 photo, got {img.shape} {img.dtype}")
            return norm_crop(img, landmarks[i], image_size=IMAGE_SIZE)

        return self._run(len(images), aligned, color, flip, progress)
