"""RecordIO framing, headers, indexed reader/writer, scanner and index rebuild."""
from __future__ import annotations

import multiprocessing
import pickle
import struct

import numpy as np
import pytest

from fpr_plugin.data.recordio import (MAGIC, IndexedRecordReader, IndexedRecordWriter, IRHeader,
                                      RecordFormatError, encode_record, pack, pack_img, rebuild_index,
                                      scan_records, unpack, unpack_img)

M = struct.pack("<I", MAGIC)


def frame(cflag: int, data: bytes) -> bytes:
    """One part written out by hand from the format description."""
    return M + struct.pack("<I", (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


@pytest.mark.parametrize("payload, expected", [
    (b"", frame(0, b"")),
    (b"abc", frame(0, b"abc")),
    (b"abcd", frame(0, b"abcd")),
    (b"x" + M + b"yz", frame(0, b"x" + M + b"yz")),  # magic at an unaligned offset: not split
    (b"abcd" + M + b"efghi", M + struct.pack("<I", (1 << 29) | 4) + b"abcd" + frame(3, b"efghi")),
    (M, M + struct.pack("<I", 1 << 29) + M + struct.pack("<I", 3 << 29)),
    (b"ab00" + M + M + b"z", M + struct.pack("<I", (1 << 29) | 4) + b"ab00"
     + M + struct.pack("<I", 2 << 29) + frame(3, b"z")),
])
def test_encode_record_matches_the_format_by_hand(payload, expected):
    assert encode_record(payload) == expected


def test_pack_headers_match_struct_by_hand():
    assert pack(IRHeader(0, 3.0, 7, 9), b"img") == struct.pack("<IfQQ", 0, 3.0, 7, 9) + b"img"
    # an array label sets flag to its size and label to 0, the floats precede the payload
    assert pack(IRHeader(0, [1.5, -2.0], 7, 0), b"img") == (
        struct.pack("<IfQQ", 2, 0.0, 7, 0) + struct.pack("<2f", 1.5, -2.0) + b"img")
    header, payload = unpack(pack((5, 4.0, 1, 2), b"\x00\x01"))  # scalar label: flag forced to 0
    assert header == IRHeader(0, 4.0, 1, 2) and payload == b"\x00\x01"
    header, payload = unpack(pack(IRHeader(0, np.array([3, 4, 5]), 11, 12), b"rest"))
    assert header.flag == 3 and header.label.tolist() == [3.0, 4.0, 5.0] and payload == b"rest"
    assert header.label.dtype == np.float32


def test_pack_img_round_trip(make_image):
    img = make_image()
    header, decoded = unpack_img(pack_img(IRHeader(0, 2.0, 3, 0), img, quality=3, img_fmt=".png"))
    assert header.label == 2.0 and np.array_equal(decoded, img)  # PNG is lossless
    header, decoded = unpack_img(pack_img(IRHeader(0, 2.0, 3, 0), img, quality=95))
    assert np.abs(decoded.astype(int) - img).mean() < 3  # JPEG: close, not equal
    with pytest.raises(ValueError, match="not an image OpenCV can decode"):
        unpack_img(pack(IRHeader(0, 1.0, 5, 0), b"not an image"))


def random_payloads(rng, count):
    """Small payloads, with the magic spliced in at aligned and unaligned offsets in some of them."""
    payloads = []
    for i in range(count):
        data = bytearray(rng.integers(0, 256, size=int(rng.integers(0, 40)), dtype=np.uint8).tobytes())
        if i % 7 == 0:
            at = int(rng.integers(0, len(data) + 1))
            data[at:at] = M
        payloads.append(bytes(data))
    return payloads


def write_set(tmp_path, records):
    idx, rec = tmp_path / "t.idx", tmp_path / "t.rec"
    with IndexedRecordWriter(idx, rec) as writer:
        for key, record in enumerate(records):
            writer.write_idx(key, record)
    return idx, rec


def test_round_trip_of_ten_thousand_records_with_magics_and_empty_payloads(tmp_path, rng):
    records = random_payloads(rng, 10_500) + [b"", M, M * 3]
    assert sum(M in r for r in records) > 1000 and b"" in records
    idx, rec = write_set(tmp_path, records)
    reader = IndexedRecordReader(idx, rec)
    assert reader.keys == list(range(len(records)))
    assert [reader.read_idx(k) for k in reversed(reader.keys)] == records[::-1]
    assert [r for _, r in scan_records(rec)] == records
    # the .rec is the concatenation of the framed records, the .idx their offsets
    framed = [encode_record(r) for r in records]
    assert rec.read_bytes() == b"".join(framed)
    offsets = np.cumsum([0] + [len(f) for f in framed[:-1]])
    assert idx.read_text() == "".join(f"{k}\t{o}\n" for k, o in enumerate(offsets))


def test_rebuild_index_restores_the_written_index(tmp_path, rng):
    idx, rec = write_set(tmp_path, random_payloads(rng, 300))
    original = idx.read_text()
    idx.unlink()
    with pytest.raises(FileNotFoundError, match="--reindex"):
        IndexedRecordReader(idx, rec)
    assert rebuild_index(rec) == 300
    assert idx.read_text() == original


def test_sparse_keys_and_unknown_key(tmp_path):
    idx, rec = tmp_path / "s.idx", tmp_path / "s.rec"
    with IndexedRecordWriter(idx, rec) as writer:
        for key in (40, 3, 17):
            writer.write_idx(key, f"record {key}".encode())
        with pytest.raises(ValueError, match="key 3 was already written"):
            writer.write_idx(3, b"again")
    reader = IndexedRecordReader(idx, rec)
    assert reader.keys == [40, 3, 17] and 17 in reader and 4 not in reader
    assert reader.read_idx(3) == b"record 3" and reader.read_idx(40) == b"record 40"
    with pytest.raises(KeyError, match="key 4"):
        reader.read_idx(4)


def _read_in_child(reader, key, queue):
    queue.put(reader.read_idx(key))


def test_reader_pickles_and_reopens_in_a_forked_process(tmp_path, rng):
    records = random_payloads(rng, 50)
    reader = IndexedRecordReader(*write_set(tmp_path, records))
    assert reader.read_idx(3) == records[3]  # map opened in this process
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read_idx(49) == records[49]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, 7, queue))
    child.start()
    assert queue.get(timeout=60) == records[7]
    child.join(60)
    assert child.exitcode == 0


def test_writer_leaves_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedRecordWriter(tmp_path / "x.idx", tmp_path / "x.rec") as writer:
            writer.write_idx(0, b"abc")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_requires_the_same_framed_size(tmp_path):
    with IndexedRecordWriter(tmp_path / "o.idx", tmp_path / "o.rec") as writer:
        writer.write_idx(0, b"1234")
        writer.write_idx(1, b"tail")
        writer.overwrite(0, b"abcd")
        with pytest.raises(ValueError, match="framed size"):
            writer.overwrite(0, b"abcdefgh")
    reader = IndexedRecordReader(tmp_path / "o.idx", tmp_path / "o.rec")
    assert reader.read_idx(0) == b"abcd" and reader.read_idx(1) == b"tail"


# ---------------------------------------------------------------- bad input: named file, key, offset

def test_missing_rec_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.rec"):
        IndexedRecordReader(tmp_path / "nothere.idx", tmp_path / "nothere.rec")


def test_bad_magic_names_file_key_and_offset(tmp_path):
    idx, rec = write_set(tmp_path, [b"abcdefgh", b"ijkl"])
    idx.write_text("0\t0\n1\t4\n")  # key 1 points into the middle of record 0
    with pytest.raises(RecordFormatError, match=r"bad magic 0x00000008 in .*t\.rec at offset 4 \(key 1\).*expected 0xced7230a"):
        IndexedRecordReader(idx, rec).read_idx(1)


def test_truncated_record_is_reported_with_its_offset(tmp_path):
    idx, rec = write_set(tmp_path, [b"a" * 16, b"b" * 64])
    rec.write_bytes(rec.read_bytes()[:-20])
    reader = IndexedRecordReader(idx, rec)
    assert reader.read_idx(0) == b"a" * 16
    with pytest.raises(RecordFormatError, match=r"truncated record in .*t\.rec at offset 24 \(key 1\).*64 bytes"):
        reader.read_idx(1)
    with pytest.raises(RecordFormatError, match="truncated record .* offset 24"):
        list(scan_records(rec))


def test_index_offset_past_the_end(tmp_path):
    idx, rec = write_set(tmp_path, [b"abcd", b"efgh"])
    idx.write_text("0\t0\n1\t9999\n")
    with pytest.raises(RecordFormatError, match=r"t\.idx, line 2: key 1 has offset 9999, past the end .*24 bytes"):
        IndexedRecordReader(idx, rec)


def test_malformed_index_line(tmp_path):
    idx, rec = write_set(tmp_path, [b"abcd"])
    idx.write_text("0\t0\nbroken line\n")
    with pytest.raises(RecordFormatError, match=r"t\.idx, line 2: expected 'key<TAB>offset'"):
        IndexedRecordReader(idx, rec)


def test_record_pointing_at_a_continuation_part(tmp_path):
    idx, rec = write_set(tmp_path, [b"abcd" + M + b"efgh"])
    idx.write_text("0\t12\n")  # the second part (flag 3) of the split record
    with pytest.raises(RecordFormatError, match="continuation flag 3 .* offset 12"):
        IndexedRecordReader(idx, rec).read_idx(0)


def test_short_header_and_label_array(tmp_path):
    with pytest.raises(RecordFormatError, match="shorter than the 24-byte"):
        unpack(b"\0" * 10)
    with pytest.raises(RecordFormatError, match="3 float labels"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8)


def test_index_with_a_repeated_key(tmp_path):
    idx, rec = write_set(tmp_path, [b"abcd", b"efgh"])
    idx.write_text("1\t0\n\n1\t12\n")
    with pytest.raises(RecordFormatError, match=r"t\.idx: key 1 is listed more than once"):
        IndexedRecordReader(idx, rec)
    idx.write_text("1\t12\n\n0\t0\n")  # blank lines and any key order are fine
    assert IndexedRecordReader(idx, rec).read_idx(1) == b"efgh"


def test_header_labels_agree_with_unpacking_every_record(tmp_path, rng):
    """The vectorised header scan gives the first label of each record, as unpacking it does (loop reference)."""
    records = []
    for i in range(400):
        payload = bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8)) + (M if i % 7 == 0 else b"")
        if i % 3 == 0:  # array label (flag > 0): the first float is the class
            label = rng.normal(size=int(rng.integers(1, 4))).astype(np.float32)
        else:
            label = float(np.float32(rng.normal() * 1e3))
        records.append(pack(IRHeader(0, label, i, 0), payload))
    idx, rec = write_set(tmp_path, records)
    reader = IndexedRecordReader(idx, rec)
    keys = np.array(sorted(rng.choice(400, 250, replace=False)), dtype=np.int64)[::-1].copy()
    expected = []
    for k in keys:
        header, _ = unpack(reader.read_idx(int(k)))
        expected.append(float(header.label if header.flag == 0 else header.label[0]))
    np.testing.assert_array_equal(reader.header_labels(keys), np.array(expected))
    assert reader.header_labels(np.zeros(0, dtype=np.int64)).size == 0


@pytest.mark.parametrize("damage, message", [
    (lambda data, off: data[:off] + b"\x0b" + data[off + 1:], r"key 2\): bad magic 0xced7230b"),
    (lambda data, off: data[:off + 4] + struct.pack("<I", 3 << 29 | 28) + data[off + 8:],
     r"key 2\): unexpected continuation flag 3"),
    (lambda data, off: data[:off + 20], r"key 2\): the file ends at"),  # cut inside key 2's header
    (lambda data, off: data[:off + 4] + struct.pack("<I", 12) + data[off + 8:],
     r"key 2\): record of 12 bytes cannot hold its 24-byte header"),
])
def test_header_labels_name_the_damaged_record(tmp_path, damage, message):
    records = [pack(IRHeader(0, float(i), i, 0), b"x" * 8) for i in range(4)]
    idx, rec = write_set(tmp_path, records)
    lines = idx.read_text().splitlines()
    offset = int(lines[2].split()[1])
    rec.write_bytes(damage(rec.read_bytes(), offset))
    idx.write_text("".join(line + "\n" for line in lines[:3]))  # keys 0-2 (key 3 may be cut off)
    with pytest.raises(RecordFormatError, match=message):
        IndexedRecordReader(idx, rec).header_labels(np.arange(3))
