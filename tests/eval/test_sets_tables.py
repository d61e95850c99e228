"""Generic pair and dense CSVs: groups, folds, landmarks, errors, absolute image paths."""
import csv

import cv2
import numpy as np
import pytest

from eval_fixtures import aligned_faces
from fpr_plugin.eval.sets import tables


def _write_faces(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i, face in enumerate(aligned_faces(n)):
        cv2.imwrite(str(folder / f"{i}.jpg"), face)


def test_pairs_csv_with_group_columns(tmp_path):
    _write_faces(tmp_path / "img", 8)
    with open(tmp_path / "pairs.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["path1", "path2", "issame", "group1", "group2"])
        for i in range(20):
            w.writerow([f"img/{i % 4}.jpg", f"img/{4 + i % 4}.jpg", i % 2, "A" if i < 10 else "B",
                        "A" if i < 10 else "B"])
    s = tables.load_pairs_csv(tmp_path / "pairs.csv", n_folds=5)
    assert list(dict.fromkeys(s.pairs.groups)) == ["A", "B"]
    np.testing.assert_array_equal(s.pairs.folds[:10], np.repeat(np.arange(5), 2))
    assert len(s.images) == 8


def test_pairs_csv_errors(tmp_path):
    _write_faces(tmp_path / "img", 2)
    path = tmp_path / "pairs.csv"
    path.write_text("path1,path2,issame\nimg/0.jpg,img/1.jpg,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['group1', 'group2'\]"):
        tables.load_pairs_csv(path)
    path.write_text("path1,path2,issame,group\nimg/0.jpg,img/1.jpg,1,A\nimg/0.jpg,img/9.jpg,0,A\n")
    with pytest.raises(FileNotFoundError, match=r"pairs.csv:3: image .*9.jpg not found"):
        tables.load_pairs_csv(path)
    path.write_text("path1,path2,issame,group\nimg/0.jpg,img/1.jpg,1,A\nimg/0.jpg,img/1.jpg\n")
    with pytest.raises(ValueError, match=r"pairs.csv:3: expected 4 comma-separated fields"):
        tables.load_pairs_csv(path)


def test_dense_csv_with_and_without_landmarks(tmp_path):
    _write_faces(tmp_path / "img", 4)
    path = tmp_path / "dense.csv"
    path.write_text("path,identity,group\n" + "".join(f"img/{i}.jpg,p{i // 2},G{i % 2}\n" for i in range(4)))
    s = tables.load_dense_csv(path)
    assert s.pairs is None and list(s.identities) == ["p0", "p0", "p1", "p1"] and s.images.landmarks is None
    lmk = " ".join(["x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"])
    coords = ",".join(f"{v:.1f}" for v in np.array([[38, 52], [74, 52], [56, 72], [42, 92], [71, 92]]).ravel())
    path.write_text(f"path,identity,group,{lmk}\n" + "".join(f"img/{i}.jpg,p{i},G,{coords}\n" for i in range(4)))
    s = tables.load_dense_csv(path)
    assert s.images.landmarks.shape == (4, 5, 2) and s.images.landmarks[0, 1, 0] == 74
    path.write_text("path,identity,group\nimg/0.jpg,a,G\nimg/0.jpg,a,G\n")
    with pytest.raises(ValueError, match=r"dense.csv:3: image 'img/0.jpg' is listed twice"):
        tables.load_dense_csv(path)


def test_pairs_csv_with_absolute_image_paths(tmp_path):
    _write_faces(tmp_path / "faces", 4)
    table = tmp_path / "lists" / "pairs.csv"
    table.parent.mkdir()
    rows = [f"{tmp_path / 'faces' / f'{i % 2}.jpg'},{tmp_path / 'faces' / f'{2 + i % 2}.jpg'},{i % 2},A"
            for i in range(10)]
    table.write_text("path1,path2,issame,group\n" + "\n".join(rows) + "\n")
    s = tables.load_pairs_csv(table)
    assert s.images.sources == [tmp_path / "faces" / f"{i}.jpg" for i in (0, 2, 1, 3)]
    np.testing.assert_array_equal(s.images.load([1])[0], cv2.imread(str(tmp_path / "faces" / "2.jpg")))
    assert len(s.cache_key()) > len("pairs-pairs-")
    table.write_text("path1,path2,issame,group\n" + "\n".join(rows[:3])
                     + f"\n{tmp_path / 'faces' / '0.jpg'},{tmp_path / 'elsewhere' / '7.jpg'},0,A\n")
    with pytest.raises(FileNotFoundError) as error:
        tables.load_pairs_csv(table)
    assert str(error.value) == f"{table}:5: image {tmp_path / 'elsewhere' / '7.jpg'} not found"


def test_dense_csv_with_absolute_image_paths(tmp_path):
    _write_faces(tmp_path / "faces", 4)
    table = tmp_path / "dense.csv"
    table.write_text("path,identity,group\n" + "".join(f"{tmp_path / 'faces' / f'{i}.jpg'},p{i // 2},G\n"
                                                       for i in range(4)))
    s = tables.load_dense_csv(table)
    assert s.images.sources[3] == tmp_path / "faces" / "3.jpg" and list(s.identities) == ["p0", "p0", "p1", "p1"]
    np.testing.assert_array_equal(s.images.load([3])[0], cv2.imread(str(tmp_path / "faces" / "3.jpg")))
    table.write_text(table.read_text() + "/no/such/folder/x.jpg,p2,G\n")
    with pytest.raises(FileNotFoundError) as error:
        tables.load_dense_csv(table)
    assert str(error.value) == f"{table}:6: image /no/such/folder/x.jpg not found"
