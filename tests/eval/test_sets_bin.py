"""insightface .bin files and RFW as .bin: round trip, structure errors, the restricted unpickler."""
import os
import pickle

import cv2
import numpy as np
import pytest

from eval_fixtures import aligned_faces, jpeg, write_bin
from fpr_plugin.eval.sets import bin as binfile


@pytest.mark.parametrize("protocol,as_numpy", [(2, False), (2, True), (4, True), (5, True)])
def test_bin_round_trip(tmp_path, protocol, as_numpy):
    faces = aligned_faces(40)
    issame = [i % 2 == 0 for i in range(20)]
    path = tmp_path / "lfw.bin"
    write_bin(path, faces, issame, protocol=protocol, as_numpy=as_numpy)
    s = binfile.load_bin(path)
    assert s.name == "bin-lfw" and set(s.pairs.groups) == {"lfw"}
    np.testing.assert_array_equal(s.pairs.issame, issame)
    np.testing.assert_array_equal(s.pairs.pairs, np.arange(40).reshape(20, 2))
    np.testing.assert_array_equal(s.pairs.folds, np.repeat(np.arange(10), 2))
    decoded = cv2.imdecode(np.frombuffer(jpeg(faces[5]), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(s.images.load([5])[0], decoded)


def test_rfw_bin_folder(tmp_path):
    for r, race in enumerate(("African", "Indian")):
        write_bin(tmp_path / f"{race}_test.bin", aligned_faces(40, seed=r), [i % 2 == 0 for i in range(20)])
    s = binfile.load_rfw_bin(tmp_path)
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
    with pytest.raises(binfile.UnsafePickleError, match=f"refusing to load global '{global_name}'"):
        binfile.load_bin(path)
    assert not marker.exists()


def test_codecs_encode_only_for_latin1(tmp_path):
    path = tmp_path / "odd.bin"
    # hand-written protocol-2 pickle calling _codecs.encode('x', 'rot13')
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(binfile.UnsafePickleError, match="only allowed as encode"):
        binfile.read_bin(path)


@pytest.mark.parametrize("obj,match", [({"a": 1}, "expected a pickled"),
                                       (([b"x"] * 3, [True]), "3 images for 1 pairs"),
                                       (([b"x", 5], [True]), "image 1 is int"),
                                       (([b"x", b"y"], ["yes"]), "same-person flags")])
def test_bin_wrong_structure(tmp_path, obj, match):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match=match):
        binfile.read_bin(path)


def test_bin_not_a_pickle(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable insightface .bin"):
        binfile.read_bin(path)


def test_undecodable_image_is_named(tmp_path):
    path = tmp_path / "broken.bin"
    with open(path, "wb") as handle:
        pickle.dump(([b"garbage"] * 20, [True, False] * 5), handle, protocol=2)
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.bin, image #0"):
        binfile.load_bin(path)  # the first image is decoded when the file is loaded


def test_bin_with_unaligned_images_is_refused(tmp_path):
    import cv2

    jpeg = cv2.imencode(".jpg", np.zeros((50, 50, 3), np.uint8))[1].tobytes()
    path = tmp_path / "small.bin"
    with open(path, "wb") as handle:
        pickle.dump(([jpeg] * 20, [True, False] * 5), handle, protocol=2)
    with pytest.raises(ValueError, match=r"small\.bin, image #0 is 50x50; expected an aligned 112x112 face"):
        binfile.load_bin(path)


def test_rfw_bin_missing_races_are_noted(tmp_path, capsys):
    write_bin(tmp_path / "Asian_test.bin", aligned_faces(40), [i % 2 == 0 for i in range(20)])
    s = binfile.load_rfw_bin(tmp_path)
    assert s.notes == [f"RFW in {tmp_path} lacks the race(s) African, Caucasian, Indian (<Race>_test.bin not "
                       "found): the report covers 1 of the 4 groups, so its bias figures are not RFW's"]
    assert "fpr-eval: warning: RFW in" in capsys.readouterr().err
