"""face_input: the blob is insightface's (cv2.dnn.blobFromImages) bit for bit; conventions, metadata, errors."""
from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpr_plugin import face_input
from fpr_plugin.face_input import INSIGHTFACE, InputConvention, resolve_convention, to_blob


@pytest.fixture
def faces():
    return np.random.default_rng(3).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)


def loop_blob(images: np.ndarray, source: str, target: str, mean: float, std: float, flip: bool) -> np.ndarray:
    """float64 per-pixel statement of the convention: channel c of the target order, mirrored columns."""
    n, h, w, _ = images.shape
    out = np.empty((n, 3, h, w))
    for i in range(n):
        for c in range(3):
            src_c = c if source == target else 2 - c
            for x in range(w):
                col = w - 1 - x if flip else x
                out[i, c, :, x] = (images[i, :, col, src_c].astype(np.float64) - mean) / std
    return out


def test_insightface_blob_bit_for_bit(faces):
    """ArcFaceONNX.get_feat: blobFromImages(faces, 1/std, (112, 112), (mean,)*3, swapRB=True) on BGR faces."""
    expected = cv2.dnn.blobFromImages(list(faces), 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    got = to_blob(faces, "bgr")
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (5, 3, 112, 112)
    assert np.array_equal(got, expected)
    # RGB source faces give the same blob; "BGR" in capitals is the same order
    assert np.array_equal(to_blob(faces[..., ::-1].copy(), "rgb"), expected)
    assert np.array_equal(to_blob(faces, "BGR"), expected)


def test_raw_convention_is_opencv_sface_blob(faces):
    """SFace's FaceRecognizerSF.feature: blobFromImage(face, 1, (112, 112), 0, swapRB=True): raw RGB pixels."""
    raw = InputConvention(mean=0.0, std=1.0, color="rgb")
    expected = cv2.dnn.blobFromImages(list(faces), 1.0, (112, 112), (0, 0, 0), swapRB=True)
    assert np.array_equal(to_blob(faces, "bgr", convention=raw), expected)


@pytest.mark.parametrize("source", ["bgr", "rgb"])
@pytest.mark.parametrize("target", ["bgr", "rgb"])
@pytest.mark.parametrize("flip", [False, True])
def test_matches_the_loop_statement(source, target, flip):
    images = np.random.default_rng(4).integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)
    convention = InputConvention(mean=104.0, std=58.5, color=target)
    got = to_blob(images, source, flip=flip, convention=convention)
    np.testing.assert_allclose(got, loop_blob(images, source, target, 104.0, 58.5, flip), rtol=0, atol=1e-6)


def test_dataset_normalisation_is_the_same_convention():
    from fpr_plugin.data.dataset import to_tensor

    rgb = np.random.default_rng(5).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    for flip in (False, True):
        ours = to_tensor(rgb, flip=flip).numpy()
        np.testing.assert_allclose(ours, to_blob(rgb[None], "rgb", flip=flip)[0], rtol=0, atol=2e-7)


def test_bad_images_and_colours(faces):
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\].*float32"):
        to_blob(faces.astype(np.float32), "bgr")
    with pytest.raises(ValueError, match=r"\[112, 112, 3\]"):
        to_blob(faces[0], "bgr")
    with pytest.raises(ValueError, match="color must be 'bgr' or 'rgb'.*'yuv'"):
        to_blob(faces, "yuv")
    with pytest.raises(ValueError, match="input std must be a finite number > 0, got 0"):
        InputConvention(std=0)
    with pytest.raises(ValueError, match="input mean must be a finite number"):
        InputConvention(mean=float("nan"))
    with pytest.raises(ValueError, match="input color.*'hsv'"):
        InputConvention(color="hsv")


def test_metadata_round_trip_and_precedence():
    sface = InputConvention(mean=0.0, std=1.0, color="BGR")
    meta = sface.metadata()
    assert meta == {"input_mean": "0.0", "input_std": "1.0", "input_color": "BGR"}
    assert INSIGHTFACE.metadata() == {"input_mean": "127.5", "input_std": "127.5", "input_color": "RGB"}
    assert resolve_convention(meta) == (sface, {"mean": "metadata", "std": "metadata", "color": "metadata"})
    assert resolve_convention({}) == (INSIGHTFACE, {"mean": "default", "std": "default", "color": "default"})
    conv, origin = resolve_convention(meta, std=2.0, color="rgb")
    assert conv == InputConvention(0.0, 2.0, "rgb")
    assert origin == {"mean": "metadata", "std": "argument", "color": "argument"}
    assert INSIGHTFACE.describe() == "RGB (x - 127.5) / 127.5" and sface.describe() == "BGR (x - 0) / 1"


@pytest.mark.parametrize("key, value, expected", [("input_mean", "abc", "a number"),
                                                  ("input_color", "YUV", "'RGB' or 'BGR'")])
def test_bad_metadata_names_the_model_and_key(key, value, expected):
    with pytest.raises(ValueError, match=f"m.onnx: metadata {key}='{value}'; expected {expected}"):
        resolve_convention({key: value}, source="m.onnx")
    with pytest.raises(ValueError, match="m.onnx: input std must be a finite number > 0, got -1"):
        resolve_convention({"input_std": "-1"}, source="m.onnx")


def test_ground_floor_and_one_definition():
    """face_input imports nothing from the package, and no module of the package restates its numbers."""
    tree = ast.parse(Path(face_input.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("fpr_plugin")]
    package = Path(face_input.__file__).parent
    restated = []
    for path in package.rglob("*.py"):
        if path.name == "face_input.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                if node.value.value in (112, 127.5, "embedding") or (node.value.value == "data" and any(
                        isinstance(t, ast.Name) and "INPUT" in t.id for t in node.targets)):
                    restated.append(f"{path.relative_to(package)}:{node.lineno}")
    assert restated == []
