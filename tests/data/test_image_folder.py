"""scan_image_folder: both layouts, class ids, skipped files, bad trees."""
from __future__ import annotations

import pytest

from fpr_plugin.data.image_folder import scan_image_folder


def touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_identity_layout(tmp_path):
    touch(tmp_path, "b/2.JPG", "b/1.png", "a/x.jpeg", "a/readme.txt", "empty/.hidden.jpg", ".git/y.jpg")
    folder = scan_image_folder(tmp_path)
    assert folder.identities == [("a", ""), ("b", "")]
    assert [(p.relative_to(tmp_path).as_posix(), c) for p, c in folder.images] == [
        ("a/x.jpeg", 0), ("b/1.png", 1), ("b/2.JPG", 1)]


def test_group_layout(tmp_path):
    touch(tmp_path, "Indian/m.02/1.jpg", "African/m.01/1.jpg", "African/m.00/1.jpg")
    (tmp_path / "African" / "m.03").mkdir()  # an identity without images is left out
    folder = scan_image_folder(tmp_path)
    assert folder.groups() == {0: ("m.00", "African"), 1: ("m.01", "African"), 2: ("m.02", "Indian")}
    assert folder.num_classes == 3


def test_bad_trees(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="found no sub-folders"):
        scan_image_folder(tmp_path)
    touch(tmp_path, "g/id/1.jpg", "g/stray.jpg")
    with pytest.raises(ValueError, match=r"mixed layout, this group folder holds images"):
        scan_image_folder(tmp_path)
    touch(tmp_path / "t2", "a/readme.txt")
    with pytest.raises(ValueError, match="no images"):
        scan_image_folder(tmp_path / "t2")
