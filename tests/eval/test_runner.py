"""evaluate_models as a library: labels, the Report object, argument checks, dense and cache options."""
import json

import numpy as np
import pytest

from eval_fixtures import aligned_faces, write_bin
from fpr_plugin.eval import Report, ReportFolder, evaluate_models, metrics, runner
from fpr_plugin.eval.sets import load_bfw, load_bin
from test_eval_cli import numpy_embed, tiny_model


@pytest.fixture
def lfw(tmp_path):
    faces = aligned_faces(40)
    write_bin(tmp_path / "lfw.bin", faces, [i % 2 == 0 for i in range(20)])
    return load_bin(tmp_path / "lfw.bin"), faces


def test_report_numbers_match_numpy(tmp_path, lfw):
    s, faces = lfw
    w = tiny_model(tmp_path / "a.onnx")
    report = evaluate_models([tmp_path / "a.onnx"], [s], fprs=[0.1], progress=False)
    assert isinstance(report, Report) and list(report.models) == ["a"]
    result = report.models["a"].datasets["bin-lfw"]
    emb = numpy_embed(faces, w)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = np.einsum("ij,ij->i", emb[0::2], emb[1::2])
    ref = metrics.kfold_accuracy(scores, np.arange(20) % 2 == 0)
    assert result.pairs["accuracy"]["groups"]["lfw"]["accuracy"] == pytest.approx(ref.accuracy)
    assert result.n_images == 40 and result.embeddings_cached is False and result.dense is None
    d = report.to_dict()
    assert d["fprs"] == [0.1] and d["bias_degree"] == "std_over_f"
    assert d["models"]["a"]["datasets"]["bin-lfw"]["pairs"] == result.pairs
    assert "| a | " in report.markdown()
    written = report.write(tmp_path / "plain")
    assert json.loads(written["report.json"].read_text())["models"]["a"]["sha256"] == report.models["a"].sha256
    assert not list(tmp_path.glob("**/cache")), "no cache_dir: nothing cached"


def test_labels_by_mapping_or_stem_and_the_flip_option(tmp_path, lfw):
    s, faces = lfw
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    w = tiny_model(tmp_path / "x" / "m.onnx", 0)
    tiny_model(tmp_path / "y" / "m.onnx", 1)
    report = evaluate_models([tmp_path / "x" / "m.onnx", tmp_path / "y" / "m.onnx"], [s], fprs=[0.1],
                             progress=False, cache_dir=tmp_path / "cache")
    assert list(report.models) == ["x/m", "y/m"]
    no_flip = evaluate_models({"plain": tmp_path / "x" / "m.onnx"}, [s], fprs=[0.1], flip=False,
                              progress=False, cache_dir=tmp_path / "cache")
    assert list(no_flip.models) == ["plain"] and no_flip.models["plain"].datasets["bin-lfw"].embeddings_cached is False
    x = (np.stack(faces)[..., ::-1].astype(np.float32) - 127.5) / 127.5
    emb = x.transpose(0, 3, 1, 2).reshape(40, -1) @ w  # no mirrored half
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = np.einsum("ij,ij->i", emb[0::2], emb[1::2])
    fpr, tpr, _ = metrics.roc_curve(scores, np.arange(20) % 2 == 0)
    assert no_flip.models["plain"].datasets["bin-lfw"].pairs["roc"]["lfw"]["auc"] == pytest.approx(
        metrics.auc(fpr, tpr))
    assert len(list((tmp_path / "cache").glob("*-noflip.npy"))) == 1


def test_dense_option_and_a_cache_dir(tmp_path, bfw_dir):
    root, _ = bfw_dir
    tiny_model(tmp_path / "m.onnx")
    s = load_bfw(root)
    both = evaluate_models({"m": tmp_path / "m.onnx"}, [s], fprs=[0.1, 0.3], cache_dir=tmp_path / "c", progress=False)
    pairs_only = evaluate_models({"m": tmp_path / "m.onnx"}, [s], fprs=[0.1, 0.3], dense=False,
                                 cache_dir=tmp_path / "c", progress=False)
    full, part = both.models["m"].datasets["bfw"], pairs_only.models["m"].datasets["bfw"]
    assert full.dense["n_images"] == len(s.images) and part.dense is None
    assert part.embeddings_cached is True and part.pairs == full.pairs
    assert part.notes == full.notes == s.notes and "resized" in s.notes[0]


@pytest.mark.parametrize("kwargs,match", [({"fprs": [0.0]}, r"fprs must be in \(0, 1\)"),
                                          ({"fprs": []}, "at least one overall FPR"),
                                          ({"batch_size": 0}, "batch_size and chunk_size must be >= 1"),
                                          ({"chunk_size": -1}, "batch_size and chunk_size must be >= 1")])
def test_bad_arguments_are_named(tmp_path, lfw, kwargs, match):
    tiny_model(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=match):
        evaluate_models([tmp_path / "m.onnx"], [lfw[0]], progress=False, **kwargs)


def test_bad_models_and_sets_fail_before_anything_is_embedded(tmp_path, lfw, monkeypatch):
    s, _ = lfw
    tiny_model(tmp_path / "m.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    embedded = []
    monkeypatch.setattr(runner, "embed_set", lambda *a: embedded.append(a))
    with pytest.raises(FileNotFoundError, match="model file not found: .*gone.onnx"):
        evaluate_models([tmp_path / "gone.onnx"], [s], progress=False)
    with pytest.raises(ValueError, match=r"junk.onnx is not an ONNX model onnxruntime can load"):
        evaluate_models([tmp_path / "m.onnx", tmp_path / "junk.onnx"], [s], progress=False)
    with pytest.raises(ValueError, match=r"the set name\(s\) \['bin-lfw'\] occur twice"):
        evaluate_models([tmp_path / "m.onnx"], [s, s], progress=False)
    with pytest.raises(ValueError, match="given twice"):
        evaluate_models([tmp_path / "m.onnx", tmp_path / "m.onnx"], [s], progress=False)
    with pytest.raises(ValueError, match="at least one test set"):
        evaluate_models([tmp_path / "m.onnx"], [], progress=False)
    assert embedded == []


def test_report_folder_is_owned_and_publish_needs_the_lock(tmp_path, lfw):
    tiny_model(tmp_path / "m.onnx")
    report = evaluate_models([tmp_path / "m.onnx"], [lfw[0]], fprs=[0.1], progress=False)
    folder = ReportFolder(tmp_path / "out")
    with pytest.raises(RuntimeError, match="inside its with block"):
        folder.publish(report)
    with folder:
        assert (tmp_path / "out" / ".fpr.lock").is_file()
        with pytest.raises(Exception, match="is in use by fpr-eval"):
            ReportFolder(tmp_path / "out").__enter__()
        written = folder.publish(report)
        assert (tmp_path / "out" / ".fpr.lock").is_file(), "the lock survives the swap"
    assert sorted(written) == ["bin-lfw_pairs_fpr_vs_threshold.png", "bin-lfw_pairs_roc.png", "report.json",
                               "report.md"]
    assert all(p.parent == tmp_path / "out" and p.is_file() for p in written.values())
    assert not (tmp_path / "out" / ".fpr.lock").exists()
