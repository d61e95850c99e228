"""fpr-calibrate and fpr-eval --calibration end to end with the tiny linear ONNX model; FairScorer; refusals."""
import json

import cv2
import numpy as np
import pytest

from eval_fixtures import aligned_faces
from test_eval_cli import numpy_embed, tiny_model
from fpr_plugin.cli_errors import UserError
from fpr_plugin.eval import FairScorer, cli
from fpr_plugin.eval.calibration import cli as calibrate_cli
from fpr_plugin.eval.calibration import load_calibration
from fpr_plugin.eval.metrics import threshold_at_fpr


def dense_folder(folder, first_identity, n_ids=8, per_id=3, names=None):
    """``folder/dense.csv`` over ``n_ids`` identities (half G1, half G2) of aligned synthetic faces."""
    folder.mkdir(parents=True)
    identities = [first_identity + i // per_id for i in range(n_ids * per_id)]
    faces = aligned_faces(len(identities), seed=first_identity, identities=identities)
    rows = ["path,identity,group"]
    for i, face in enumerate(faces):
        cv2.imwrite(str(folder / f"{i}.png"), face)
        ident = (names or (lambda k: f"p{k}"))(identities[i])
        rows.append(f"{i}.png,{ident},{'G1' if i < len(faces) // 2 else 'G2'}")
    (folder / "dense.csv").write_text("\n".join(rows) + "\n")
    return folder / "dense.csv", faces, identities


@pytest.fixture
def setup(tmp_path):
    model = tmp_path / "tiny.onnx"
    w = tiny_model(model)
    fit_csv, fit_faces, _ = dense_folder(tmp_path / "fit", 0)
    test_csv, test_faces, test_ids = dense_folder(tmp_path / "test", 100)
    return {"model": model, "w": w, "fit": fit_csv, "test": test_csv, "test_faces": test_faces,
            "test_ids": test_ids, "tmp": tmp_path}


def calibrate(s, method, out, *extra):
    return calibrate_cli.main(["--model", str(s["model"]), "--fit", str(s["fit"]), "--method", method,
                               "--output", str(out), "--no-progress", *map(str, extra)])


def evaluate(s, out, *calibrations):
    return cli.main(["--model", str(s["model"]), "--dense", str(s["test"]), "--output", str(out), "--fpr", "0.05",
                     "0.2", "--no-progress", "--calibration", *map(str, calibrations)])


def test_calibrate_then_evaluate_end_to_end(setup, capsys):
    s = setup
    files = {}
    for method in ("fsn", "faircal", "oracle"):
        files[method] = s["tmp"] / f"{method}.json"
        assert calibrate(s, method, files[method], "--clusters", 3, "--fpr", 0.05) == 0
    assert "K=3" in capsys.readouterr().out
    calib = load_calibration(files["faircal"])
    assert calib.fit_set == f"dense-dense ({s['fit']})" and calib.params["clusters"] == 3 and len(calib.fit_images) == 24
    out = s["tmp"] / "out"
    assert evaluate(s, out, *files.values()) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["tiny", "tiny+fsn", "tiny+faircal", "tiny+oracle"]
    md = (out / "report.md").read_text()
    assert "| tiny+faircal |" in md
    # the calibrated dense entry: threshold = (floor(f n) + 1)-th largest calibrated within-group impostor score,
    # recomputed here from numpy embeddings and the calibration, pair by pair
    emb = numpy_embed(s["test_faces"], s["w"])
    groups = ["G1" if i < 12 else "G2" for i in range(24)]
    for method, path in files.items():
        c = load_calibration(path)
        impostor = [float(c.score(emb[i:i + 1], emb[j:j + 1], groups[i:i + 1], groups[j:j + 1])[0])
                    for i in range(24) for j in range(i + 1, 24)
                    if groups[i] == groups[j] and s["test_ids"][i] != s["test_ids"][j]]
        entry = report["models"][f"tiny+{method}"]["datasets"]["dense-dense"]
        for at in entry["dense"]["at_fpr"]:
            thr, _ = threshold_at_fpr(impostor, at["target_fpr"])
            assert at["threshold"] == pytest.approx(thr, abs=1e-6), method
        assert any(f"calibrated with {method}" in n for n in entry["notes"])
    raw = report["models"]["tiny"]["datasets"]["dense-dense"]["dense"]["at_fpr"][0]
    assert raw["n_impostor"] == len(impostor)


def test_a_calibration_for_another_model_exits_2_naming_both(setup, capsys):
    s = setup
    other = s["tmp"] / "other.onnx"
    tiny_model(other, seed=1)
    calib = s["tmp"] / "c.json"
    assert calibrate_cli.main(["--model", str(other), "--fit", str(s["fit"]), "--method", "fsn", "--output",
                               str(calib), "--clusters", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert evaluate(s, s["tmp"] / "out", calib) == 2
    err = capsys.readouterr().err.strip()
    c = load_calibration(calib)
    from fpr_plugin.eval.cache import file_sha256
    assert len(err.splitlines()) == 1 and c.model_sha256 in err and file_sha256(s["model"]) in err
    with pytest.raises(UserError, match=c.model_sha256):
        FairScorer(s["model"], calib)


def test_a_fit_set_sharing_images_is_refused_and_shared_identity_names_noted(setup, capsys):
    s = setup
    calib = s["tmp"] / "c.json"
    # calibrated on the test set itself: same image files
    assert calibrate_cli.main(["--model", str(s["model"]), "--fit", str(s["test"]), "--method", "faircal",
                               "--output", str(calib), "--clusters", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert evaluate(s, s["tmp"] / "out", calib) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shares 24 image(s)" in err and "dense-dense" in err
    # other images, but identity names that the test set also uses: a note, not a refusal
    named, _, _ = dense_folder(s["tmp"] / "named", 200, names=lambda k: f"p{k - 100}")
    assert calibrate_cli.main(["--model", str(s["model"]), "--fit", str(named), "--method", "faircal",
                               "--output", str(calib), "--clusters", "2", "--no-progress"]) == 0
    out = s["tmp"] / "out2"
    assert evaluate(s, out, calib) == 0
    notes = json.loads((out / "report.json").read_text())["models"]["tiny+faircal"]["datasets"]["dense-dense"]["notes"]
    assert any("shares 8 identity name(s)" in n for n in notes)


def test_fair_scorer_gives_the_calibrated_scores_of_images(setup):
    s = setup
    calib = s["tmp"] / "c.json"
    assert calibrate(s, "faircal", calib, "--clusters", 3) == 0
    scorer = FairScorer(s["model"], calib)
    faces = s["test_faces"]
    got = scorer.score(faces[:6], faces[6:12])
    emb = numpy_embed(faces, s["w"])
    c = load_calibration(calib)
    np.testing.assert_allclose(got, c.score(emb[:6], emb[6:12]), atol=1e-6)
    np.testing.assert_allclose(scorer.score_embeddings(emb[:6], emb[6:12]), got, atol=1e-6)
    assert np.all((got > 0) & (got < 1))


@pytest.mark.parametrize("argv, needle", [
    (["--method", "oracle", "--fit", "{pairs}"], "needs a group per image"),
    (["--method", "fsn", "--clusters", "0"], "--clusters"),
    (["--method", "fsn", "--fpr", "2"], "--fpr"),
    (["--method", "fsn", "--fit", "{missing}"], "missing"),
    (["--method", "fsn", "--input-color", "xyz"], "--input-color"),
])
def test_fpr_calibrate_bad_input_exits_2_in_one_line(setup, capsys, argv, needle):
    s = setup
    pairs = s["tmp"] / "fit" / "pairs.csv"
    # image 3 is in G1 pairs and in G2 pairs: no one group per image for the oracle
    rows = ["0.png,1.png,1,G1"] * 5 + ["3.png,1.png,0,G1"] * 6 + ["3.png,4.png,1,G2"] * 5 + ["4.png,5.png,0,G2"] * 6
    pairs.write_text("path1,path2,issame,group\n" + "\n".join(rows) + "\n")
    base = {"--model": str(s["model"]), "--fit": str(s["fit"]), "--output": str(s["tmp"] / "c.json")}
    argv = [a.format(pairs=pairs, missing=s["tmp"] / "missing.csv") for a in argv]
    for key, value in base.items():
        if key not in argv:
            argv += [key, value]
    assert calibrate_cli.main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (s["tmp"] / "c.json").exists()


def test_fpr_eval_with_a_malformed_calibration_names_file_and_key(setup, capsys):
    s = setup
    calib = s["tmp"] / "c.json"
    assert calibrate(s, "fsn", calib, "--clusters", 2) == 0
    data = json.loads(calib.read_text())
    data["state"]["thresholds"] = ["__import__('os').system('x')", 0.1]
    calib.write_text(json.dumps(data))
    capsys.readouterr()
    assert evaluate(s, s["tmp"] / "out", calib) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(calib) in err and "'state.thresholds'" in err
