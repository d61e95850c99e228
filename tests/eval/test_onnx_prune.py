"""onnx_prune: stale graph inputs found and removed on a copy keyed by the file's SHA-256; the file is untouched."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fpr_plugin.eval import onnx_prune
from fpr_plugin.eval.embed import OnnxEmbedder
from fpr_plugin.eval.onnx_prune import loadable_model, stale_inputs

EMB = 6


def weights(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3 * 112 * 112, EMB)).astype(np.float32)


def stale_model(path, ir_version: int = 7, unused: bool = True):
    """``data -> Flatten -> MatMul W``, with W an initializer that is also a graph input, plus an unread input."""
    w = weights()
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112]),
              helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.shape))]
    if unused:
        inputs.append(helper.make_tensor_value_info("junk_weight", TensorProto.FLOAT, [4, 4]))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["fc1"])],
        "stale", inputs, [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", EMB])],
        initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stale_inputs_found_and_pruned_on_a_keyed_copy(tmp_path):
    path = stale_model(tmp_path / "m.onnx")
    before = sha(path)
    assert stale_inputs(onnx.load(str(path))) == ["W", "junk_weight"]
    copy, pruned = loadable_model(path, tmp_path / "cache")
    assert pruned == ["W", "junk_weight"] and copy == tmp_path / "cache" / f"{before}.onnx"
    assert sha(path) == before  # the user's file is never changed
    kept = onnx.load(str(copy))
    assert [i.name for i in kept.graph.input] == ["data"] and stale_inputs(kept) == []
    assert [t.name for t in kept.graph.initializer] == ["W"]  # the weights stay, as constants
    # reused while the file is unchanged: no second write
    stamp = copy.stat().st_mtime_ns
    assert loadable_model(path, tmp_path / "cache") == (copy, pruned) and copy.stat().st_mtime_ns == stamp


def test_embedder_runs_the_copy_and_computes_the_same_graph(tmp_path):
    path = stale_model(tmp_path / "m.onnx")
    import onnxruntime as ort

    assert len(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()) == 2
    faces = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    embedder = OnnxEmbedder(path, cache_dir=tmp_path / "cache")
    x = (faces[..., ::-1].astype(np.float64) - 127.5) / 127.5  # RGB, insightface's convention
    expected = x.transpose(0, 3, 1, 2).reshape(3, -1) @ weights().astype(np.float64)
    np.testing.assert_allclose(embedder.embed(faces, flip=False), expected, rtol=1e-4, atol=1e-3)
    info = embedder.input_info()
    assert info["pruned_inputs"] == 2 and info["loaded_from"] == str(tmp_path / "cache" / f"{sha(path)}.onnx")


def test_nothing_stale_loads_the_file_itself(tmp_path):
    path = stale_model(tmp_path / "clean.onnx", unused=False)
    model = onnx.load(str(path))
    del model.graph.input[1:]  # W only as an initializer
    onnx.save(model, str(path))
    assert loadable_model(path, tmp_path / "cache") == (path, [])
    assert not (tmp_path / "cache").exists()


def test_ir3_initializer_inputs_are_required_and_kept(tmp_path):
    """Before IR version 4 every initializer had to be a graph input: only the unread one goes."""
    path = stale_model(tmp_path / "ir3.onnx", ir_version=3)
    assert stale_inputs(onnx.load(str(path))) == ["junk_weight"]


def test_an_input_read_only_inside_a_subgraph_is_not_stale():
    then = helper.make_graph([helper.make_node("Identity", ["data"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])])
    other = helper.make_graph([helper.make_node("Neg", ["data"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], then_branch=then, else_branch=other)], "if",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("data", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])])
    assert stale_inputs(helper.make_model(graph)) == []


def test_not_onnx_is_left_to_onnxruntime(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a protobuf at all \xff\xfe")
    assert loadable_model(path, tmp_path / "cache") == (path, [])
    with pytest.raises(ValueError, match="junk.onnx is not an ONNX model onnxruntime can load"):
        OnnxEmbedder(path, cache_dir=tmp_path / "cache")


def test_default_cache_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_prune.default_cache_dir() == tmp_path / "xdg" / "fpr_plugin" / "onnx"
    path = stale_model(tmp_path / "m.onnx")
    copy, _ = loadable_model(path)
    assert copy.parent == tmp_path / "xdg" / "fpr_plugin" / "onnx" and copy.is_file()
