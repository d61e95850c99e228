"""Self-checks of an exported ONNX recognition model: onnxruntime vs torch, and insightface's loader.

:func:`verify_onnx` runs the graph with onnxruntime on random and real images
and compares it with the torch model; then insightface's
``model_zoo.get_model`` must route the file to ``ArcFaceONNX`` with mean/std
127.5 and give the torch embedding for aligned BGR faces. The input convention is
:mod:`fpr_plugin.face_input`'s.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch import nn

from fpr_plugin.face_input import IMAGE_SIZE, INPUT_MEAN, INPUT_NAME, INPUT_STD, OUTPUT_NAME, to_blob

__all__ = [
    "DEFAULT_TOLERANCE",
    "ExportCheckError",
    "sample_images",
    "compare",
    "verify_onnx",
]

DEFAULT_TOLERANCE = 1e-4


class ExportCheckError(RuntimeError):
    """The exported graph disagrees with torch or is not loadable by insightface."""


def _bundled_photos() -> list[np.ndarray]:
    """insightface's sample photos (BGR), or an empty list when unavailable."""
    import cv2

    try:
        folder = resources.files("insightface") / "data" / "images"
    except ModuleNotFoundError:
        return []
    photos = []
    for name in ("t1.jpg", "Tom_Hanks_54745.png"):
        entry = folder / name
        if entry.is_file():
            img = cv2.imdecode(np.frombuffer(entry.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
            if img is not None:
                photos.append(img)
    return photos


def sample_images(count: int = 4, seed: int = 0) -> np.ndarray:
    """``count`` 112x112 BGR uint8 crops of insightface's bundled photos (real pixels)."""
    import cv2

    photos = _bundled_photos()
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        if photos:
            img = photos[i % len(photos)]
            h, w = img.shape[:2]
            side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crops.append(cv2.resize(img[y:y + side, x:x + side], (IMAGE_SIZE, IMAGE_SIZE)))
        else:  # smooth colour gradients when the photos are unavailable
            yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
            phase = rng.uniform(0, 2 * np.pi, 3)
            crops.append(np.stack([127.5 + 127 * np.sin(6 * xx + 4 * yy + p) for p in phase], -1))
    return np.clip(np.stack(crops), 0, 255).astype(np.uint8)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs difference, scale-relative difference and minimum row cosine."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    max_abs = float(np.max(np.abs(reference - candidate)))
    scale = float(np.max(np.abs(reference))) or 1.0
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-30)
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / scale, "min_cosine": float(cosine.min())}


def _torch_embed(model: nn.Module, blob: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(blob)).numpy()


def _check_runtime(session: Any, model: nn.Module, inputs: dict[str, np.ndarray], tolerance: float) -> dict:
    """onnxruntime vs torch on each named input batch; ExportCheckError beyond ``tolerance``."""
    report = {}
    for name, blob in inputs.items():
        (ort_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: blob})
        stats = compare(_torch_embed(model, blob), ort_out)
        report[name] = stats
        if stats["max_rel_diff"] > tolerance:
            raise ExportCheckError(
                f"onnxruntime and torch disagree on {name} inputs: max abs diff "
                f"{stats['max_abs_diff']:.3g} ({stats['max_rel_diff']:.3g} of the output scale, "
                f"tolerance {tolerance:g}), min cosine {stats['min_cosine']:.8f}"
            )
    return report


def _check_insightface(onnx_path: str, model: nn.Module, faces_bgr: np.ndarray, tolerance: float) -> dict:
    """insightface routes the file to ArcFaceONNX with mean/std 127.5, and its ``get_feat`` equals torch."""
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    recognition = get_model(onnx_path, providers=["CPUExecutionProvider"])
    if not isinstance(recognition, ArcFaceONNX):
        raise ExportCheckError(
            f"insightface.model_zoo.get_model did not route {onnx_path} to ArcFaceONNX "
            f"(got {type(recognition).__name__})"
        )
    if (recognition.input_mean, recognition.input_std) != (INPUT_MEAN, INPUT_STD):
        raise ExportCheckError(
            f"insightface infers input mean/std {recognition.input_mean}/{recognition.input_std}, "
            f"expected {INPUT_MEAN}/{INPUT_STD} (the graph must not start with Sub and Mul nodes)"
        )
    # aligned 112x112 BGR faces, as insightface's FaceAnalysis passes them
    insight = np.asarray(recognition.get_feat(list(faces_bgr))).reshape(len(faces_bgr), -1)
    stats = compare(_torch_embed(model, to_blob(faces_bgr, "bgr")), insight)
    if stats["max_rel_diff"] > tolerance:
        raise ExportCheckError(
            f"insightface ArcFaceONNX.get_feat disagrees with torch on aligned BGR faces: "
            f"max abs diff {stats['max_abs_diff']:.3g}, min cosine {stats['min_cosine']:.8f}"
        )
    return {
        "class": type(recognition).__name__,
        "taskname": recognition.taskname,
        "input_mean": recognition.input_mean,
        "input_std": recognition.input_std,
        "input_size": list(recognition.input_size),
        **stats,
    }


def verify_onnx(
    onnx_path: str | os.PathLike,
    model: nn.Module,
    batch: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> dict[str, Any]:
    """Check an exported graph against ``model``; raise ExportCheckError on disagreement.

    ``batch`` is the fixed batch of the graph (None when dynamic). Checks: onnxruntime
    vs torch on random and real inputs; insightface routes the file to ArcFaceONNX
    with mean/std 127.5 and its ``get_feat`` of an aligned BGR face equals torch.
    """
    import onnxruntime as ort

    onnx_path = str(onnx_path)
    n = batch or 4
    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    real = sample_images(n, seed)
    inputs = {
        "random": rng.uniform(-1.0, 1.0, size=(n, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32),
        "real": to_blob(real, "bgr"),
    }
    report = _check_runtime(session, model, inputs, tolerance)
    report["insightface"] = _check_insightface(onnx_path, model, real, tolerance)
    return report
