"""InsightFace record sets: ``train.rec`` + ``train.idx`` + ``property`` (+ optional ``groups.tsv``).

Layout (what InsightFace's builders write and arcface_torch's ``MXFaceDataset`` reads):

* key 0: header record, ``flag == 2``, label ``[first_identity_key, end_identity_key]``; the images
  are keys ``1 .. first_identity_key - 1``;
* keys ``1..num_image``: one image each, scalar label = class id (0..num_classes-1), ``id`` = key;
* keys ``num_image + 1 + c``: identity record of class ``c``, ``flag == 2``, label = the
  ``[first, end)`` image keys of that class (its images are contiguous);
* ``property``: ``num_classes,H,W``; ``groups.tsv``: ``class_id<TAB>identity<TAB>group``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from fpr_plugin.data.recordio import (IndexedRecordReader, IndexedRecordWriter, IRHeader, pack,
                                      unpack)

REC_NAME, IDX_NAME, PROPERTY_NAME, GROUPS_NAME = "train.rec", "train.idx", "property", "groups.tsv"

__all__ = ["write_record_set", "read_groups", "read_property", "read_record_set", "RecordSetInfo",
           "record_paths"]


@dataclass(frozen=True)
class RecordSetInfo:
    """What a record set holds: image keys, class count, image size."""

    num_classes: int
    num_image: int
    image_size: tuple[int, int]
    image_keys: np.ndarray  # int64 keys of the image records


def record_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(rec, idx)`` of a record-set folder, or of a ``.rec`` file with its ``.idx`` beside it."""
    path = Path(path)
    if path.suffix == ".rec":
        return path, path.with_suffix(".idx")
    if not path.is_dir():
        raise FileNotFoundError(f"record set {path} does not exist (expected a folder with {REC_NAME}, "
                                f"{IDX_NAME} and {PROPERTY_NAME}, or a .rec file)")
    return path / REC_NAME, path / IDX_NAME


def read_property(record_dir: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(num_classes, H, W)`` from the ``property`` file, or None when there is none."""
    path = Path(record_dir) / PROPERTY_NAME
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").strip()
    fields = text.split(",")
    if len(fields) != 3 or not all(f.strip().isdigit() for f in fields):
        raise ValueError(f"{path}: expected 'num_classes,height,width' (e.g. '1000,112,112'), got {text!r}")
    num_classes, height, width = (int(f) for f in fields)
    return num_classes, height, width


def read_groups(record_dir: str | os.PathLike) -> dict[int, str] | None:
    """Class id -> group name from ``groups.tsv`` beside the records, or None when there is none."""
    path = Path(record_dir) / GROUPS_NAME
    if not path.is_file():
        return None
    groups: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            raise ValueError(f"{path}, line {number}: expected 'class_id<TAB>identity<TAB>group', got {line!r}")
        groups[int(fields[0])] = fields[2].strip()
    return groups


def read_record_set(path: str | os.PathLike, reader: IndexedRecordReader | None = None) -> RecordSetInfo:
    """Image keys, ``num_classes``, ``num_image`` and image size of a record set.

    With an InsightFace header record (key 0, ``flag > 0``) the images are keys
    ``1 .. label[0] - 1``; otherwise every key is an image (plain ``im2rec`` output).
    ``num_classes`` comes from ``property``, else from the identity records.
    """
    rec, idx = record_paths(path)
    reader = reader or IndexedRecordReader(idx, rec)
    prop = read_property(rec.parent)
    keys = np.asarray(reader.keys, dtype=np.int64)
    num_classes = prop[0] if prop else None
    if 0 in reader:
        header, _ = unpack(reader.read_idx(0))
        if header.flag > 0:
            first_identity, end_identity = int(header.label[0]), int(header.label[1])
            keys = np.arange(1, first_identity, dtype=np.int64)
            if num_classes is None:
                num_classes = end_identity - first_identity
    if num_classes is None:
        raise ValueError(f"{rec.parent}: no {PROPERTY_NAME} file and no InsightFace header record at key 0; "
                         "cannot tell num_classes (write a 'num_classes,112,112' property file)")
    image_size = (prop[1], prop[2]) if prop else (112, 112)
    return RecordSetInfo(num_classes=num_classes, num_image=int(keys.size), image_size=image_size,
                         image_keys=keys)


def _identity_ranges(labels: np.ndarray, num_classes: int, first_key: int) -> np.ndarray:
    """``[num_classes, 2]`` first/end image keys per class, for images sorted by class."""
    starts = np.searchsorted(labels, np.arange(num_classes), side="left") + first_key
    ends = np.searchsorted(labels, np.arange(num_classes), side="right") + first_key
    return np.stack([starts, ends], axis=1)


def _write_layout(directory: Path, samples: Iterable[tuple[int, bytes]]) -> tuple[int, int]:
    """Write ``train.rec``/``train.idx`` in ``directory``; return ``(num_classes, num_image)``."""
    rec, idx = directory / REC_NAME, directory / IDX_NAME
    labels: list[int] = []
    offsets: list[int] = []
    placeholder = pack(IRHeader(2, [0.0, 0.0], 0, 0), b"")
    in_order = True
    with IndexedRecordWriter(idx, rec) as writer:
        writer.write_idx(0, placeholder)
        for number, sample in enumerate(samples):
            label, payload = sample
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise ValueError(f"sample {number}: class label must be an int >= 0, got {label!r}")
            key = len(labels) + 1
            in_order = in_order and (not labels or label >= labels[-1])
            offsets.append(writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), payload)))
            labels.append(int(label))
        if not labels:
            raise ValueError("no samples: a record set needs at least one image")
        if in_order:
            num_classes, num_image = _finish_layout(writer, np.asarray(labels, dtype=np.int64))
    if not in_order:  # rewrite the images sorted by class so that each identity's keys are contiguous
        num_classes, num_image = _sort_by_class(directory, np.asarray(labels, dtype=np.int64), offsets)
    return num_classes, num_image


def _finish_layout(writer: IndexedRecordWriter, labels: np.ndarray) -> tuple[int, int]:
    """Append the identity records and fill in the header record (images already sorted by class)."""
    num_image, num_classes = int(labels.size), int(labels.max()) + 1
    first_identity = num_image + 1
    for c, (start, end) in enumerate(_identity_ranges(labels, num_classes, first_key=1)):
        key = first_identity + c
        writer.write_idx(key, pack(IRHeader(2, [float(start), float(end)], key, 0), b""))
    header = pack(IRHeader(2, [float(first_identity), float(first_identity + num_classes)], 0, 0), b"")
    writer.overwrite(0, header)
    return num_classes, num_image


def _sort_by_class(directory: Path, labels: np.ndarray, offsets: list[int]) -> tuple[int, int]:
    rec, idx = directory / REC_NAME, directory / IDX_NAME
    arrival = IndexedRecordReader(idx, rec)
    order = np.argsort(labels, kind="stable")
    spool_rec, spool_idx = directory / "arrival.rec", directory / "arrival.idx"
    os.replace(rec, spool_rec)
    os.replace(idx, spool_idx)
    arrival.rec_path, arrival.idx_path = spool_rec, spool_idx
    placeholder = pack(IRHeader(2, [0.0, 0.0], 0, 0), b"")
    try:
        with IndexedRecordWriter(idx, rec) as writer:
            writer.write_idx(0, placeholder)
            for key, i in enumerate(order, 1):
                _, payload = unpack(arrival.read_at(offsets[i]))
                writer.write_idx(key, pack(IRHeader(0, float(labels[i]), key, 0), payload))
            result = _finish_layout(writer, labels[order])
    finally:
        arrival.close()
        spool_rec.unlink()
        spool_idx.unlink()
    return result


def write_record_set(out_dir: str | os.PathLike, samples: Iterable[tuple[int, bytes]], *,
                     image_size: tuple[int, int] = (112, 112),
                     groups: Mapping[int, tuple[str, str]] | None = None) -> dict:
    """Write ``(class label, encoded image)`` samples as an InsightFace record set in ``out_dir``.

    Files are written in a temporary folder and moved into ``out_dir`` when complete (replacing
    an earlier record set there). ``groups`` maps class id -> ``(identity, group)`` for
    ``groups.tsv``; it is read after ``samples`` is exhausted, so a caller may fill it while the
    samples stream. Returns ``num_classes``, ``num_image`` and the file paths.
    """
    out_dir = Path(out_dir)
    height, width = (int(v) for v in image_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        num_classes, num_image = _write_layout(tmp, samples)
        (tmp / PROPERTY_NAME).write_text(f"{num_classes},{height},{width}\n", encoding="utf-8")
        names = [REC_NAME, IDX_NAME, PROPERTY_NAME]
        if groups is not None:
            lines = []
            for class_id in sorted(groups):
                identity, group = groups[class_id]
                if "\t" in f"{identity}{group}" or "\n" in f"{identity}{group}":
                    raise ValueError(f"groups[{class_id}] = {groups[class_id]!r}: names may not hold tabs or newlines")
                lines.append(f"{int(class_id)}\t{identity}\t{group}\n")
            (tmp / GROUPS_NAME).write_text("".join(lines), encoding="utf-8")
            names.append(GROUPS_NAME)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
        else:
            stale = out_dir / GROUPS_NAME
            if groups is None and stale.exists():
                stale.unlink()
            for name in names:
                os.replace(tmp / name, out_dir / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "num_classes": num_classes,
        "num_image": num_image,
        "path": str(out_dir),
        "rec": str(out_dir / REC_NAME),
        "idx": str(out_dir / IDX_NAME),
        "property": str(out_dir / PROPERTY_NAME),
        "groups": str(out_dir / GROUPS_NAME) if groups is not None else None,
    }
