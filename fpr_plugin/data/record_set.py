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

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from fpr_plugin.atomic import partial_folder, replace_folder
from fpr_plugin.data.recordio import (IndexedRecordReader, IndexedRecordWriter, IRHeader,
                                      RecordFormatError, pack, unpack)
from fpr_plugin.face_input import IMAGE_SIZE
from fpr_plugin.text_files import read_text

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


def _read_text(path: Path, expected: str) -> str:
    """A small text file's contents; RecordFormatError naming it when it is not UTF-8 text."""
    return read_text(path, expected, RecordFormatError)


def read_property(record_dir: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(num_classes, H, W)`` from the ``property`` file, or None when there is none."""
    path = Path(record_dir) / PROPERTY_NAME
    if not path.is_file():
        return None
    expected = "'num_classes,height,width' (e.g. '1000,112,112')"
    text = _read_text(path, expected).strip()
    fields = text.split(",")
    if len(fields) != 3 or not all(f.strip().isdigit() and len(f.strip()) < 10 for f in fields):
        raise RecordFormatError(f"{path}: expected {expected}, got {text[:80]!r}")
    num_classes, height, width = (int(f) for f in fields)
    if num_classes < 1 or height < 1 or width < 1:
        raise RecordFormatError(f"{path}: expected positive numbers in {expected}, got {text!r}")
    return num_classes, height, width


def read_groups(record_dir: str | os.PathLike) -> dict[int, str] | None:
    """Class id -> group name from ``groups.tsv`` beside the records, or None when there is none."""
    path = Path(record_dir) / GROUPS_NAME
    if not path.is_file():
        return None
    groups: dict[int, str] = {}
    expected = "'class_id<TAB>identity<TAB>group' lines"
    for number, line in enumerate(_read_text(path, expected).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            raise RecordFormatError(f"{path}, line {number}: expected 'class_id<TAB>identity<TAB>group', "
                                    f"got {line[:80]!r}")
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
            first_identity, end_identity = _check_header(header, keys, rec, idx, num_classes)
            keys = np.arange(1, first_identity, dtype=np.int64)
            if num_classes is None:
                num_classes = end_identity - first_identity
    if num_classes is None:
        raise ValueError(f"{rec.parent}: no {PROPERTY_NAME} file and no InsightFace header record at key 0; "
                         "cannot tell num_classes (write a 'num_classes,112,112' property file)")
    image_size = (prop[1], prop[2]) if prop else (IMAGE_SIZE, IMAGE_SIZE)
    return RecordSetInfo(num_classes=num_classes, num_image=int(keys.size), image_size=image_size,
                         image_keys=keys)


def _check_header(header: IRHeader, keys: np.ndarray, rec: Path, idx: Path,
                  num_classes: int | None) -> tuple[int, int]:
    """``(first_identity_key, end_identity_key)`` of a header record, checked against the index.

    The images are keys ``1 .. first - 1``: every one of them must be in the
    ``.idx`` (so a header claiming more images than the files hold is refused
    before anything is allocated for them).
    """
    where = f"{rec}, header record (key 0)"
    label = np.asarray(header.label, dtype=np.float64).ravel()
    if header.flag != 2 or label.size != 2:
        raise RecordFormatError(f"{where}: flag {header.flag}; expected flag 2 with the label "
                                "[first_identity_key, end_identity_key] of an InsightFace record set")
    if not all(math.isfinite(v) and float(v).is_integer() for v in label):
        raise RecordFormatError(f"{where}: label {label.tolist()} is not two finite integers "
                                "[first_identity_key, end_identity_key]")
    first, end = int(label[0]), int(label[1])
    if not 1 <= first <= end:
        raise RecordFormatError(f"{where}: label [{first}, {end}]; expected 1 <= first_identity_key <= "
                                "end_identity_key")
    num_images = first - 1
    present = int(np.count_nonzero((keys >= 1) & (keys < first)))
    if present != num_images:
        raise RecordFormatError(
            f"{where}: says {num_images} images (keys 1..{first - 1}), but {idx} lists {present} of those keys "
            f"({keys.size} keys in all); the header does not belong to this index (rebuild the set with "
            "fpr-build-rec, or the index with `fpr-build-rec --reindex`)")
    if num_classes is not None and end - first != num_classes:
        raise RecordFormatError(
            f"{where}: says {end - first} identities (keys {first}..{end - 1}), but {rec.parent / PROPERTY_NAME} "
            f"says num_classes={num_classes}; expected the two to agree")
    return first, end


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


def _carry_other_files(old: Path, new: Path, record_names: set[str]) -> None:
    """Hard-link (else copy) the files of ``old`` that are not part of a record set into ``new``."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in old.iterdir():
        if entry.name in record_names:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, copy_function=link, symlinks=True)
        else:
            link(str(entry), str(new / entry.name))


def _umask() -> int:
    from fpr_plugin.atomic import current_umask

    return current_umask()


def write_record_set(out_dir: str | os.PathLike, samples: Iterable[tuple[int, bytes]], *,
                     image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
                     groups: Mapping[int, tuple[str, str]] | None = None) -> dict:
    """Write ``(class label, encoded image)`` samples as an InsightFace record set in ``out_dir``.

    Files are written in a temporary folder and moved into ``out_dir`` when complete (replacing
    an earlier record set there in one folder swap; other files in ``out_dir`` are carried over). ``groups`` maps class id -> ``(identity, group)`` for
    ``groups.tsv``; it is read after ``samples`` is exhausted, so a caller may fill it while the
    samples stream. Returns ``num_classes``, ``num_image`` and the file paths.
    """
    out_dir = Path(out_dir)
    height, width = (int(v) for v in image_size)
    tmp = partial_folder(out_dir, "build")
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
        for name in names:
            (tmp / name).chmod(0o666 & ~_umask())
        if out_dir.is_dir():
            _carry_other_files(out_dir, tmp, set(names) | {GROUPS_NAME})
        replace_folder(tmp, out_dir)  # one rename (two, with recovery, when replacing a set)
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
