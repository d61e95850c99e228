"""RFW image layout: pairs, folds, groups, norm_crop alignment, path variants, errors, cache key."""
import cv2
import numpy as np
import pytest
from insightface.utils import face_align

from eval_fixtures import write_rfw
from fpr_plugin.eval.sets import rfw


def test_rfw_pairs_folds_and_groups(rfw_dir):
    root, info = rfw_dir
    s = rfw.load_rfw(root)
    assert s.pairs.pairs.shape == (40, 2)
    assert list(dict.fromkeys(s.pairs.groups)) == ["African", "Asian"]
    for race in ("African", "Asian"):
        m = s.pairs.groups == race
        # 10 consecutive folds of (1 genuine, 1 impostor), in file order
        np.testing.assert_array_equal(s.pairs.folds[m], np.repeat(np.arange(10), 2))
        np.testing.assert_array_equal(s.pairs.issame[m], np.tile([True, False], 10))
        for (a, b), line in zip(s.pairs.pairs[m], info["pairs"][race]):
            if len(line) == 3:
                want = [f"{line[0]}/{line[0]}_{line[1]:04d}.jpg", f"{line[0]}/{line[0]}_{line[2]:04d}.jpg"]
            else:
                want = [f"{line[0]}/{line[0]}_{line[1]:04d}.jpg", f"{line[2]}/{line[2]}_{line[3]:04d}.jpg"]
            got = [s.images.sources[a], s.images.sources[b]]
            assert [f"{p.parent.name}/{p.name}" for p in got] == want
            assert all(p.parent.parent.name == race for p in got)
    # dense labels for every listed image
    assert len(s.images) == 24 and set(s.image_groups) == {"African", "Asian"}
    assert len(set(s.identities)) == 8


def test_rfw_alignment_is_norm_crop_with_the_listed_landmarks(rfw_dir):
    root, info = rfw_dir
    s = rfw.load_rfw(root)
    for i in (0, 7, 23):
        path = s.images.sources[i]
        race, ident, n = path.parents[1].name, path.parent.name, int(path.stem.split("_")[-1])
        lmk = info["landmarks"][(race, ident, n)]
        expected = face_align.norm_crop(cv2.imread(str(path)), np.round(lmk, 2))
        np.testing.assert_array_equal(s.images.load([i])[0], expected)
    assert s.images.load([0]).shape == (1, 112, 112, 3)


@pytest.mark.parametrize("prefix", ["test/data/{race}/", "", "/abs/RFW/test/data/{race}/"])
def test_rfw_landmark_path_variants(tmp_path, prefix):
    write_rfw(tmp_path / "r", races=("Indian",), lmk_prefix=prefix)
    s = rfw.load_rfw(tmp_path / "r" / "test")  # the test/ folder itself is accepted too
    assert len(s.images) == 12 and s.pairs.pairs.shape == (20, 2)


def test_rfw_missing_image_names_pairs_file_and_line(rfw_dir):
    root, info = rfw_dir
    pairs_file = root / "test" / "txts" / "Asian" / "Asian_pairs.txt"
    lines = pairs_file.read_text().splitlines()
    lines[4] = "m.0as0x\t1\t9"  # image 0009 does not exist
    pairs_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=r"Asian_pairs.txt:5: image .*m.0as0x_0009.jpg not found"):
        rfw.load_rfw(root)


def test_rfw_image_without_landmarks_is_named(rfw_dir):
    root, _ = rfw_dir
    lmk = root / "test" / "txts" / "African" / "African_lmk.txt"
    lines = lmk.read_text().splitlines()
    lmk.write_text("\n".join(l for l in lines if "m.0af0x_0002" not in l) + "\n")
    with pytest.raises(ValueError, match=r"African_pairs.txt:\d+: image m.0af0x/m.0af0x_0002.jpg has no landmarks"):
        rfw.load_rfw(root)


@pytest.mark.parametrize("bad,match", [("m.0af0x\t1", r"African_pairs.txt:3: expected 'id n1 n2'"),
                                       ("m.0af0x\tone\t2", r"African_pairs.txt:3: .*integer image numbers")])
def test_rfw_malformed_pairs_line(rfw_dir, bad, match):
    root, _ = rfw_dir
    pairs_file = root / "test" / "txts" / "African" / "African_pairs.txt"
    lines = pairs_file.read_text().splitlines()
    lines[2] = bad
    pairs_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        rfw.load_rfw(root)


def test_rfw_malformed_landmark_line(rfw_dir):
    root, _ = rfw_dir
    lmk = root / "test" / "txts" / "Asian" / "Asian_lmk.txt"
    lines = lmk.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0]  # 11 fields
    lmk.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"Asian_lmk.txt:2: expected 12 fields"):
        rfw.load_rfw(root)


def test_rfw_group_without_impostors(rfw_dir):
    root, info = rfw_dir
    pairs_file = root / "test" / "txts" / "Asian" / "Asian_pairs.txt"
    genuine = [p for p in info["pairs"]["Asian"] if len(p) == 3]
    pairs_file.write_text("".join("\t".join(map(str, p)) + "\n" for p in genuine))
    with pytest.raises(ValueError, match="group 'Asian' has 10 genuine and 0 impostor pairs"):
        rfw.load_rfw(root)


def test_not_an_rfw_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an RFW folder"):
        rfw.load_rfw(tmp_path)




def test_cache_key_changes_with_the_image_list(rfw_dir):
    root, _ = rfw_dir
    a = rfw.load_rfw(root).cache_key()
    assert a == rfw.load_rfw(root).cache_key() and a.startswith("rfw-")
    lmk = root / "test" / "txts" / "Asian" / "Asian_lmk.txt"
    lines = lmk.read_text().splitlines()
    lmk.write_text("\n".join("  ".join(l.split()) for l in lines) + "\n")  # same values, other spacing
    assert rfw.load_rfw(root).cache_key() == a
    fields = lines[0].split()
    fields[2] = str(float(fields[2]) + 1.0)  # one landmark moves
    lmk.write_text("\n".join([" ".join(fields)] + lines[1:]) + "\n")
    assert rfw.load_rfw(root).cache_key() != a


def test_missing_races_are_warned_and_noted(rfw_dir, capsys):
    root, _ = rfw_dir
    s = rfw.load_rfw(root)
    assert len(s.notes) == 1 and "lacks the race(s) Caucasian, Indian" in s.notes[0]
    assert "covers 2 of the 4 groups" in s.notes[0]
    assert f"fpr-eval: warning: {s.notes[0]}" in capsys.readouterr().err
    assert rfw.load_rfw(root, races=["African", "Asian"]).notes == [], "races chosen on purpose: no warning"


def test_other_groups_in_the_rfw_layout_are_not_rfw_with_missing_races(tmp_path, capsys):
    write_rfw(tmp_path / "r", races=("Common1", "Rare"))
    s = rfw.load_rfw(tmp_path / "r")
    assert list(dict.fromkeys(s.pairs.groups)) == ["Common1", "Rare"] and s.notes == []
    assert "warning" not in capsys.readouterr().err
