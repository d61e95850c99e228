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
    # the input convention, read back by fpr_plugin.eval.embed
    assert (meta["input_name"], meta["input_mean"], meta["input_std"], meta["input_color"]) == (
        "data", "127.5", "127.5", "RGB")
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
    # no config.json and keys that are no IResNet's: nothing says what network it is
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="model.pt is not an IResNet state dict"):
        export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="batch"):
        export_onnx(run_dir / "model.pt", tmp_path / "m.onnx", batch="many")


def test_cli_reports_figures_and_errors(run_dir, tmp_path, capsys):
    assert main([str(run_dir / "model.pt"), "--output", str(tmp_path / "cli.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max abs diff" in out and "ArcFaceONNX" in out and "127.5/127.5" in out
    assert (tmp_path / "cli.onnx").is_file()
    assert main([str(run_dir / "model.pt"), "--output", str(tmp_path / "no" / "x.onnx")]) == 2
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


# --------------------------------------------------------------------------- arcface_torch backbone.pth


def arcface_style(state_dict, prefix: str = "") -> dict:
    """A bare state dict as arcface_torch saves one: no config anywhere, optional DDP prefix."""
    return {prefix + k: v.clone() for k, v in state_dict.items()}


def _onnx_matches(path, model) -> bool:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return bool(np.allclose(session.run(None, {"data": x})[0], ref, atol=1e-4 * np.abs(ref).max()))


def test_bare_state_dict_with_network_exports_with_the_checks(tmp_path, capsys):
    folder = tmp_path / "pretrained"  # no config.json beside the file
    folder.mkdir()
    model = trained_like_backbone(seed=11)
    torch.save(arcface_style(model.state_dict(), "module."), folder / "backbone.pth")
    out = tmp_path / "model.onnx"
    assert main([str(folder / "backbone.pth"), "--network", "r18", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ArcFaceONNX" in printed and "network r18" in printed
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    # embedding size and width came from the keys (fc rows, stem channels)
    assert (meta["network"], meta["embedding_size"]) == ("r18", "32")
    assert json.loads(meta["backbone_params"]) == {"width": 8}
    assert meta["recipe"] == "" and meta["loss"] == ""
    assert _onnx_matches(out, model)


def test_bare_state_dict_network_inferred_from_the_keys(tmp_path):
    model = trained_like_backbone(seed=12, stem_stride=2, embedding_size=24)
    torch.save(arcface_style(model.state_dict()), tmp_path / "backbone.pth")
    report = export_onnx(tmp_path / "backbone.pth", tmp_path / "m.onnx")
    meta = report["metadata"]
    assert (meta["network"], meta["embedding_size"]) == ("r18", "24")
    assert json.loads(meta["backbone_params"]) == {"width": 8, "stem_stride": 2}
    assert _onnx_matches(tmp_path / "m.onnx", model)


def test_network_or_embedding_size_that_disagrees_with_the_keys(tmp_path, capsys):
    torch.save(arcface_style(trained_like_backbone().state_dict()), tmp_path / "backbone.pth")
    args = [str(tmp_path / "backbone.pth"), "--output", str(tmp_path / "m.onnx")]
    assert main(args + ["--network", "r34"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--network r34 does not fit" in err
    assert "backbone.pth" in err and "IResNet r18" in err
    assert main(args + ["--embedding-size", "512"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--embedding-size 512" in err and "embedding size 32" in err and err.count("\n") == 0
    assert list(tmp_path.iterdir()) == [tmp_path / "backbone.pth"]  # nothing half-written


def test_blocks_that_fit_no_depth_name_the_closest(tmp_path, capsys):
    state = trained_like_backbone().state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layer3.1.")}
    torch.save(state, tmp_path / "backbone.pth")
    assert main([str(tmp_path / "backbone.pth"), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "blocks per stage (2, 2, 1, 2) fit no IResNet depth; closest is r18 (2, 2, 2, 2)" in err


def test_old_shortcut_keys_export(tmp_path):
    """model.pt files written before the projection was called downsample still export."""
    model = trained_like_backbone(seed=4)
    old = {k.replace(".downsample.", ".shortcut."): v for k, v in model.state_dict().items()}
    assert any(".shortcut." in k for k in old)
    torch.save(old, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx")
    assert _onnx_matches(tmp_path / "m.onnx", model)


def test_missing_batchnorm_counters_are_not_a_problem(tmp_path):
    model = trained_like_backbone(seed=6)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "backbone.pth")
    export_onnx(tmp_path / "backbone.pth", tmp_path / "m.onnx", network="r18")
    assert _onnx_matches(tmp_path / "m.onnx", model)


def test_fpr_eval_audits_an_exported_backbone_pth(tmp_path):
    """The file exported from a bare state dict is an ordinary model to fpr-eval."""
    from fpr_plugin.eval import cli as eval_cli

    torch.save(arcface_style(trained_like_backbone(seed=8).state_dict()), tmp_path / "backbone.pth")
    export_onnx(tmp_path / "backbone.pth", tmp_path / "pretrained.onnx", network="r18")
    folder = tmp_path / "dense"
    folder.mkdir()
    rows = ["path,identity,group"]
    for i, face in enumerate(photo_faces(6)):
        for j, img in enumerate((face, cv2.GaussianBlur(face, (3, 3), 0))):
            cv2.imwrite(str(folder / f"{i}_{j}.jpg"), img)
            rows.append(f"{i}_{j}.jpg,p{i},{'G1' if i < 3 else 'G2'}")
    (folder / "dense.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "audit"
    argv = ["--model", str(tmp_path / "pretrained.onnx"), "--dense", str(folder / "dense.csv"),
            "--output", str(out), "--fpr", "0.1", "--no-progress"]
    assert eval_cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    dense = report["models"]["pretrained"]["datasets"]["dense-dense"]["dense"]
    assert dense["n_impostor"] == {"G1": 12, "G2": 12}  # 3 identities x 2 images per group
