"""Tests of fpr_plugin.demo: the README's main command, run end to end at the tiny size."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from fpr_plugin import demo
from fpr_plugin.data.record_set import read_groups, read_record_set

GROUPS = {"Common1", "Common2", "Common3", "Dense"}  # the default design, tight


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> tuple[Path, dict]:
    from fpr_plugin.eval import cli

    def no_cli(*args, **kwargs):
        raise AssertionError("the demo calls fpr_plugin.eval.evaluate_models, not the fpr-eval command line")

    out = tmp_path_factory.mktemp("demo") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "main", no_cli)
        summary = demo.run_demo(out, size="tiny", seed=1, progress=False)
    return out, summary


@pytest.mark.slow
def test_record_set_and_runs(tiny_demo):
    out, summary = tiny_demo
    info = read_record_set(out / "data" / "train")
    assert info.num_classes == summary["train"]["num_classes"] == 4 * 8
    assert set(read_groups(out / "data" / "train").values()) == GROUPS
    configs = {}
    for loss in ("cosface", "fpr_penalty"):
        run = out / "runs" / loss
        configs[loss] = json.loads((run / "config.json").read_text())
        assert configs[loss]["loss"] == loss and configs[loss]["recipe"] == "synthetic_demo"
        state = torch.load(run / "model.pt", weights_only=True)
        assert any(key.endswith("weight") for key in state) and not any(k.startswith("module.") for k in state)
        assert [p for p in (run / "checkpoints").rglob("*") if p.is_file()], f"{run}: no checkpoint written"
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert records, f"{run}/metrics.jsonl is empty"
    # the comparison is paired: same data, same seed, only the loss differs
    pairs = json.loads((out / "runs" / "fpr_penalty_pairs" / "config.json").read_text())
    assert pairs["loss"] == "fpr_penalty" and pairs["loss_params"]["negatives"] == "pairs"
    assert configs["fpr_penalty"]["loss_params"].get("negatives", "classes") == "classes"
    # the calibration files are fitted for each model on other identities than the test set's
    from fpr_plugin.eval.calibration import load_calibration

    calib = load_calibration(out / "calibration" / "cosface.faircal.json")
    assert calib.method == "faircal" and "calibration split" in calib.fit_set
    assert configs["cosface"]["seed"] == configs["fpr_penalty"]["seed"] == 1
    assert configs["cosface"]["rec"] == configs["fpr_penalty"]["rec"]
    assert "gamma_u" in configs["fpr_penalty"]["loss_params"] and "gamma_u" not in configs["cosface"]["loss_params"]


@pytest.mark.slow
def test_onnx_models_embed_aligned_faces(tiny_demo):
    out, _ = tiny_demo
    face = cv2.imread(str(next((out / "data" / "dense" / "images").rglob("*.jpg"))))
    blob = ((face[:, :, ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    embeddings = []
    for loss in ("cosface", "fpr_penalty"):
        session = ort.InferenceSession(str(out / "models" / f"{loss}.onnx"), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[1:] == [3, 112, 112]
        (embedding,) = session.run(None, {session.get_inputs()[0].name: np.repeat(blob, 2, axis=0)})
        assert embedding.shape == (2, 128) and np.isfinite(embedding).all()
        embeddings.append(embedding[0])
    assert not np.allclose(embeddings[0], embeddings[1]), "two trainings gave the same network"


@pytest.mark.slow
def test_report_has_every_group_for_both_models(tiny_demo):
    out, summary = tiny_demo
    report = json.loads((out / "report" / "report.json").read_text())
    raw = {"cosface", "fpr_penalty", "fpr_penalty_pairs"}
    assert set(report["models"]) == raw | {f"{m}+faircal" for m in raw}
    for name, model in report["models"].items():
        datasets = model["datasets"]
        assert set(datasets["rfw"]["pairs"]["accuracy"]["groups"]) == GROUPS
        dense = [d["dense"] for d in datasets.values() if d.get("dense")]
        assert len(dense) == 1 and dense[0]["n_images"] == 4 * 20 * 3, "the dense CSV, all images, all pairs"
        measured = [entry for entry in dense[0]["at_fpr"] if entry["measurable"]]
        assert [entry["target_fpr"] for entry in dense[0]["at_fpr"]] == [1e-4, 1e-3, 1e-2]
        assert measured and all(set(entry["groups"]) == GROUPS for entry in measured)
    assert "Dense" in (out / "report" / "report.md").read_text() and "cosface+faircal" in (
        out / "report" / "report.md").read_text()
    assert list((out / "report").glob("*.png"))
    assert sorted(p.name for p in out.rglob(".*")) == [], "no lock, temporary or partial folder left"
    assert list((out / "report" / "cache").glob("*.npy")), "embeddings cached beside the report"
    assert set(summary["timings"]) >= {"data_s", "train_cosface_s", "train_fpr_penalty_s", "train_fpr_penalty_pairs_s",
                                       "export_s", "calibration_s", "eval_s"}
    summary = json.loads((out / "demo.json").read_text())
    assert summary["paths"]["report"] == str(out / "report")
    assert summary["benchmark_reference"] is None  # the 5-seed figures are of size wide, not of this tiny run


def test_missing_recipe_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        demo.run_demo(tmp_path / "out", size="tiny", recipe=tmp_path / "nope.py", progress=False)


def test_cli_rejects_unknown_size(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--size", "huge"])
    assert exc.value.code == 2
    assert "huge" in capsys.readouterr().err


@pytest.mark.slow
def test_rerun_reuses_matching_data_only(tiny_demo, tmp_path):
    out, _ = tiny_demo
    record = out / "data" / "train" / "train.rec"
    before = record.stat().st_mtime_ns
    manifest = demo._prepare_data(out / "data", 1, "tiny", "tight", progress=False)
    assert record.stat().st_mtime_ns == before and manifest["seed"] == 1 and manifest["size_name"] == "tiny"
    other = tmp_path / "data"
    other.mkdir()
    (other / "synthetic.json").write_text(json.dumps({"seed": 2, "design": "rare", "size_name": "tiny"}))
    assert demo._prepare_data(other, 1, "tiny", "rare", progress=False)["seed"] == 1, "other seed: drawn again"
    assert (other / "train" / "train.rec").is_file()


def test_cli_bad_input_is_one_line_with_exit_2(tmp_path, capsys):
    assert demo.main(["--size", "tiny", "--output", str(tmp_path / "out"), "--recipe", str(tmp_path / "nope.py")]) == 2
    err = capsys.readouterr().err
    assert err == f"fpr-demo: error: demo recipe {tmp_path / 'nope.py'} not found (pass --recipe PATH)\n"
    assert demo.main(["--size", "tiny", "--losses", "cosface", "cosface", "--output", str(tmp_path / "o")]) == 2
    assert "losses must be distinct loss names" in capsys.readouterr().err
