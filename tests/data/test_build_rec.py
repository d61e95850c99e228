"""fpr-build-rec: image tree -> record set, alignment, skipped images, atomic output, --reindex."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpr_plugin.data import build_rec
from fpr_plugin.data.build_rec import main, read_landmarks
from fpr_plugin.data.record_set import read_groups, read_property
from fpr_plugin.data.recordio import IndexedRecordReader, unpack

# InsightFace's 112x112 ArcFace landmark template (eyes, nose, mouth corners)
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])


def jpeg(img, quality=95):
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@pytest.fixture
def tree(tmp_path, make_image):
    """A BUPT-style tree: 112 JPEG kept as is, PNG re-encoded, a large image resized, 2 broken files."""
    src = tmp_path / "src"
    files = {
        "African/idA/0.jpg": jpeg(make_image()),
        "African/idA/1.png": cv2.imencode(".png", make_image())[1].tobytes(),
        "Asian/idB/0.jpg": jpeg(cv2.resize(make_image(), (160, 200))),
        "Asian/idB/bad.jpg": b"this is not a jpeg",
        "Asian/idC/bad.jpg": b"\xff\xd8\xff truncated",
        "Caucasian/idD/0.jpg": jpeg(make_image()),
        "Caucasian/idD/notes.txt": b"ignored: not an image",
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return src, files


def records(out):
    reader = IndexedRecordReader(out / "train.idx", out / "train.rec")
    return [unpack(reader.read_idx(k)) for k in reader.keys]


@pytest.mark.parametrize("workers", [0, 2])
def test_build_tree(tree, tmp_path, capsys, workers):
    src, files = tree
    out = tmp_path / "out"
    assert main([str(src), str(out), "--workers", str(workers), "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["num_image"], summary["num_classes"], summary["skipped"], summary["resized"],
            summary["dropped_classes"]) == (4, 3, 2, 1, 1)
    assert f"skipped {src / 'Asian/idB/bad.jpg'}: not an image OpenCV can decode" in captured.err
    assert str(src / "Asian/idC/bad.jpg") in captured.err
    assert read_property(out) == (3, 112, 112)
    assert read_groups(out) == {0: "African", 1: "Asian", 2: "Caucasian"}
    assert (out / "groups.tsv").read_text() == "0\tidA\tAfrican\n1\tidB\tAsian\n2\tidD\tCaucasian\n"
    recs = records(out)
    assert [h.label for h, _ in recs[1:5]] == [0.0, 0.0, 1.0, 2.0]
    assert recs[1][1] == files["African/idA/0.jpg"]  # already 112x112 JPEG: bytes unchanged
    assert recs[4][1] == files["Caucasian/idD/0.jpg"]
    png = cv2.imdecode(np.frombuffer(files["African/idA/1.png"], np.uint8), cv2.IMREAD_COLOR)
    reencoded = cv2.imdecode(np.frombuffer(recs[2][1], np.uint8), cv2.IMREAD_COLOR)
    assert recs[2][1][:2] == b"\xff\xd8" and np.abs(reencoded.astype(int) - png).mean() < 3
    large = cv2.imdecode(np.frombuffer(files["Asian/idB/0.jpg"], np.uint8), cv2.IMREAD_COLOR)
    resized = cv2.imdecode(np.frombuffer(recs[3][1], np.uint8), cv2.IMREAD_COLOR)
    assert resized.shape == (112, 112, 3)
    assert np.abs(resized.astype(int) - cv2.resize(large, (112, 112), interpolation=cv2.INTER_AREA)).mean() < 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_landmarks_align_with_norm_crop(tmp_path, make_image):
    # a face whose landmarks are the template scaled by 2 and shifted by (30, 10): the aligned
    # crop must be the 224x224 window at (30, 10) scaled down by 2
    img = make_image(300)
    src = tmp_path / "src"
    (src / "id0").mkdir(parents=True)
    cv2.imwrite(str(src / "id0" / "face.png"), img)
    cv2.imwrite(str(src / "id0" / "other.png"), img)
    points = ARCFACE_TEMPLATE * 2 + [30, 10]
    (tmp_path / "lmk.txt").write_text("path x1 y1 x2 y2 x3 y3 x4 y4 x5 y5\n"
                                      "id0/face.png " + " ".join(f"{v:.4f}" for v in points.ravel()) + "\n")
    out = tmp_path / "out"
    assert main([str(src), str(out), "--landmarks", str(tmp_path / "lmk.txt"), "--workers", "0",
                 "--no-progress"]) == 0
    recs = records(out)
    assert len(recs) == 1 + 1 + 1  # header, the aligned face, one identity; other.png had no landmarks
    aligned = cv2.imdecode(np.frombuffer(recs[1][1], np.uint8), cv2.IMREAD_COLOR)
    window = cv2.resize(img[10:234, 30:254], (112, 112), interpolation=cv2.INTER_AREA)
    assert np.abs(aligned.astype(int) - window).mean() < 4
    naive = cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA)
    assert np.abs(aligned.astype(int) - naive).mean() > 10


def test_read_landmarks_formats_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("a b/c.jpg," + ",".join(["1"] * 10)
                                    + "\n# comment\n\n/abs/x.jpg," + ",".join(["2"] * 10) + "\n")
    got = read_landmarks(tmp_path / "a.csv", tmp_path / "root")
    assert set(got) == {(tmp_path / "root" / "a b" / "c.jpg").resolve(), Path("/abs/x.jpg")}
    assert got[Path("/abs/x.jpg")].tolist() == [[2.0, 2.0]] * 5
    (tmp_path / "b.txt").write_text("x.jpg " + " ".join(["1"] * 10) + "\ny.jpg 1 2 3\n")
    with pytest.raises(ValueError, match=r"b\.txt, line 2: expected an image path and 10 numbers"):
        read_landmarks(tmp_path / "b.txt", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_landmarks(tmp_path / "missing.txt", tmp_path)


def test_build_without_readable_images_fails_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "src" / "id0").mkdir(parents=True)
    (tmp_path / "src" / "id0" / "x.jpg").write_bytes(b"junk")
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "0", "--no-progress"]) == 2
    assert "no readable image (1 skipped); nothing was written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_interrupted_build_leaves_no_partial_output(tree, tmp_path, monkeypatch):
    src, _ = tree
    calls = []

    def interrupt(data, landmarks=None, quality=95):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return data, False

    monkeypatch.setattr(build_rec, "encode_face", interrupt)
    assert main([str(src), str(tmp_path / "out"), "--workers", "0", "--no-progress"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_existing_output_needs_overwrite(tree, tmp_path, capsys):
    src, _ = tree
    out = tmp_path / "out"
    args = [str(src), str(out), "--workers", "0", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a record set; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_reindex_rebuilds_the_index(tree, tmp_path, capsys):
    src, _ = tree
    out = tmp_path / "out"
    main([str(src), str(out), "--workers", "0", "--no-progress"])
    original = (out / "train.idx").read_text()
    (out / "train.idx").write_text("garbage\n")
    assert main(["--reindex", str(out)]) == 0
    assert (out / "train.idx").read_text() == original
    assert "rebuilt" in capsys.readouterr().out
