"""fpr-eval end to end with a tiny linear ONNX model, checked against numpy; cache reuse; bad input."""
import json
import os

import cv2
import numpy as np
import pytest
from insightface.utils import face_align

from eval_fixtures import aligned_faces, tiny_linear_onnx, write_bin
from fpr_plugin.eval import cli, metrics, runner

EMB = 16


def tiny_model(path, seed=0):
    """``data [N,3,112,112] -> Flatten -> MatMul W -> [N, 16]``: an embedding we can recompute with numpy."""
    return tiny_linear_onnx(path, seed, EMB)


def numpy_embed(faces_bgr, w):
    """Independent flip-test embedding: RGB, (x - 127.5) / 127.5, NCHW, emb(x) + emb(mirror x)."""
    x = (np.stack(faces_bgr)[..., ::-1].astype(np.float32) - 127.5) / 127.5
    blob = x.transpose(0, 3, 1, 2)
    return blob.reshape(len(blob), -1) @ w + blob[..., ::-1].reshape(len(blob), -1) @ w


def _run(*argv):
    return cli.main([str(a) for a in argv] + ["--no-progress"])


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "tiny.onnx"
    return path, tiny_model(path)


def test_rfw_end_to_end_matches_numpy(tmp_path, rfw_dir, model, capsys):
    root, info = rfw_dir
    (path, w), out = model, tmp_path / "out"
    assert _run("--model", path, "--rfw", root, "--output", out, "--fpr", 0.05, 0.2, "--chunk-size", 5) == 0
    report = json.loads((out / "report.json").read_text())
    rfw = report["models"]["tiny"]["datasets"]["rfw"]

    # independent: align every image with its listed landmarks, embed with numpy
    keys, faces = [], []
    for p in info["images"]:
        race, ident, n = p.parents[1].name, p.parent.name, int(p.stem.split("_")[-1])
        faces.append(face_align.norm_crop(cv2.imread(str(p)), np.round(info["landmarks"][(race, ident, n)], 2)))
        keys.append((race, ident, n))
    emb = numpy_embed(faces, w)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = {k: i for i, k in enumerate(keys)}
    for race in ("African", "Asian"):
        scores, issame = [], []
        for line in info["pairs"][race]:
            if len(line) == 3:
                a, b = index[(race, line[0], line[1])], index[(race, line[0], line[2])]
            else:
                a, b = index[(race, line[0], line[1])], index[(race, line[2], line[3])]
            scores.append(float(emb[a] @ emb[b]))
            issame.append(len(line) == 3)
        ref = metrics.kfold_accuracy(np.array(scores), np.array(issame))
        assert rfw["pairs"]["accuracy"]["groups"][race]["accuracy"] == pytest.approx(ref.accuracy)
    accs = [rfw["pairs"]["accuracy"]["groups"][r]["accuracy"] for r in ("African", "Asian")]
    assert rfw["pairs"]["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))

    # dense: all within-race impostor pairs, brute force
    groups = np.array([k[0] for k in keys])
    ids = np.array([f"{k[0]}/{k[1]}" for k in keys])
    sim = emb @ emb.T
    imp_mask = np.triu(np.ones(sim.shape, bool), 1) & (groups[:, None] == groups[None, :]) & (ids[:, None] != ids[None, :])
    imp = np.sort(sim[imp_mask])[::-1]
    for r, f in zip(rfw["dense"]["at_fpr"], (0.05, 0.2)):
        assert r["threshold"] == pytest.approx(imp[int(np.floor(f * imp.size))], abs=1e-5)
        assert r["n_impostor"] == imp.size

    md = (out / "report.md").read_text()
    assert "| model | African | Asian | Avg | Std |" in md
    assert f"| tiny | {100 * accs[0]:.2f} | {100 * accs[1]:.2f} |" in md
    for name in ("rfw_pairs_roc.png", "rfw_pairs_fpr_vs_threshold.png", "rfw_dense_fpr_vs_threshold.png",
                 "rfw_dense_roc.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert "| model | African | Asian | Avg | Std |" in capsys.readouterr().out  # the tables are printed
    assert not list(out.glob("*.tmp")) and not list((out / "cache").glob("*.tmp"))


def test_cache_is_reused_and_keyed_by_the_model_hash(tmp_path, model, monkeypatch):
    path, w = model
    write_bin(tmp_path / "lfw.bin", aligned_faces(40), [i % 2 == 0 for i in range(20)])
    out = tmp_path / "out"
    assert _run("--model", path, "--bin", tmp_path / "lfw.bin", "--output", out, "--fpr", 0.1) == 0
    first = json.loads((out / "report.json").read_text())["models"]["tiny"]
    sha = first["sha256"]
    cached = list((out / "cache").glob("*.npy"))
    assert [p.name for p in cached] == [f"{sha[:16]}_bin-lfw-{cached[0].name.split('-')[-1]}"]
    assert first["datasets"]["bin-lfw"]["embeddings_cached"] is False

    class Refuse:
        def embed(self, *a, **k):
            raise AssertionError("embeddings should come from the cache")

    monkeypatch.setattr(runner, "build_embedder", lambda *args: Refuse())
    assert _run("--model", path, "--bin", tmp_path / "lfw.bin", "--output", out, "--fpr", 0.1) == 0
    second = json.loads((out / "report.json").read_text())["models"]["tiny"]
    assert second["datasets"]["bin-lfw"]["embeddings_cached"] is True
    assert second["datasets"]["bin-lfw"]["pairs"]["accuracy"] == first["datasets"]["bin-lfw"]["pairs"]["accuracy"]

    tiny_model(path, seed=1)  # another model in the same file: new hash, no stale cache
    monkeypatch.undo()
    assert _run("--model", path, "--bin", tmp_path / "lfw.bin", "--output", out, "--fpr", 0.1) == 0
    third = json.loads((out / "report.json").read_text())["models"]["tiny"]
    assert third["sha256"] != sha and third["datasets"]["bin-lfw"]["embeddings_cached"] is False


def test_compare_two_models_side_by_side(tmp_path, bfw_dir):
    root, _ = bfw_dir
    a, b = tmp_path / "cosface.onnx", tmp_path / "cifp.onnx"
    tiny_model(a, 0)
    tiny_model(b, 1)
    out = tmp_path / "out"
    assert _run("--compare", a, b, "--bfw", root, "--output", out, "--fpr", 0.1, 0.3, "--no-dense") == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["cosface", "cifp"]
    for label in ("cosface", "cifp"):
        ds = report["models"][label]["datasets"]["bfw"]
        assert ds["dense"] is None and list(ds["pairs"]["accuracy"]["groups"]) == ["AF", "BM"]
        assert any("resized to 112x112" in n for n in ds["notes"])
    md = (out / "report.md").read_text()
    assert md.count("| cosface |") >= 2 and md.count("| cifp |") >= 2
    assert "| model | AF | BM | Avg | Std |" in md


def test_dense_csv_only(tmp_path, model):
    path, _ = model
    folder = tmp_path / "dense"
    folder.mkdir()
    rows = ["path,identity,group"]
    for i, face in enumerate(aligned_faces(24, identities=[i // 3 for i in range(24)])):
        cv2.imwrite(str(folder / f"{i}.jpg"), face)
        rows.append(f"{i}.jpg,p{i // 3},{'G1' if i < 12 else 'G2'}")
    (folder / "dense.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert _run("--model", path, "--dense", folder / "dense.csv", "--output", out, "--fpr", 1e-3, 0.1) == 0
    ds = json.loads((out / "report.json").read_text())["models"]["tiny"]["datasets"]["dense-dense"]
    assert ds["pairs"] is None and ds["dense"]["n_impostor"] == {"G1": 54, "G2": 54}
    assert ds["dense"]["at_fpr"][0]["measurable"] is False  # 1e-3 < 1/108
    assert "not measurable" in (out / "report.md").read_text()


def test_bad_input_exits_2_with_the_reason(tmp_path, rfw_dir, model, capsys):
    root, _ = rfw_dir
    path, _ = model
    out = tmp_path / "out"
    assert _run("--model", tmp_path / "missing.onnx", "--rfw", root, "--output", out) == 2
    assert "model file not found" in capsys.readouterr().err
    assert _run("--model", path, "--output", out) == 2
    assert "no test set given" in capsys.readouterr().err
    pairs_file = root / "test" / "txts" / "Asian" / "Asian_pairs.txt"
    pairs_file.write_text(pairs_file.read_text().replace("m.0as1x\t", "m.0as1x\tx\t", 1))
    assert _run("--model", path, "--rfw", root, "--output", out) == 2
    assert "Asian_pairs.txt:" in capsys.readouterr().err
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueR.")
    assert _run("--model", path, "--bin", evil, "--output", out) == 2
    assert "refusing to load global 'posix.system'" in capsys.readouterr().err
    assert _run("--model", path, "--bin", evil, "--output", out, "--fpr", 2) == 2
    assert "--fpr values must be in (0, 1)" in capsys.readouterr().err
    assert not (out / "report.json").exists()


def test_bad_input_convention_flags_exit_2_in_one_line(tmp_path, model, capsys):
    path, _ = model
    write_bin(tmp_path / "lfw.bin", aligned_faces(4), [True, False])
    base = ("--model", path, "--bin", tmp_path / "lfw.bin", "--output", tmp_path / "out")
    for flags, expected in ((("--input-std", 0), "--input-std must be a finite number > 0, got 0.0"),
                            (("--input-mean", "nan"), "--input-mean must be a finite number, got nan"),
                            (("--input-color", "yuv"), "--input-color must be rgb or bgr (the channel order the "
                                                        "model expects), got 'yuv'")):
        assert _run(*base, *flags) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


class _Refuse:
    def embed(self, *a, **k):
        raise AssertionError("embeddings should come from the cache")


def test_a_cache_hit_gives_the_same_notes(tmp_path, bfw_dir, model, monkeypatch):
    root, _ = bfw_dir
    path, _ = model
    out = tmp_path / "out"
    argv = ("--model", path, "--bfw", root, "--output", out, "--fpr", 0.1, "--no-dense")
    assert _run(*argv) == 0
    first = json.loads((out / "report.json").read_text())["models"]["tiny"]["datasets"]["bfw"]
    assert first["embeddings_cached"] is False
    assert first["notes"] == ["images of size 108x124 were resized to 112x112 without alignment"]
    monkeypatch.setattr(runner, "build_embedder", lambda *args: _Refuse())
    assert _run(*argv) == 0
    second = json.loads((out / "report.json").read_text())["models"]["tiny"]["datasets"]["bfw"]
    assert second["embeddings_cached"] is True and second["notes"] == first["notes"]
    assert "> images of size 108x124 were resized to 112x112 without alignment" in (out / "report.md").read_text()
    assert not list((out / "cache").glob("*.json")), "nothing beside the embeddings"


def _pairs_table(folder, faces, absolute=False):
    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(faces):
        cv2.imwrite(str(folder / f"{i}.png"), face)
    name = (lambda i: str(folder / f"{i}.png")) if absolute else (lambda i: f"{i}.png")
    rows = [f"{name(i)},{name(i + 1 if i % 4 == 0 else (i + 5) % len(faces))},{int(i % 4 == 0)},"
            f"{'A' if i < len(faces) // 2 else 'B'}" for i in range(len(faces))]
    (folder / "pairs.csv").write_text("path1,path2,issame,group\n" + "\n".join(rows) + "\n")
    return folder / "pairs.csv"


def test_changed_image_contents_are_embedded_again(tmp_path, model):
    path, w = model
    faces = aligned_faces(24, identities=[i // 2 for i in range(24)])
    table = _pairs_table(tmp_path / "set", faces)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    argv = ("--model", path, "--pairs", table, "--fpr", 0.1)
    assert _run(*argv, "--output", out) == 0
    first = json.loads((out / "report.json").read_text())["models"]["tiny"]["datasets"]["pairs-pairs"]
    image = tmp_path / "set" / "5.png"
    before = image.stat()
    cv2.imwrite(str(image), aligned_faces(1, seed=7, identities=[99])[0])  # same path, new bytes
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert _run(*argv, "--output", out) == 0
    second = json.loads((out / "report.json").read_text())["models"]["tiny"]["datasets"]["pairs-pairs"]
    assert second["embeddings_cached"] is False
    assert second["pairs"]["fpr_vs_threshold"]["A"] != first["pairs"]["fpr_vs_threshold"]["A"]
    assert _run(*argv, "--output", fresh) == 0
    third = json.loads((fresh / "report.json").read_text())["models"]["tiny"]["datasets"]["pairs-pairs"]
    assert third["pairs"] == second["pairs"], "the re-run equals a run into a fresh folder"
    # the same bytes again, with only the modification time changed: still a new key (size + mtime)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 2 * 10**9))
    assert _run(*argv, "--output", out) == 0
    assert json.loads((out / "report.json").read_text())["models"]["tiny"]["datasets"]["pairs-pairs"][
        "embeddings_cached"] is False


def test_pairs_csv_with_absolute_paths_end_to_end(tmp_path, model, capsys):
    path, w = model
    faces = aligned_faces(24, identities=[i // 2 for i in range(24)])
    table = _pairs_table(tmp_path / "set", faces, absolute=True)
    moved = tmp_path / "elsewhere" / "pairs.csv"
    moved.parent.mkdir()
    table.rename(moved)  # absolute paths do not depend on where the CSV is
    out = tmp_path / "out"
    assert _run("--model", path, "--pairs", moved, "--output", out, "--fpr", 0.1) == 0
    ds = json.loads((out / "report.json").read_text())["models"]["tiny"]["datasets"]["pairs-pairs"]
    emb = numpy_embed(faces, w)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a = [i for i in range(12)]
    scores = np.array([emb[i] @ emb[i + 1 if i % 4 == 0 else (i + 5) % 24] for i in a])
    fpr, tpr, _ = metrics.roc_curve(scores, np.array([i % 4 == 0 for i in a]))
    assert ds["pairs"]["roc"]["A"]["auc"] == pytest.approx(metrics.auc(fpr, tpr))
    capsys.readouterr()
    moved.write_text(moved.read_text() + f"{tmp_path / 'set' / '0.png'},/nowhere/9.png,0,A\n")
    assert _run("--model", path, "--pairs", moved, "--output", out, "--fpr", 0.1) == 2
    err = capsys.readouterr().err
    assert err == f"fpr-eval: error: {moved}:26: image /nowhere/9.png not found\n"


def test_report_replaces_the_folder_as_a_whole(tmp_path, model, monkeypatch):
    path, _ = model
    write_bin(tmp_path / "lfw.bin", aligned_faces(40), [i % 2 == 0 for i in range(20)])
    write_bin(tmp_path / "cfp.bin", aligned_faces(40, seed=3), [i % 2 == 0 for i in range(20)])
    out = tmp_path / "out"
    assert _run("--model", path, "--bin", tmp_path / "lfw.bin", tmp_path / "cfp.bin", "--output", out,
                "--fpr", 0.1) == 0
    assert (out / "bin-cfp_pairs_roc.png").is_file()
    (out / "my_notes.txt").write_text("mine")
    (out / "mine").mkdir()
    (out / "mine" / "x.txt").write_text("also mine")
    monkeypatch.setattr(runner, "build_embedder", lambda *args: _Refuse())
    assert _run("--model", path, "--bin", tmp_path / "lfw.bin", "--output", out, "--fpr", 0.1) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bin-lfw_pairs_fpr_vs_threshold.png", "bin-lfw_pairs_roc.png", "cache", "mine",
                     "my_notes.txt", "report.json", "report.md"], "the older run's cfp plots are gone"
    assert (out / "my_notes.txt").read_text() == "mine" and (out / "mine" / "x.txt").read_text() == "also mine"
    assert len(list((out / "cache").glob("*.npy"))) == 2, "both cached sets kept"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_holding_the_current_folder_is_refused(tmp_path, model, monkeypatch, capsys):
    path, _ = model
    write_bin(tmp_path / "lfw.bin", aligned_faces(40), [i % 2 == 0 for i in range(20)])
    (tmp_path / "out" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "out" / "sub")
    assert _run("--model", path, "--bin", tmp_path / "lfw.bin", "--output", tmp_path / "out") == 2
    assert "holds the current folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sub"]
