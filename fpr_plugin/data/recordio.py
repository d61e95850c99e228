"""MXNet RecordIO without mxnet: framing, the ``IfQQ`` image header, indexed reader and writer.

Byte-compatible with ``mx.recordio.MXIndexedRecordIO`` (dmlc-core's RecordIO):

* every part starts with the magic ``0xced7230a`` and a length word whose lower 29 bits are the
  part length and upper 3 bits the continuation flag (0 whole record, 1 first, 2 middle, 3 last
  part); each part is zero-padded to a multiple of 4 bytes;
* a payload that contains the magic at a 4-byte aligned offset is split there: the magic itself is
  dropped from the stream and put back between the parts when reading;
* a record is ``struct.pack("<IfQQ", flag, label, id, id2)`` followed, when ``flag > 0``, by
  ``flag`` float32 labels, then the payload (an encoded image);
* the ``.idx`` file has one ``key<TAB>offset`` line per record.

The InsightFace record-set layout on top of it lives in :mod:`fpr_plugin.data.record_set`.
"""
from __future__ import annotations

import mmap
import numbers
import os
import struct
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from fpr_plugin.atomic import apply_umask, atomic_write, clean_stale_temporaries, fsync_dir

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, length word
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
MAX_PART_BYTES = 1 << _LENGTH_BITS
IR_FORMAT = "<IfQQ"
_IR = struct.Struct(IR_FORMAT)
IR_SIZE = _IR.size  # 24 bytes

# continuation flags of the length word
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3

__all__ = [
    "MAGIC", "IR_FORMAT", "IR_SIZE", "IRHeader", "pack", "unpack", "pack_img", "unpack_img",
    "encode_record", "IndexedRecordReader", "IndexedRecordWriter", "scan_records",
    "rebuild_index", "read_index", "RecordFormatError",
]


class RecordFormatError(ValueError):
    """A ``.rec`` or ``.idx`` file does not hold what the RecordIO format requires."""


class IRHeader(NamedTuple):
    """Header of one image record: ``flag`` = number of float labels (0: ``label`` is a scalar)."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# --------------------------------------------------------------------------- record payloads

def pack(header: IRHeader | tuple, payload: bytes) -> bytes:
    """Header + payload as one record (mxnet ``recordio.pack``): array labels set ``flag`` to their size."""
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        return _IR.pack(0, float(header.label), header.id, header.id2) + bytes(payload)
    label = np.asarray(header.label, dtype="<f4").ravel()
    return _IR.pack(label.size, 0.0, header.id, header.id2) + label.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into its header (array label when ``flag > 0``) and its payload."""
    if len(record) < IR_SIZE:
        raise RecordFormatError(
            f"record of {len(record)} bytes is shorter than the {IR_SIZE}-byte {IR_FORMAT} header")
    flag, label, id_, id2 = _IR.unpack_from(record, 0)
    if flag == 0:
        return IRHeader(flag, label, id_, id2), record[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(record) < end:
        raise RecordFormatError(
            f"record header says {flag} float labels ({4 * flag} bytes) but only "
            f"{len(record) - IR_SIZE} bytes follow the header")
    labels = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, labels, id_, id2), record[end:]


def pack_img(header: IRHeader | tuple, img: np.ndarray, quality: int = 95,
             img_fmt: str = ".jpg") -> bytes:
    """Encode a BGR (or grey) uint8 image with OpenCV and pack it (mxnet ``recordio.pack_img``)."""
    import cv2

    fmt = img_fmt.lower()
    if fmt in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(quality)]
    else:
        raise ValueError(f"img_fmt must be '.jpg', '.jpeg' or '.png', got {img_fmt!r}")
    ok, buf = cv2.imencode(fmt, img, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {np.shape(img)} as {fmt}")
    return pack(header, buf.tobytes())


def unpack_img(record: bytes, iscolor: int = -1) -> tuple[IRHeader, np.ndarray]:
    """Unpack a record and decode its image with ``cv2.imdecode`` (BGR, mxnet's default flag -1)."""
    import cv2

    header, payload = unpack(record)
    img = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), iscolor)
    if img is None:
        raise ValueError(
            f"record id {header.id}: the {len(payload)}-byte payload is not an image OpenCV can decode")
    return header, img


# --------------------------------------------------------------------------- framing

def _length_word(cflag: int, length: int) -> int:
    return (cflag << _LENGTH_BITS) | length


def encode_record(record: bytes) -> bytes:
    """Frame one record as dmlc's ``RecordIOWriter::WriteRecord`` writes it (split at aligned magics)."""
    record = bytes(record)
    size = len(record)
    if size >= MAX_PART_BYTES:
        raise ValueError(f"a record must be shorter than 2**29 bytes, got {size}")
    out = []
    start = 0  # first payload byte of the current part
    hit = record.find(_MAGIC_BYTES)
    while hit >= 0:
        if hit % 4 == 0:
            out.append(_FRAME.pack(MAGIC, _length_word(_FIRST if start == 0 else _MIDDLE, hit - start)))
            out.append(record[start:hit])  # aligned: hit - start is a multiple of 4, no padding
            start = hit + 4
            hit = record.find(_MAGIC_BYTES, start)
        else:
            hit = record.find(_MAGIC_BYTES, hit + 1)
    out.append(_FRAME.pack(MAGIC, _length_word(_LAST if start else _WHOLE, size - start)))
    out.append(record[start:])
    out.append(b"\0" * (-size % 4))
    return b"".join(out)


def _decode_at(buf, offset: int, source: Path, key=None) -> tuple[bytes, int]:
    """Read the record framed at ``offset`` of ``buf``; return it and the offset after it."""
    where = f"{source} at offset {offset}" + ("" if key is None else f" (key {key})")
    end_of_file = len(buf)
    parts: list = []
    pos = offset
    first = True
    while True:
        if pos + 8 > end_of_file:
            raise RecordFormatError(
                f"truncated record in {where}: expected an 8-byte part header at offset {pos}, "
                f"but the file ends at {end_of_file}")
        magic, word = _FRAME.unpack_from(buf, pos)
        if magic != MAGIC:
            raise RecordFormatError(
                f"bad magic 0x{magic:08x} in {where}, part at offset {pos}: expected 0x{MAGIC:08x}"
                + (" (does the .idx belong to this .rec? rebuild it with `fpr-build-rec --reindex`)"
                   if key is not None else ""))
        cflag, length = word >> _LENGTH_BITS, word & _LENGTH_MASK
        if (first and cflag not in (_WHOLE, _FIRST)) or (not first and cflag not in (_MIDDLE, _LAST)):
            expected = "0 or 1 (start of a record)" if first else "2 or 3 (continuation)"
            raise RecordFormatError(
                f"unexpected continuation flag {cflag} in {where}, part at offset {pos}: expected {expected}")
        start = pos + 8
        stop = start + length
        if stop > end_of_file:
            raise RecordFormatError(
                f"truncated record in {where}: part at offset {pos} declares {length} bytes, "
                f"but the file ends at {end_of_file}")
        parts.append(buf[start:stop])
        pos = start + ((length + 3) & ~3)
        if cflag in (_WHOLE, _LAST):
            break
        parts.append(_MAGIC_BYTES)
        first = False
    record = parts[0] if len(parts) == 1 else b"".join(parts)
    return record, min(pos, end_of_file)


def scan_records(rec_path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, record)`` for every record of a ``.rec`` file, in file order."""
    rec_path = Path(rec_path)
    if not rec_path.is_file():
        raise FileNotFoundError(f"record file {rec_path} does not exist")
    with open(rec_path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos = 0
            while pos < len(buf):
                record, nxt = _decode_at(buf, pos, rec_path)
                yield pos, record
                pos = nxt


def rebuild_index(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> int:
    """Rewrite the ``.idx`` of a ``.rec`` by scanning it; record ``i`` in file order gets key ``i``.

    That is the key of every record set written in key order (InsightFace's builders and this
    package's). Returns the number of records.
    """
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path is not None else rec_path.with_suffix(".idx")
    _clean_leftovers(idx_path, "index rebuild")
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w", encoding="ascii", newline="\n") as f:
            for key, (offset, _) in enumerate(scan_records(rec_path)):
                f.write(f"{key}\t{offset}\n")
                count += 1

    atomic_write(idx_path, write)
    return count


def _clean_leftovers(path: Path, what: str) -> None:
    """Remove (and name on stderr) the temporaries of ``path`` that a killed writer left beside it."""
    for left in clean_stale_temporaries(path.parent, only_for=path.name):
        print(f"note: removed {left}, left by an interrupted {what}", file=sys.stderr)


# --------------------------------------------------------------------------- index file

def _parse_index(text: str, idx_path: Path) -> np.ndarray:
    """``[n, 2]`` int64 (key, offset) rows of an index file's text; names the first bad line."""
    try:  # fast path: the whole file as one run of integers, two per line
        values = np.fromstring(text, dtype=np.int64, sep=" ")
        lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
        if values.size == 2 * lines:
            return values.reshape(-1, 2)
    except ValueError:
        pass
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            rows.append((int(fields[0]), int(fields[1])))
        except ValueError:
            raise RecordFormatError(
                f"{idx_path}, line {number}: expected 'key<TAB>offset' with integers, got {line!r} "
                "(rebuild the index with `fpr-build-rec --reindex`)") from None
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def read_index(idx_path: str | os.PathLike, rec_size: int | None = None,
               rec_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file into ``(keys, offsets)`` int64 arrays in file order, checking offsets."""
    idx_path = Path(idx_path)
    rows = _parse_index(idx_path.read_text(encoding="ascii", errors="replace"), idx_path)
    keys, offsets = rows[:, 0].copy(), rows[:, 1].copy()
    if not np.array_equal(keys, np.arange(keys.size)):  # keys 0..n-1 in order cannot repeat
        ordered = np.sort(keys)
        repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
        if repeated.size:
            raise RecordFormatError(f"{idx_path}: key {int(ordered[repeated[0]])} is listed more than once")
    if rec_size is not None and offsets.size:
        bad = np.flatnonzero((offsets < 0) | (offsets >= rec_size))
        if bad.size:
            i = int(bad[0])
            raise RecordFormatError(
                f"{idx_path}, line {i + 1}: key {int(keys[i])} has offset {int(offsets[i])}, "
                f"past the end of {rec_path or 'the .rec file'} ({rec_size} bytes); expected an offset "
                "below the file size (rebuild the index with `fpr-build-rec --reindex`)")
    return keys, offsets


# --------------------------------------------------------------------------- reader and writer

class IndexedRecordReader:
    """Random access to a ``.rec`` by key through its ``.idx`` (``mx.recordio.MXIndexedRecordIO`` 'r').

    The ``.rec`` is memory-mapped on first use in each process, so a reader made in the main
    process can be pickled to DataLoader workers; each opens its own map.
    """

    def __init__(self, idx_path: str | os.PathLike, rec_path: str | os.PathLike):
        self.idx_path = Path(idx_path)
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"record file {self.rec_path} does not exist")
        if not self.idx_path.is_file():
            raise FileNotFoundError(
                f"index file {self.idx_path} for {self.rec_path} does not exist; rebuild it with "
                f"`fpr-build-rec --reindex {self.rec_path}` (or fpr_plugin.data.recordio.rebuild_index)")
        self.rec_size = self.rec_path.stat().st_size
        self._keys, self._offsets = read_index(self.idx_path, self.rec_size, self.rec_path)
        # keys 0..n-1 in order (every InsightFace set) are looked up by position, others by search
        self._dense = bool(np.array_equal(self._keys, np.arange(self._keys.size)))
        if not self._dense:
            self._order = np.argsort(self._keys, kind="stable")
            self._sorted_keys = self._keys[self._order]
        self._file = None
        self._buf = None
        self._pid = None

    @property
    def keys(self) -> list[int]:
        """Record keys in ``.idx`` order."""
        return self._keys.tolist()

    def __len__(self) -> int:
        return int(self._keys.size)

    def __contains__(self, key: int) -> bool:
        return self._position(key) is not None

    def _position(self, key: int) -> int | None:
        key = int(key)
        if self._dense:
            return key if 0 <= key < self._keys.size else None
        i = int(np.searchsorted(self._sorted_keys, key))
        if i < self._sorted_keys.size and self._sorted_keys[i] == key:
            return int(self._order[i])
        return None

    def offset(self, key: int) -> int:
        """Byte offset of ``key``'s record in the ``.rec`` file."""
        pos = self._position(key)
        if pos is None:
            raise KeyError(f"key {key} is not in the index {self.idx_path}")
        return int(self._offsets[pos])

    def _buffer(self):
        if self._pid != os.getpid():  # first use in this process (or a forked worker)
            self._buf, self._file = None, None
            self._file = open(self.rec_path, "rb")
            size = os.fstat(self._file.fileno()).st_size
            self._buf = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            self._pid = os.getpid()
        return self._buf

    def header_labels(self, keys: np.ndarray) -> np.ndarray:
        """The first label of each record under ``keys`` (float64), read from the headers only.

        One vectorised pass over the 8-byte frames and 24-byte image headers, so a whole
        set is checked at the boundary without reading its images: a record whose magic,
        continuation flag or length is wrong, or whose labels do not fit in it, raises
        RecordFormatError naming the key and offset.
        """
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size == 0:
            return np.zeros(0, dtype=np.float64)
        offsets = np.asarray([self.offset(k) for k in keys], dtype=np.int64) if not self._dense else \
            self._offsets[keys].astype(np.int64)
        buf = self._buffer()
        data = np.frombuffer(buf, dtype=np.uint8) if len(buf) else np.zeros(0, dtype=np.uint8)
        head = 8 + IR_SIZE + 4  # frame, header, first float of an array label
        short = offsets + 8 + IR_SIZE > data.size
        gather = np.minimum(offsets[:, None] + np.arange(head), max(data.size - 1, 0))
        raw = data[gather] if data.size else np.zeros((keys.size, head), dtype=np.uint8)
        magic = raw[:, 0:4].copy().view("<u4")[:, 0]
        word = raw[:, 4:8].copy().view("<u4")[:, 0]
        cflag, length = word >> _LENGTH_BITS, word & _LENGTH_MASK
        flag = raw[:, 8:12].copy().view("<u4")[:, 0].astype(np.int64)
        scalar = raw[:, 12:16].copy().view("<f4")[:, 0]
        first = raw[:, 32:36].copy().view("<f4")[:, 0]
        problems = [
            (short, lambda i: f"the file ends at {data.size}, before the record's {8 + IR_SIZE}-byte header ends"),
            (magic != MAGIC, lambda i: f"bad magic 0x{int(magic[i]):08x}: expected 0x{MAGIC:08x} (does the .idx "
                                       "belong to this .rec? rebuild it with `fpr-build-rec --reindex`)"),
            (cflag > _FIRST, lambda i: f"unexpected continuation flag {int(cflag[i])}: expected 0 or 1 (start of "
                                       "a record)"),
            ((cflag == _WHOLE) & (offsets + 8 + length > data.size),
             lambda i: f"truncated record: it declares {int(length[i])} bytes, but the file ends at {data.size}"),
            ((cflag == _WHOLE) & (length < IR_SIZE + 4 * np.minimum(flag, 1 << 20)),
             lambda i: f"record of {int(length[i])} bytes cannot hold its {IR_SIZE}-byte header and "
                       f"{int(flag[i])} float labels"),
        ]
        for bad, say in problems:
            hits = np.flatnonzero(bad)
            if hits.size:
                i = int(hits[0])
                raise RecordFormatError(f"{self.rec_path} at offset {int(offsets[i])} (key {int(keys[i])}): "
                                        f"{say(i)}")
        return np.where(flag == 0, scalar, first).astype(np.float64)

    def read_at(self, offset: int, key=None) -> bytes:
        """The record framed at a byte offset."""
        return _decode_at(self._buffer(), int(offset), self.rec_path, key)[0]

    def read_idx(self, key: int) -> bytes:
        """The record stored under ``key``."""
        return self.read_at(self.offset(key), key)

    def close(self) -> None:
        """Unmap and close the ``.rec`` file (it reopens on the next read)."""
        if self._pid == os.getpid() and self._buf is not None:
            if isinstance(self._buf, mmap.mmap):
                self._buf.close()
            self._file.close()
        self._buf, self._file, self._pid = None, None, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _buf=None, _pid=None)
        return state

    def __enter__(self) -> "IndexedRecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IndexedRecordReader({str(self.idx_path)!r}, {str(self.rec_path)!r}, {len(self)} records)"


class IndexedRecordWriter:
    """Writes ``.rec`` + ``.idx`` (``mx.recordio.MXIndexedRecordIO`` 'w').

    Both files are written under temporary names and renamed on :meth:`close`; leaving the
    ``with`` block through an exception removes them instead.
    """

    def __init__(self, idx_path: str | os.PathLike, rec_path: str | os.PathLike):
        self.idx_path = Path(idx_path)
        self.rec_path = Path(rec_path)
        for path in (self.rec_path, self.idx_path):
            _clean_leftovers(path, "record writer")
        self._tmp_rec = self.rec_path.with_name(f".{self.rec_path.name}.tmp-{os.getpid()}")
        self._tmp_idx = self.idx_path.with_name(f".{self.idx_path.name}.tmp-{os.getpid()}")
        self._rec = open(self._tmp_rec, "w+b")
        self._idx = open(self._tmp_idx, "w", encoding="ascii", newline="\n")
        self._keys: set[int] = set()

    def tell(self) -> int:
        """Offset the next record will be written at."""
        return self._rec.tell()

    def write(self, record: bytes) -> int:
        """Append a record without indexing it; return its offset."""
        offset = self._rec.tell()
        self._rec.write(encode_record(record))
        return offset

    def write_idx(self, key: int, record: bytes) -> int:
        """Append a record under ``key``; return its offset."""
        key = int(key)
        if key in self._keys:
            raise ValueError(f"key {key} was already written to {self.rec_path}")
        self._keys.add(key)
        offset = self.write(record)
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def overwrite(self, offset: int, record: bytes) -> None:
        """Replace the record at ``offset`` by one whose framed size is the same."""
        framed = encode_record(record)
        end = self._rec.tell()
        self._rec.seek(offset)
        old = _FRAME.unpack(self._rec.read(8))
        if old[0] != MAGIC or old[1] >> _LENGTH_BITS != _WHOLE or 8 + ((old[1] & _LENGTH_MASK) + 3) // 4 * 4 != len(framed):
            self._rec.seek(end)
            raise ValueError(f"overwrite at offset {offset}: the new record's framed size differs from the old one")
        self._rec.seek(offset)
        self._rec.write(framed)
        self._rec.seek(end)

    def close(self) -> None:
        """Flush both files to the disk and move them to their final names.

        Two files cannot be replaced in one step: the old ``.idx`` is removed
        first, so a crash in between leaves a ``.rec`` without an index (which
        readers refuse, naming ``fpr-build-rec --reindex``), never a new
        ``.rec`` with the old index. A whole record set is swapped as one folder
        (:func:`fpr_plugin.data.record_set.write_record_set`).
        """
        if self._rec.closed:
            return
        for f in (self._rec, self._idx):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for tmp in (self._tmp_rec, self._tmp_idx):
            apply_umask(tmp)
        self.idx_path.unlink(missing_ok=True)
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)
        fsync_dir(self.rec_path.parent)

    def discard(self) -> None:
        """Close and delete the partly written files."""
        for f in (self._rec, self._idx):
            f.close()
        for p in (self._tmp_rec, self._tmp_idx):
            if p.exists():
                p.unlink()

    def __enter__(self) -> "IndexedRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
