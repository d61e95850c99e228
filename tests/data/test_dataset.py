"""RecordDataset and ImageFolderDataset: decoding, normalisation, flip, labels, workers, errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fpr_plugin.data.dataset import ImageFolderDataset, RecordDataset
from fpr_plugin.data.record_set import write_record_set
from fpr_plugin.data.recordio import IndexedRecordWriter, IRHeader, pack


def expected_tensor(bgr: np.ndarray, flip: bool) -> np.ndarray:
    """The documented normalisation with plain float64 loops over channels."""
    out = np.empty((3,) + bgr.shape[:2])
    for c in range(3):
        channel = bgr[:, :, 2 - c].astype(np.float64)  # RGB order
        out[c] = (channel / 255.0 - 0.5) / 0.5
    return out[:, :, ::-1] if flip else out


def png(img):
    return cv2.imencode(".png", img)[1].tobytes()


@pytest.fixture
def record_set(tmp_path, make_image):
    images = [make_image() for _ in range(8)]
    labels = [0, 0, 1, 1, 1, 2, 3, 3]
    write_record_set(tmp_path / "rs", zip(labels, map(png, images)))  # PNG: exact pixels
    return tmp_path / "rs", images, labels


def test_samples_are_normalised_rgb_chw(record_set):
    path, images, labels = record_set
    ds = RecordDataset(path, random_flip=False)
    assert (len(ds), ds.num_image, ds.num_classes) == (8, 8, 4)
    for i, (img, label) in enumerate(zip(images, labels)):
        tensor, got = ds[i]
        assert tensor.dtype == torch.float32 and tensor.shape == (3, 112, 112)
        assert got == label
        np.testing.assert_allclose(tensor.numpy(), expected_tensor(img, flip=False), atol=1e-6)


def test_random_flip_gives_both_orientations(record_set):
    path, images, _ = record_set
    ds = RecordDataset(path)
    seen = set()
    for _ in range(40):
        tensor = ds[3][0].numpy()
        flipped = np.allclose(tensor, expected_tensor(images[3], flip=True), atol=1e-6)
        assert flipped or np.allclose(tensor, expected_tensor(images[3], flip=False), atol=1e-6)
        seen.add(flipped)
    assert seen == {True, False}


def test_transform_replaces_flip_and_normalise(record_set):
    path, images, _ = record_set
    ds = RecordDataset(path, transform=lambda rgb: torch.from_numpy(rgb.copy()))
    assert np.array_equal(ds[2][0].numpy(), images[2][:, :, ::-1])


def test_dataloader_workers_read_the_same_samples(record_set):
    path, _, labels = record_set
    ds = RecordDataset(path, random_flip=False)
    ds[0]  # open the map in this process before the workers fork
    batches = {w: list(DataLoader(ds, batch_size=3, num_workers=w)) for w in (0, 2)}
    for w in (0, 2):
        assert torch.cat([b[1] for b in batches[w]]).tolist() == labels
    for (x0, _), (x2, _) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2)


def test_array_label_uses_its_first_element(tmp_path, make_image):
    with IndexedRecordWriter(tmp_path / "train.idx", tmp_path / "train.rec") as writer:
        writer.write_idx(0, pack(IRHeader(2, [3.0, 5.0], 0, 0), b""))
        writer.write_idx(1, pack(IRHeader(0, [1.0, 0.25, 9.0], 1, 0), png(make_image())))
        writer.write_idx(2, pack(IRHeader(0, 0.0, 2, 0), png(make_image())))
        for key, (a, b) in ((3, (1, 2)), (4, (2, 3))):
            writer.write_idx(key, pack(IRHeader(2, [a, b], key, 0), b""))
    ds = RecordDataset(tmp_path)  # no property: num_classes from the identity records
    assert (ds.num_classes, len(ds)) == (2, 2)
    assert [ds[0][1], ds[1][1]] == [1, 0]


def test_property_contradicting_the_header_is_refused_at_open(record_set):
    path, _, _ = record_set
    (path / "property").write_text("3,112,112\n")
    with pytest.raises(ValueError, match=r"header record \(key 0\): says 4 identities .*property says num_classes=3"):
        RecordDataset(path)


def _headerless_set(folder, labels, make_image, num_classes):
    """A plain im2rec-style set (every key an image, no header record) with a property file."""
    folder.mkdir()
    with IndexedRecordWriter(folder / "train.idx", folder / "train.rec") as writer:
        for key, label in enumerate(labels):
            writer.write_idx(key, pack(IRHeader(0, label, key, 0), png(make_image())))
    (folder / "property").write_text(f"{num_classes},112,112\n")
    return folder


def test_label_beyond_num_classes_names_key_and_value(tmp_path, make_image):
    folder = _headerless_set(tmp_path / "rs", [0, 1, 2, 3], make_image, 3)
    with pytest.raises(ValueError, match=r"train\.rec, key 3: label 3 is outside \[0, num_classes=3\)"):
        RecordDataset(folder)  # every label is checked when the set is opened, before any batch


@pytest.mark.parametrize("label", [float("nan"), float("inf"), 1.5])
def test_non_integer_label_names_key_and_value(tmp_path, make_image, label):
    folder = _headerless_set(tmp_path / "rs", [0, label], make_image, 3)
    with pytest.raises(ValueError, match=r"train\.rec, key 1: label .* expected an integer class id in \[0, 3\)"):
        RecordDataset(folder)


def test_undecodable_image_names_the_key(tmp_path, make_image):
    write_record_set(tmp_path / "rs", [(0, png(make_image())), (1, b"\xff\xd8 broken jpeg")])
    ds = RecordDataset(tmp_path / "rs")
    ds[0]
    with pytest.raises(ValueError, match=r"train\.rec, key 2: 14 bytes that OpenCV cannot decode"):
        ds[1]


def test_missing_index_offers_the_rebuild(record_set):
    path, _, _ = record_set
    (path / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.idx .* does not exist; rebuild it with `fpr-build-rec --reindex"):
        RecordDataset(path)


def test_image_folder_dataset(tmp_path, make_image):
    images = {}
    for group, identity, name in [("g1", "b", "1.png"), ("g1", "a", "2.png"), ("g0", "z", "3.png"),
                                  ("g1", "a", "1.png")]:
        folder = tmp_path / "src" / group / identity
        folder.mkdir(parents=True, exist_ok=True)
        images[(group, identity, name)] = make_image()
        cv2.imwrite(str(folder / name), images[(group, identity, name)])
    ds = ImageFolderDataset(tmp_path / "src", random_flip=False)
    assert ds.identities == [("z", "g0"), ("a", "g1"), ("b", "g1")] and ds.num_classes == 3
    order = [("g0", "z", "3.png"), ("g1", "a", "1.png"), ("g1", "a", "2.png"), ("g1", "b", "1.png")]
    for i, key in enumerate(order):
        tensor, label = ds[i]
        assert label == [0, 1, 1, 2][i]
        np.testing.assert_allclose(tensor.numpy(), expected_tensor(images[key], flip=False), atol=1e-6)


def test_check_labels_false_reads_only_the_first_header(tmp_path, make_image):
    """check_labels=False (huge sets on slow storage) defers a bad label to the batch that reads it."""
    folder = _headerless_set(tmp_path / "rs", [0, 1, 7], make_image, 3)
    with pytest.raises(ValueError, match=r"key 2: label 7 is outside"):
        RecordDataset(folder)
    ds = RecordDataset(folder, check_labels=False)
    assert ds[1][1] == 1
    with pytest.raises(ValueError, match=r"key 2: label 7 is outside \[0, num_classes=3\)"):
        ds[2]
