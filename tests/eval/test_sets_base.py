"""What a loaded set knows about itself: image sizes read from the headers when it is made (EXIF turns included),
the resize note, .bin sizes checked for every image, a file changed after loading."""
import os
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from eval_fixtures import aligned_faces, face_photo, jpeg
from fpr_plugin.eval.sets import EvalSet, ImageSet, load_bin, load_dense_csv


def _dense_csv(folder, images):
    """A dense CSV over ``images`` (BGR arrays), two identities per group."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,identity,group"]
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i}.png"), img)
        rows.append(f"{i}.png,p{i // 2},G{i % 2}")
    (folder / "dense.csv").write_text("\n".join(rows) + "\n")
    return folder / "dense.csv"


def test_sizes_come_from_the_headers_before_any_image_is_decoded(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = [face_photo(rng, i, (112, 112)) for i in range(4)] + [face_photo(rng, 9, (90, 70))] * 2
    path = _dense_csv(tmp_path / "d", images)
    decoded = []
    monkeypatch.setattr(ImageSet, "_decode", lambda self, i: decoded.append(i))
    s = load_dense_csv(path)
    assert decoded == [], "sizes are read from the headers, not by decoding"
    assert s.images.resized_from == {(90, 70)}
    assert s.notes == ["images of size 70x90 were resized to 112x112 without alignment"]


def test_exif_turned_images_get_the_decoded_size(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "d"
    path = _dense_csv(folder, [face_photo(rng, i, (112, 112)) for i in range(4)])
    exif = Image.Exif()
    exif[0x0112] = 6  # turned by 90 degrees: cv2 decodes it as 100 wide, 60 high
    Image.fromarray(face_photo(rng, 3, (100, 60))[..., ::-1]).save(folder / "3.png", exif=exif.tobytes())
    s = load_dense_csv(path)
    assert cv2.imread(str(folder / "3.png")).shape[:2] == (60, 100)
    assert s.images.resized_from == {(60, 100)}
    assert "100x60" in s.notes[0]
    expected = cv2.resize(cv2.imread(str(folder / "3.png")), (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(s.images.load([3])[0], expected)


def test_set_of_aligned_faces_has_no_note(tmp_path):
    s = load_dense_csv(_dense_csv(tmp_path / "d", aligned_faces(4)))
    assert s.images.resized_from == frozenset() and s.notes == []


def test_note_is_kept_once_when_the_set_is_rebuilt(tmp_path):
    s = load_dense_csv(_dense_csv(tmp_path / "d", aligned_faces(2) + [np.zeros((50, 60, 3), np.uint8)] * 2))
    again = EvalSet(s.name, s.images, identities=s.identities, image_groups=s.image_groups, notes=list(s.notes))
    assert again.notes == s.notes and len(s.notes) == 1


def test_image_changed_after_loading_is_named(tmp_path):
    path = _dense_csv(tmp_path / "d", aligned_faces(4))
    s = load_dense_csv(path)
    cv2.imwrite(str(tmp_path / "d" / "2.png"), np.zeros((80, 80, 3), np.uint8))
    with pytest.raises(ValueError, match=r"2\.png decodes to 80x80, a size its header did not give"):
        s.images.load([2])
    np.testing.assert_array_equal(s.images.load([1])[0], cv2.imread(str(tmp_path / "d" / "1.png")))


def test_every_bin_image_is_size_checked_when_loaded(tmp_path):
    images = [jpeg(f) for f in aligned_faces(20)]
    images[13] = jpeg(np.zeros((50, 50, 3), np.uint8))
    path = tmp_path / "late.bin"
    with open(path, "wb") as handle:
        pickle.dump((images, [True, False] * 5), handle, protocol=2)
    with pytest.raises(ValueError, match=r"late\.bin, image #13 is 50x50; expected an aligned 112x112 face"):
        load_bin(path)


def test_unreadable_header_falls_back_to_decoding(tmp_path, monkeypatch):
    from fpr_plugin.eval.sets import base

    path = _dense_csv(tmp_path / "d", aligned_faces(2) + [np.zeros((64, 48, 3), np.uint8)] * 2)
    monkeypatch.setattr(base, "_header_size", lambda source: None)
    s = load_dense_csv(path)
    assert s.images.resized_from == {(64, 48)}


def test_missing_image_of_a_hand_made_set_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found: .*gone.jpg"):
        ImageSet([tmp_path / "gone.jpg"])
    assert not os.path.exists(tmp_path / "gone.jpg")
