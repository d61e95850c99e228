"""Loaders on fixtures in the exact RFW, .bin and BFW layouts; bad input; the restricted unpickler."""
import csv
import os
import pickle

import cv2
import numpy as np
import pytest
from insightface.utils import face_align

from eval_fixtures import aligned_faces, jpeg, write_bfw, write_bin, write_rfw
from fpr_plugin.eval import protocols


# ----------------------------------------------------------------------------- RFW images
def test_rfw_pairs_folds_and_groups(rfw_dir):
    root, info = rfw_dir
    s = protocols.load_rfw(root)
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
    s = protocols.load_rfw(root)
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
    s = protocols.load_rfw(tmp_path / "r" / "test")  # the test/ folder itself is accepted too
    assert len(s.images) == 12 and s.pairs.pairs.shape == (20, 2)


def test_rfw_missing_image_names_pairs_file_and_line(rfw_dir):
    root, info = rfw_dir
    pairs_file = root / "test" / "txts" / "Asian" / "Asian_pairs.txt"
    lines = pairs_file.read_text().splitlines()
    lines[4] = "m.0as0x\t1\t9"  # image 0009 does not exist
    pairs_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=r"Asian_pairs.txt:5: image .*m.0as0x_0009.jpg not found"):
        protocols.load_rfw(root)


def test_rfw_image_without_landmarks_is_named(rfw_dir):
    root, _ = rfw_dir
    lmk = root / "test" / "txts" / "African" / "African_lmk.txt"
    lines = lmk.read_text().splitlines()
    lmk.write_text("\n".join(l for l in lines if "m.0af0x_0002" not in l) + "\n")
    with pytest.raises(ValueError, match=r"African_pairs.txt:\d+: image m.0af0x/m.0af0x_0002.jpg has no landmarks"):
        protocols.load_rfw(root)


@pytest.mark.parametrize("bad,match", [("m.0af0x\t1", r"African_pairs.txt:3: expected 'id n1 n2'"),
                                       ("m.0af0x\tone\t2", r"African_pairs.txt:3: .*integer image numbers")])
def test_rfw_malformed_pairs_line(rfw_dir, bad, match):
    root, _ = rfw_dir
    pairs_file = root / "test" / "txts" / "African" / "African_pairs.txt"
    lines = pairs_file.read_text().splitlines()
    lines[2] = bad
    pairs_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        protocols.load_rfw(root)


def test_rfw_malformed_landmark_line(rfw_dir):
    root, _ = rfw_dir
    lmk = root / "test" / "txts" / "Asian" / "Asian_lmk.txt"
    lines = lmk.read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0]  # 11 fields
    lmk.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"Asian_lmk.txt:2: expected 12 fields"):
        protocols.load_rfw(root)


def test_rfw_group_without_impostors(rfw_dir):
    root, info = rfw_dir
    pairs_file = root / "test" / "txts" / "Asian" / "Asian_pairs.txt"
    genuine = [p for p in info["pairs"]["Asian"] if len(p) == 3]
    pairs_file.write_text("".join("\t".join(map(str, p)) + "\n" for p in genuine))
    with pytest.raises(ValueError, match="group 'Asian' has 10 genuine and 0 impostor pairs"):
        protocols.load_rfw(root)


def test_not_an_rfw_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an RFW folder"):
        protocols.load_rfw(tmp_path)


# ----------------------------------------------------------------------------- .bin files
@pytest.mark.parametrize("protocol,as_numpy", [(2, False), (2, True), (4, True), (5, True)])
def test_bin_round_trip(tmp_path, protocol, as_numpy):
    faces = aligned_faces(40)
    issame = [i % 2 == 0 for i in range(20)]
    path = tmp_path / "lfw.bin"
    write_bin(path, faces, issame, protocol=protocol, as_numpy=as_numpy)
    s = protocols.load_bin(path)
    assert s.name == "bin-lfw" and set(s.pairs.groups) == {"lfw"}
    np.testing.assert_array_equal(s.pairs.issame, issame)
    np.testing.assert_array_equal(s.pairs.pairs, np.arange(40).reshape(20, 2))
    np.testing.assert_array_equal(s.pairs.folds, np.repeat(np.arange(10), 2))
    decoded = cv2.imdecode(np.frombuffer(jpeg(faces[5]), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(s.images.load([5])[0], decoded)


def test_rfw_bin_folder(tmp_path):
    for r, race in enumerate(("African", "Indian")):
        write_bin(tmp_path / f"{race}_test.bin", aligned_faces(40, seed=r), [i % 2 == 0 for i in range(20)])
    s = protocols.load_rfw_bin(tmp_path)
    assert list(dict.fromkeys(s.pairs.groups)) == ["African", "Indian"]
    assert s.pairs.pairs[20].tolist() == [40, 41]  # second race's images follow the first's
    assert len(s.images) == 80


class _Payload:
    """Unpickling this would create the marker file (if the unpickler ran it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload_cls,global_name", [(_Payload, "io.open"), (_SystemPayload, "posix.system")])
@pytest.mark.parametrize("where", ["top", "in_flags", "in_object_array"])
def test_malicious_bin_is_refused_without_running_it(tmp_path, payload_cls, global_name, where):
    marker = tmp_path / "pwned"
    payload = payload_cls(marker)
    images = [jpeg(f) for f in aligned_faces(2)]
    if where == "top":
        obj = payload
    elif where == "in_flags":
        obj = (images, [True, payload])
    else:
        arr = np.empty(2, dtype=object)
        arr[0], arr[1] = True, payload
        obj = (images, arr)
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    assert not marker.exists()
    with pytest.raises(protocols.UnsafePickleError, match=f"refusing to load global '{global_name}'"):
        protocols.load_bin(path)
    assert not marker.exists()


def test_codecs_encode_only_for_latin1(tmp_path):
    path = tmp_path / "odd.bin"
    # hand-written protocol-2 pickle calling _codecs.encode('x', 'rot13')
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(protocols.UnsafePickleError, match="only allowed as encode"):
        protocols.read_bin(path)


@pytest.mark.parametrize("obj,match", [({"a": 1}, "expected a pickled"),
                                       (([b"x"] * 3, [True]), "3 images for 1 pairs"),
                                       (([b"x", 5], [True]), "image 1 is int"),
                                       (([b"x", b"y"], ["yes"]), "same-person flags")])
def test_bin_wrong_structure(tmp_path, obj, match):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=match):
        protocols.read_bin(path)


def test_bin_not_a_pickle(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable insightface .bin"):
        protocols.read_bin(path)


def test_undecodable_image_is_named(tmp_path):
    path = tmp_path / "broken.bin"
    with open(path, "wb") as handle:
        pickle.dump(([b"garbage"] * 20, [True, False] * 5), handle, protocol=2)
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.bin, image #0"):
        protocols.load_bin(path)  # the first image is decoded when the file is loaded


def test_bin_with_unaligned_images_is_refused(tmp_path):
    import cv2

    jpeg = cv2.imencode(".jpg", np.zeros((50, 50, 3), np.uint8))[1].tobytes()
    path = tmp_path / "small.bin"
    with open(path, "wb") as handle:
        pickle.dump(([jpeg] * 20, [True, False] * 5), handle, protocol=2)
    with pytest.raises(ValueError, match=r"small\.bin, image #0 is 50x50; expected an aligned 112x112 face"):
        protocols.load_bin(path)


# ----------------------------------------------------------------------------- BFW
def test_bfw_layout(bfw_dir):
    root, info = bfw_dir
    s = protocols.load_bfw(root)
    assert s.name == "bfw" and s.pairs.pairs.shape == (20, 2)
    assert list(dict.fromkeys(s.pairs.groups)) == ["AF", "BM"]
    np.testing.assert_array_equal(s.pairs.folds, np.repeat([1, 2, 3, 4, 5], 4))
    for (a, b), row, same in zip(s.pairs.pairs, info["rows"], s.pairs.issame):
        assert s.images.sources[a] == root / row[1] and s.images.sources[b] == root / row[2]
        assert same == bool(row[3])
    assert set(s.image_groups) == {"AF", "BM"}
    img = s.images.load([0])[0]
    assert img.shape == (112, 112, 3) and s.images.resized_from == {(124, 108)}


def test_bfw_table_given_directly_and_images_in_cropped_folder(tmp_path):
    root = tmp_path / "bfw"
    write_bfw(root / "bfw-cropped-aligned")
    (root / "bfw-cropped-aligned" / "bfw-v0.1.5-datatable.csv").rename(root / "bfw-v0.1.5-datatable.csv")
    s = protocols.load_bfw(root / "bfw-v0.1.5-datatable.csv")
    assert s.images.sources[0].parent.parent.parent.name == "bfw-cropped-aligned"


def test_bfw_missing_image_names_table_and_line(bfw_dir):
    root, info = bfw_dir
    (root / info["rows"][6][2]).unlink()
    first_use = next(i for i, r in enumerate(info["rows"]) if info["rows"][6][2] in (r[1], r[2]))
    with pytest.raises(FileNotFoundError, match=rf"datatable.csv:{first_use + 2}: image .* not found"):
        protocols.load_bfw(root)


def test_bfw_bad_label(bfw_dir):
    root, _ = bfw_dir
    table = root / "bfw-v0.1.5-datatable.csv"
    lines = table.read_text().splitlines()
    fields = lines[3].split(",")
    fields[3] = "maybe"
    lines[3] = ",".join(fields)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"datatable.csv:4: column 'label' must be 1/0"):
        protocols.load_bfw(root)


# ----------------------------------------------------------------------------- generic CSVs
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
    s = protocols.load_pairs_csv(tmp_path / "pairs.csv", n_folds=5)
    assert list(dict.fromkeys(s.pairs.groups)) == ["A", "B"]
    np.testing.assert_array_equal(s.pairs.folds[:10], np.repeat(np.arange(5), 2))
    assert len(s.images) == 8


def test_pairs_csv_errors(tmp_path):
    _write_faces(tmp_path / "img", 2)
    path = tmp_path / "pairs.csv"
    path.write_text("path1,path2,issame\nimg/0.jpg,img/1.jpg,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['group1', 'group2'\]"):
        protocols.load_pairs_csv(path)
    path.write_text("path1,path2,issame,group\nimg/0.jpg,img/1.jpg,1,A\nimg/0.jpg,img/9.jpg,0,A\n")
    with pytest.raises(FileNotFoundError, match=r"pairs.csv:3: image .*9.jpg not found"):
        protocols.load_pairs_csv(path)
    path.write_text("path1,path2,issame,group\nimg/0.jpg,img/1.jpg,1,A\nimg/0.jpg,img/1.jpg\n")
    with pytest.raises(ValueError, match=r"pairs.csv:3: expected 4 comma-separated fields"):
        protocols.load_pairs_csv(path)


def test_dense_csv_with_and_without_landmarks(tmp_path):
    _write_faces(tmp_path / "img", 4)
    path = tmp_path / "dense.csv"
    path.write_text("path,identity,group\n" + "".join(f"img/{i}.jpg,p{i // 2},G{i % 2}\n" for i in range(4)))
    s = protocols.load_dense_csv(path)
    assert s.pairs is None and list(s.identities) == ["p0", "p0", "p1", "p1"] and s.images.landmarks is None
    lmk = " ".join(["x1,y1,x2,y2,x3,y3,x4,y4,x5,y5"])
    coords = ",".join(f"{v:.1f}" for v in np.array([[38, 52], [74, 52], [56, 72], [42, 92], [71, 92]]).ravel())
    path.write_text(f"path,identity,group,{lmk}\n" + "".join(f"img/{i}.jpg,p{i},G,{coords}\n" for i in range(4)))
    s = protocols.load_dense_csv(path)
    assert s.images.landmarks.shape == (4, 5, 2) and s.images.landmarks[0, 1, 0] == 74
    path.write_text("path,identity,group\nimg/0.jpg,a,G\nimg/0.jpg,a,G\n")
    with pytest.raises(ValueError, match=r"dense.csv:3: image 'img/0.jpg' is listed twice"):
        protocols.load_dense_csv(path)


def test_cache_key_changes_with_the_image_list(rfw_dir):
    root, _ = rfw_dir
    a = protocols.load_rfw(root).cache_key()
    assert a == protocols.load_rfw(root).cache_key() and a.startswith("rfw-")
    lmk = root / "test" / "txts" / "Asian" / "Asian_lmk.txt"
    lines = lmk.read_text().splitlines()
    lmk.write_text("\n".join("  ".join(l.split()) for l in lines) + "\n")  # same values, other spacing
    assert protocols.load_rfw(root).cache_key() == a
    fields = lines[0].split()
    fields[2] = str(float(fields[2]) + 1.0)  # one landmark moves
    lmk.write_text("\n".join([" ".join(fields)] + lines[1:]) + "\n")
    assert protocols.load_rfw(root).cache_key() != a
