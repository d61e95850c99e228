"""Tests of fpr_plugin.data.synthetic: the rendered faces, the group designs and the three on-disk layouts."""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpr_plugin.data import synthetic as syn
from fpr_plugin.data.record_set import read_groups, read_record_set
from fpr_plugin.data.synthetic_faces import PHOTO_SIZE

# smaller than "tiny": enough for the layout checks, a few seconds to draw
MINI = syn.SizeSpec(train_identities=4, train_images=2, test_identities=20, test_images=2, pairs_per_fold=1)


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "bench"
    manifest = syn.make_synthetic(out, seed=3, size=MINI, design="rare")
    return out, manifest


# ---- identities and rendering -------------------------------------------------------------

def test_identities_are_a_function_of_the_seed():
    a, b = syn.build_benchmark(5, MINI), syn.build_benchmark(5, MINI)
    c = syn.build_benchmark(6, MINI)
    assert a.train == b.train and a.test == b.test
    assert a.train[0].shape != c.train[0].shape


def test_rare_group_has_a_quarter_of_the_training_identities():
    bench = syn.build_benchmark(0, "demo", "rare")
    per_group = Counter(identity.group for identity in bench.train)
    assert per_group == {"Common1": 120, "Common2": 120, "Common3": 120, "Rare": 30}
    assert Counter(identity.group for identity in bench.test) == {g: 100 for g in per_group}


# ---- pairs --------------------------------------------------------------------------------

def test_fold_pairs_follow_the_rfw_protocol():
    names = [f"p{i}" for i in range(30)]
    folds = syn.fold_pairs(np.random.default_rng(0), names, num_images=4, pairs_per_fold=5)
    assert len(folds) == syn.FOLDS
    members = []
    for genuine, impostor in folds:
        assert len(genuine) == len(impostor) == 5
        assert len(set(genuine)) == 5 and len(set(impostor)) == 5
        people = {p for p, _, _ in genuine} | {p for p, _, q, _ in impostor} | {q for p, _, q, _ in impostor}
        members.append(people)
        for person, n1, n2 in genuine:
            assert 1 <= n1 < n2 <= 4
        for p, n1, q, n2 in impostor:
            assert p != q and 1 <= n1 <= 4 and 1 <= n2 <= 4
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            assert not members[i] & members[j], "folds must not share identities"


def test_fold_pairs_reject_more_pairs_than_exist():
    with pytest.raises(ValueError, match="pairs_per_fold=4"):
        syn.fold_pairs(np.random.default_rng(0), [f"p{i}" for i in range(20)], num_images=2, pairs_per_fold=4)


def test_bad_size_and_design_are_named():
    with pytest.raises(ValueError, match="size must be one of"):
        syn.build_benchmark(0, "huge")
    with pytest.raises(ValueError, match="design must be one of"):
        syn.build_benchmark(0, "tiny", "nope")


# ---- the written benchmark ----------------------------------------------------------------

def test_train_record_set_and_groups(mini):
    out, manifest = mini
    info = read_record_set(out / "train")
    bench = syn.build_benchmark(3, MINI, "rare")
    assert info.num_classes == len(bench.train) == manifest["train"]["num_classes"]
    assert info.num_image == len(bench.train) * MINI.train_images
    groups = read_groups(out / "train")
    assert groups == {label: identity.group for label, identity in enumerate(bench.train)}
    assert Counter(groups.values())["Rare"] == 2 and Counter(groups.values())["Common1"] == 4


def test_rfw_layout(mini):
    out, _ = mini
    rfw = out / "rfw" / "test"
    for group in ("Common1", "Common2", "Common3", "Rare"):
        lines = (rfw / "txts" / group / f"{group}_pairs.txt").read_text().splitlines()
        assert len(lines) == syn.FOLDS * 2 * MINI.pairs_per_fold
        for fold in range(syn.FOLDS):
            block = [line.split("\t") for line in lines[fold * 2: fold * 2 + 2]]
            assert [len(fields) for fields in block] == [3, 4], "each fold: genuine lines, then impostor lines"
        for fields in (line.split("\t") for line in lines):
            refs = [(fields[0], fields[1]), (fields[0], fields[2])] if len(fields) == 3 else \
                [(fields[0], fields[1]), (fields[2], fields[3])]
            for person, number in refs:
                assert (rfw / "data" / group / person / f"{person}_{int(number):04d}.jpg").is_file()
        landmarks = [line.split("\t") for line in (rfw / "txts" / group / f"{group}_lmk.txt").read_text().splitlines()]
        images = sorted((rfw / "data" / group).glob("*/*.jpg"))
        assert len(landmarks) == len(images) == MINI.test_identities * MINI.test_images
        for fields in landmarks:
            assert len(fields) == 12
            path = rfw.parent / fields[0]
            assert path.is_file() and path.parent.parent.name == group
            photo = cv2.imread(str(path))
            points = np.array(fields[2:], dtype=float).reshape(5, 2)
            assert photo.shape == (PHOTO_SIZE, PHOTO_SIZE, 3)
            assert (points > 0).all() and (points < PHOTO_SIZE).all()
            assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # left eye/mouth corner first


def test_dense_set(mini):
    out, manifest = mini
    with open(out / "dense" / "dense.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "identity", "group"]
    assert len(rows) == 4 * MINI.test_identities * MINI.test_images
    assert Counter(row["group"] for row in rows) == {g: MINI.test_identities * MINI.test_images
                                                     for g in ("Common1", "Common2", "Common3", "Rare")}
    for row in rows[:: len(rows) // 7]:
        img = cv2.imread(str(out / "dense" / row["path"]))
        assert img.shape == (112, 112, 3)
        # the dense image is the aligned version of the RFW photo of the same name
        assert row["path"].split("/")[-1].startswith(row["identity"] + "_")
    assert manifest["test"]["Rare"]["test_images"] == MINI.test_identities * MINI.test_images


def test_same_seed_same_bytes_and_no_leftovers(mini, tmp_path):
    out, _ = mini
    again = tmp_path / "again"
    syn.make_synthetic(again, seed=3, size=MINI, design="rare")
    for relative in ("train/train.rec", "train/train.idx", "train/groups.tsv", "rfw/test/txts/Rare/Rare_pairs.txt",
                     "rfw/test/txts/Common2/Common2_lmk.txt", "dense/dense.csv", "synthetic.json"):
        assert (out / relative).read_bytes() == (again / relative).read_bytes(), relative
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"], "temporary folders must be renamed or removed"


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        syn.make_synthetic(out, seed=0, size=MINI)
    assert (out / "keep.txt").exists()
    capsys.readouterr()
    assert syn.main([str(out), "--size", "tiny", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fpr-make-synthetic: error: output folder {out} already exists") and err.count("\n") == 1


def test_cli_writes_the_tiny_benchmark(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert syn.main([str(out), "--size", "tiny", "--seed", "1", "--design", "control", "--quiet"]) == 0
    assert "training identities" in capsys.readouterr().out
    assert read_record_set(out / "train").num_classes == 4 * syn.SIZES["tiny"].train_identities
    assert set(read_groups(out / "train").values()) == {"A", "B", "C", "D"}


def test_calibration_split_holds_other_identities_of_every_group(mini):
    """calib/calib.csv: half as many identities per group as the test set, none of them a test identity."""
    import csv

    from fpr_plugin.eval.sets import load_dense_csv

    out, manifest = mini
    assert manifest["paths"]["calibration"] == "calib/calib.csv"
    rows = list(csv.DictReader(open(out / "calib" / "calib.csv")))
    test_rows = list(csv.DictReader(open(out / "dense" / "dense.csv")))
    assert not {r["identity"] for r in rows} & {r["identity"] for r in test_rows}
    for group in ("Common1", "Common2", "Common3", "Rare"):
        ids = {r["identity"] for r in rows if r["group"] == group}
        assert len(ids) == MINI.test_identities // 2 == manifest["calibration"][group]["identities"]
        assert sum(r["group"] == group for r in rows) == len(ids) * MINI.test_images
    calib = load_dense_csv(out / "calib" / "calib.csv")
    assert len(calib.images) == len(rows) and all((out / "calib" / r["path"]).is_file() for r in rows)
