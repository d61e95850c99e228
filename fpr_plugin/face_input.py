"""The input contract of a face-recognition graph: 112x112 aligned faces, names, mean/std, channel order.

insightface's ``ArcFaceONNX.get_feat`` feeds a recognition graph that has no
Sub/Mul input nodes with ``cv2.dnn.blobFromImages(faces, 1 / 127.5, (112, 112),
(127.5,) * 3, swapRB=True)``: aligned 112x112 BGR faces turned into an RGB
float32 NCHW blob ``(pixel - 127.5) * (1 / 127.5)``. :func:`to_blob` makes that
blob bit for bit; ``fpr-export`` writes graphs for it (input ``data``, output
``embedding``), the embedder feeds them, and the data sets, ``fpr-build-rec``
and the training data make 112x112 faces for it.

A model with its own convention (another mean, std or channel order, such as
OpenCV Zoo's SFace: raw 0-255 RGB) is described by an :class:`InputConvention`,
which export writes into, and the embedder reads back from, the model's ONNX
metadata (``input_mean``, ``input_std``, ``input_color``). This module imports
nothing from the rest of the package.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = [
    "IMAGE_SIZE",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "INPUT_MEAN",
    "INPUT_STD",
    "INPUT_COLOR",
    "COLORS",
    "METADATA_KEYS",
    "InputConvention",
    "INSIGHTFACE",
    "check_color",
    "resolve_convention",
    "to_blob",
]

IMAGE_SIZE = 112  #: side of an aligned face (insightface's ``norm_crop`` template, arcface_torch's input)
INPUT_NAME = "data"  #: the graph input fpr-export writes
OUTPUT_NAME = "embedding"  #: the graph output fpr-export writes
INPUT_MEAN = 127.5
INPUT_STD = 127.5
INPUT_COLOR = "rgb"  #: channel order the graph expects
COLORS = ("bgr", "rgb")
#: ONNX ``metadata_props`` keys of the convention, by field (fpr-export writes them)
METADATA_KEYS = {"mean": "input_mean", "std": "input_std", "color": "input_color"}


def check_color(color: str, name: str = "color") -> str:
    """``color`` lower-cased when it is "bgr" or "rgb"; ValueError naming ``name`` otherwise."""
    value = color.lower() if isinstance(color, str) else color
    if value not in COLORS:
        raise ValueError(f"{name} must be 'bgr' or 'rgb' (a channel order), got {color!r}")
    return value


@dataclass(frozen=True)
class InputConvention:
    """What a graph expects of its input pixels: ``(pixel - mean) / std`` in channel order ``color``."""

    mean: float = INPUT_MEAN
    std: float = INPUT_STD
    color: str = INPUT_COLOR

    def __post_init__(self) -> None:
        if not (isinstance(self.mean, (int, float)) and math.isfinite(self.mean)):
            raise ValueError(f"input mean must be a finite number, got {self.mean!r}")
        if not (isinstance(self.std, (int, float)) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"input std must be a finite number > 0, got {self.std!r}")
        object.__setattr__(self, "mean", float(self.mean))
        object.__setattr__(self, "std", float(self.std))
        object.__setattr__(self, "color", check_color(self.color, "input color"))

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata entries that describe this convention."""
        return {METADATA_KEYS["mean"]: str(self.mean), METADATA_KEYS["std"]: str(self.std),
                METADATA_KEYS["color"]: self.color.upper()}

    def describe(self) -> str:
        """One line for reports, e.g. ``RGB (x - 127.5) / 127.5``."""
        return f"{self.color.upper()} (x - {self.mean:g}) / {self.std:g}"


#: insightface's convention (the default everywhere)
INSIGHTFACE = InputConvention()


def resolve_convention(metadata: Mapping[str, str], mean: float | None = None, std: float | None = None,
                       color: str | None = None, source: str = "the model") -> tuple[InputConvention, dict[str, str]]:
    """Each field from the argument when given, else from ``metadata``, else insightface's.

    Returns the convention and, per field, where it came from ("argument", "metadata" or "default").
    A metadata value that is not a number (mean, std) or a channel order (color) raises ValueError
    naming ``source`` and the key.
    """
    given = {"mean": mean, "std": std, "color": color}
    values: dict[str, object] = {}
    origin: dict[str, str] = {}
    for field, value in given.items():
        key = METADATA_KEYS[field]
        if value is not None:
            values[field], origin[field] = value, "argument"
        elif key in metadata:
            text = str(metadata[key]).strip()
            try:
                values[field] = check_color(text) if field == "color" else float(text)
            except ValueError:
                expected = "'RGB' or 'BGR'" if field == "color" else "a number"
                raise ValueError(f"{source}: metadata {key}={metadata[key]!r}; expected {expected}") from None
            origin[field] = "metadata"
        else:
            values[field], origin[field] = getattr(INSIGHTFACE, field), "default"
    try:
        convention = InputConvention(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return convention, origin


def to_blob(images: np.ndarray, color: str, flip: bool = False,
            convention: InputConvention = INSIGHTFACE) -> np.ndarray:
    """uint8 faces ``[N, H, W, 3]`` in channel order ``color`` -> the float32 ``[N, 3, H, W]`` blob a graph takes.

    ``flip`` mirrors the faces left-right first. The arithmetic is ``blobFromImages``'s, in float32:
    ``(pixel - mean) * (1 / std)``, channels in ``convention.color`` order.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got shape {list(images.shape)} dtype {images.dtype}")
    if check_color(color) != convention.color:
        images = images[..., ::-1]
    if flip:
        images = images[:, :, ::-1]
    # a contiguous uint8 NCHW copy first: the float maths then runs on contiguous memory
    blob = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
    blob -= np.float32(convention.mean)
    blob *= np.float32(1.0 / convention.std)
    return blob
