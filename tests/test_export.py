"""ONNX export: round trip, graph contract, insightface routing, bad input, atomic write."""

from __future__ import annotations

import json
import sys
import types
from importlib import resources

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from easydict import EasyDict

from fpr_plugin import build_backbone
from fpr_plugin.export import ExportCheckError, export_onnx, load_checkpoint, main, verify_onnx

CONFIG = {
    "network": "r18",
    "embedding_size": 32,
    "backbone_params": {"width": 8},
    "dropout": 0.0,
    "loss": "fpr_penalty",
    "loss_params": {"gamma_u": 1e-4},
    "recipe": "tiny_r18",
}


def trained_like_backbone(seed: int = 0, **overrides) -> torch.nn.Module:
    """A small IResNet with random weights AND random BN statistics (as after training)."""
    torch.manual_seed(seed)
    params = {"width": 8, "embedding_size": 32, **overrides}
    model = build_backbone("r18", **params)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.2, 0.2)
        if isinstance(module, torch.nn.PReLU):
            module.weight.data.uniform_(0.1, 0.4)
    return model.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    torch.save(trained_like_backbone().state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


@pytest.fixture(scope="module")
def exported(run_dir):
    path = run_dir / "model.onnx"
    report = export_onnx(run_dir / "model.pt", path)
    return path, report


def reference_embedding(bgr_faces: np.ndarray) -> np.ndarray:
    """Torch embedding with insightface's preprocessing written out by hand."""
    x = torch.from_numpy(bgr_faces.astype(np.float32))[..., [2, 1, 0]].permute(0, 3, 1, 2)
    with torch.no_grad():
        return trained_like_backbone()((x - 127.5) / 127.5).numpy()


def photo_faces(count: int) -> np.ndarray:
    img = cv2.imread(str(resources.files("insightface") / "data" / "images" / "t1.jpg"))
    assert img is not None
    return np.stack([cv2.resize(img[:, i * 100:i * 100 + 300], (112, 112)) for i in range(count)])


def test_round_trip_within_relative_tolerance(exported):
    path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = trained_like_backbone()
    rng = np.random.default_rng(1)
    for n in (1, 5):  # dynamic batch
        x = rng.uniform(-1, 1, size=(n, 3, 112, 112)).astype(np.float32)
        (out,) = session.run(None, {"data": x})
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert out.shape == (n, 32)
        assert np.max(np.abs(out - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_graph_contract_and_metadata(exported):
    path, report = exported
    proto = onnx.load(str(path))
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "data" and dims[1:] == [3, 112, 112] and isinstance(dims[0], str)
    assert len(proto.graph.output) == 1
    # no normalisation in the graph: the input feeds the stem convolution directly
    assert [n.op_type for n in proto.graph.node if "data" in n.input] == ["Conv"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["embedding_size"] == "32" and meta["network"] == "r18"
    assert meta["loss"] == "fpr_penalty" and meta["recipe"] == "tiny_r18"
    assert json.loads(meta["backbone_params"]) == {"width": 8}
    assert report["checks"]["random"]["max_rel_diff"] <= 1e-4
    assert report["checks"]["insightface"]["min_cosine"] > 0.99999


def test_insightface_loads_it_as_recognition(exported):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = get_model(str(exported[0]), providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX) and model.taskname == "recognition"
    assert (model.input_mean, model.input_std) == (127.5, 127.5)
    faces = photo_faces(3)
    feats = model.get_feat(list(faces))
    ref = reference_embedding(faces)
    assert np.max(np.abs(feats - ref)) <= 1e-4 * np.max(np.abs(ref))
    # the channel order matters: the same faces read as RGB give other embeddings
    assert np.max(np.abs(model.get_feat(list(faces[..., ::-1].copy())) - ref)) > 1e-2


def test_fixed_batch(run_dir, tmp_path):
    report = export_onnx(run_dir / "model.pt", tmp_path / "b3.onnx", batch="3")
    dims = [d.dim_value for d in onnx.load(str(tmp_path / "b3.onnx")).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 3, 112, 112] and report["input"]["shape"][0] == 3


def test_full_checkpoint_with_config_and_ddp_prefix(tmp_path):
    state = {f"module.{k}": v for k, v in trained_like_backbone(seed=3).state_dict().items()}
    checkpoint = {
        "backbone": state,
        "head": {"weight": torch.zeros(4, 32)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "config": dict(CONFIG, recipe="full_ckpt"),
        "epoch": 2,
        "step": 10,
    }
    torch.save(checkpoint, tmp_path / "checkpoint_rank0.pt")
    report = export_onnx(tmp_path / "checkpoint_rank0.pt", tmp_path / "m.onnx")
    assert report["metadata"]["recipe"] == "full_ckpt"
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        ref = trained_like_backbone(seed=3)(torch.from_numpy(x)).numpy()
    assert np.allclose(session.run(None, {"data": x})[0], ref, atol=1e-4 * np.abs(ref).max())


def test_easydict_config_needs_trust(tmp_path):
    state = trained_like_backbone().state_dict()
    torch.save({"backbone": state, "config": EasyDict(CONFIG)}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        export_onnx(tmp_path / "ckpt.pt", tmp_path / "m.onnx")
    report = export_onnx(tmp_path / "ckpt.pt", tmp_path / "m.onnx", trust_checkpoint=True)
    assert report["metadata"]["network"] == "r18"


def test_recipe_json_overrides_and_recipe_py_uses_load_config(run_dir, tmp_path, monkeypatch):
    other = dict(CONFIG, recipe="", loss="cosface")
    (tmp_path / "resolved.json").write_text(json.dumps(other))
    _, config = load_checkpoint(run_dir / "model.pt", recipe=tmp_path / "resolved.json")
    assert config["loss"] == "cosface"

    calls = []
    fake = types.ModuleType("fpr_plugin.train.config")
    fake.load_config = lambda path, loss=None, overrides=(): calls.append(path) or EasyDict(CONFIG, recipe=None)
    monkeypatch.setitem(sys.modules, "fpr_plugin.train.config", fake)
    (tmp_path / "bupt_tiny.py").write_text("config = None\n")
    _, config = load_checkpoint(run_dir / "model.pt", recipe=tmp_path / "bupt_tiny.py")
    assert calls == [str(tmp_path / "bupt_tiny.py")]
    assert config["network"] == "r18"


def test_self_check_detects_a_different_model(exported):
    with pytest.raises(ExportCheckError, match="disagree"):
        verify_onnx(exported[0], trained_like_backbone(seed=7))


def test_failed_check_leaves_no_file(run_dir, tmp_path, monkeypatch):
    def failing_check(*args, **kwargs):
        raise ExportCheckError("forced")

    monkeypatch.setattr("fpr_plugin.export.verify_onnx", failing_check)
    with pytest.raises(ExportCheckError):
        export_onnx(run_dir / "model.pt", tmp_path / "never.onnx")
    assert list(tmp_path.iterdir()) == []


def test_not_a_model(tmp_path):
    (tmp_path / "notes.pt").write_text('{"network": "r18"}')
    with pytest.raises(ValueError, match="notes.pt is not a model checkpoint"):
        export_onnx(tmp_path / "notes.pt", tmp_path / "m.onnx")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ValueError, match="state_dict"):
        export_onnx(tmp_path / "module.pt", tmp_path / "m.onnx")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "stats.pt")
    with pytest.raises(ValueError, match="stats.pt is not a model checkpoint.*'epoch'"):
        export_onnx(tmp_path / "stats.pt", tmp_path / "m.onnx")


def test_state_dict_mismatch_lists_keys(tmp_path):
    state = trained_like_backbone().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["layer2.1.conv1.weight"]
    torch.save(state, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(ValueError) as info:
        export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx")
    message = str(info.value)
    assert "missing keys: layer2.1.conv1.weight" in message
    assert "unexpected keys: extra.weight" in message

    (tmp_path / "config.json").write_text(json.dumps(dict(CONFIG, embedding_size=64)))
    torch.save(trained_like_backbone().state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"shape mismatches.*fc.weight \(32, 3136\) != \(64, 3136\)"):
        export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx")


def test_missing_paths(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="output folder"):
        export_onnx(run_dir / "model.pt", tmp_path / "absent" / "m.onnx")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        export_onnx(tmp_path / "nothing.pt", tmp_path / "m.onnx")
    torch.save(trained_like_backbone().state_dict(), tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="batch"):
        export_onnx(run_dir / "model.pt", tmp_path / "m.onnx", batch="many")


def test_cli_reports_figures_and_errors(run_dir, tmp_path, capsys):
    assert main([str(run_dir / "model.pt"), "--output", str(tmp_path / "cli.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and "ArcFaceONNX" in out and "127.5/127.5" in out
    assert (tmp_path / "cli.onnx").is_file()
    assert main([str(run_dir / "model.pt"), "--output", str(tmp_path / "no" / "x.onnx")]) == 1
    assert "output folder" in capsys.readouterr().err


def test_face_analysis_picks_it_up_from_a_model_pack(exported, tmp_path):
    """~/.insightface/models/<pack>/ with a detector + our file: FaceAnalysis uses ours for recognition.

    No SCRFD weights are available offline, so the detector is a stand-in graph with SCRFD's
    nine-output layout: this checks loading and routing, not detection.
    """
    import shutil

    from insightface.app import FaceAnalysis
    from onnx import TensorProto, helper

    pack = tmp_path / "models" / "fpr_pack"
    pack.mkdir(parents=True)
    shutil.copy(exported[0], pack / "fpr_r18.onnx")
    nodes = [helper.make_node("GlobalAveragePool", ["input.1"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])]
    outputs = []
    for i in range(9):  # scores, boxes, keypoints for strides 8, 16, 32
        nodes.append(helper.make_node("Identity", ["f"], [f"out{i}"]))
        outputs.append(helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, 3]))
    graph = helper.make_graph(
        nodes, "standin_detector",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])], outputs,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(pack / "det_standin.onnx"))

    app = FaceAnalysis(name="fpr_pack", root=str(tmp_path), providers=["CPUExecutionProvider"])
    recognition = app.models["recognition"]
    assert recognition.model_file.endswith("fpr_r18.onnx")
    assert (recognition.input_mean, recognition.input_std) == (127.5, 127.5)
    assert app.models["detection"].model_file.endswith("det_standin.onnx")
