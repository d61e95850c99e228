"""InsightFace record-set layout: header record, identity records, property, groups.tsv."""
from __future__ import annotations

import numpy as np
import pytest

from fpr_plugin.data.record_set import (read_groups, read_property, read_record_set, record_paths,
                                        write_record_set)
from fpr_plugin.data.recordio import IndexedRecordReader, IndexedRecordWriter, IRHeader, pack, unpack


def read_all(directory):
    reader = IndexedRecordReader(directory / "train.idx", directory / "train.rec")
    return {key: unpack(reader.read_idx(key)) for key in reader.keys}


def test_layout_with_unsorted_labels(tmp_path, rng):
    labels = [int(c) for c in rng.integers(0, 5, size=60) if c != 3] + [4]  # class 3: no image
    payloads = [f"image {i} of class {c}".encode() for i, c in enumerate(labels)]
    groups = {c: (f"id{c}", "African" if c % 2 else "Asian") for c in range(5)}
    summary = write_record_set(tmp_path / "rs", zip(labels, payloads), groups=groups, image_size=(112, 96))
    assert (summary["num_classes"], summary["num_image"]) == (5, len(labels))
    records = read_all(tmp_path / "rs")
    n = len(labels)
    # expected layout, computed with plain loops: images grouped by class, arrival order within a class
    expected_images = [(c, p) for c in range(5) for lab, p in zip(labels, payloads) if lab == c]
    header, _ = records[0]
    assert header.flag == 2 and header.label.tolist() == [n + 1, n + 1 + 5]
    for key, (c, p) in enumerate(expected_images, 1):
        assert records[key] == (IRHeader(0, float(c), key, 0), p)
    start = 1
    for c in range(5):
        count = sum(1 for lab in labels if lab == c)
        ident, payload = records[n + 1 + c]
        assert ident.flag == 2 and ident.label.tolist() == [start, start + count] and payload == b""
        start += count
    assert len(records) == 1 + n + 5
    assert read_property(tmp_path / "rs") == (5, 112, 96)
    assert (tmp_path / "rs" / "property").read_text() == "5,112,96\n"
    assert read_groups(tmp_path / "rs") == {c: g for c, (_, g) in groups.items()}
    assert (tmp_path / "rs" / "groups.tsv").read_text().splitlines()[1] == "1\tid1\tAfrican"
    info = read_record_set(tmp_path / "rs")
    assert info.num_image == n and info.image_keys.tolist() == list(range(1, n + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rs"]  # no temporary folder left


def test_sorted_input_writes_in_one_pass_with_the_same_layout(tmp_path):
    samples = [(0, b"a"), (0, b"b"), (1, b"c"), (3, b"d")]
    write_record_set(tmp_path / "sorted", samples)
    write_record_set(tmp_path / "shuffled", [samples[2], samples[3], samples[0], samples[1]])
    assert (tmp_path / "sorted" / "train.rec").read_bytes() == (tmp_path / "shuffled" / "train.rec").read_bytes()
    assert read_groups(tmp_path / "sorted") is None


def test_writing_into_an_existing_folder_replaces_only_the_record_files(tmp_path):
    out = tmp_path / "out"
    write_record_set(out, [(0, b"x")], groups={0: ("a", "g")})
    (out / "notes.txt").write_text("keep me")
    write_record_set(out, [(0, b"y"), (1, b"z")])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "property", "train.idx", "train.rec"]
    assert read_record_set(out).num_classes == 2


def test_bad_samples_fail_and_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        write_record_set(tmp_path / "empty", [])
    with pytest.raises(ValueError, match=r"sample 1: class label must be an int >= 0, got -1"):
        write_record_set(tmp_path / "neg", [(0, b"a"), (-1, b"b")])
    with pytest.raises(ValueError, match=r"sample 0: class label must be an int >= 0, got 1.5"):
        write_record_set(tmp_path / "float", [(1.5, b"a")])
    assert list(tmp_path.iterdir()) == []


def test_plain_record_file_without_header_record(tmp_path):
    # an im2rec-style set: every key is an image, class count from property
    with IndexedRecordWriter(tmp_path / "train.idx", tmp_path / "train.rec") as writer:
        for key in range(4):
            writer.write_idx(key, pack(IRHeader(0, float(key % 2), key, 0), b"img"))
    with pytest.raises(ValueError, match="no property file"):
        read_record_set(tmp_path)
    (tmp_path / "property").write_text("2,112,112")
    info = read_record_set(tmp_path / "train.rec")
    assert (info.num_classes, info.num_image, info.image_keys.tolist()) == (2, 4, [0, 1, 2, 3])


def test_bad_property_and_missing_set(tmp_path):
    (tmp_path / "property").write_text("twelve,112")
    with pytest.raises(ValueError, match="property: expected 'num_classes,height,width'"):
        read_property(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        record_paths(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"train\.rec does not exist"):
        read_record_set(tmp_path)


def _jpeg_samples(labels):
    import cv2

    for label in labels:
        ok, data = cv2.imencode(".jpg", np.full((112, 112, 3), 40 * label, dtype=np.uint8))
        assert ok
        yield label, data.tobytes()


def test_record_set_opens_once_with_counts_dataset_and_groups(tmp_path):
    from fpr_plugin.data.dataset import RecordSet

    labels = [0, 0, 1, 2, 2, 2]
    write_record_set(tmp_path / "rs", _jpeg_samples(labels), groups={0: ("a", "G1"), 1: ("b", "G2"), 2: ("c", "G1")})
    records = RecordSet.open(tmp_path / "rs")
    assert (records.num_classes, records.num_image, len(records.dataset)) == (3, 6, 6)
    assert records.groups == {0: "G1", 1: "G2", 2: "G1"}
    assert sorted(records.dataset[i][1] for i in range(6)) == labels
    assert records.dataset.random_flip is False  # the trainer's sampler draws the flips
    assert records.resolve_counts(None, None) == (3, 6)
    assert records.resolve_counts(5, 4) == (5, 4)  # more classes than images have, fewer images: allowed
    with pytest.raises(ValueError, match=r"num_classes=2 is smaller than the 3 classes of '.*rs'"):
        records.resolve_counts(2, None)
    with pytest.raises(ValueError, match=r"num_image=7 exceeds the 6 images of '.*rs'"):
        records.resolve_counts(None, 7)


def test_record_set_open_names_the_folder_and_missing_files(tmp_path):
    from fpr_plugin.data.dataset import RecordSet

    with pytest.raises(FileNotFoundError, match=r"record folder rec='.*gone' does not exist; expected a folder with "
                                                r"train\.rec, train\.idx, property"):
        RecordSet.open(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="record folder rec=None does not exist"):
        RecordSet.open(None)
    write_record_set(tmp_path / "rs", _jpeg_samples([0, 1]))
    (tmp_path / "rs" / "property").unlink()
    with pytest.raises(FileNotFoundError, match=r"record folder '.*rs' lacks property"):
        RecordSet.open(tmp_path / "rs")
