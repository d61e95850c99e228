"""Byte compatibility with the real mxnet 1.9.1 ``mx.recordio``, both ways (run in its own venv).

Data crosses between the environments as pickles of plain Python values (numpy 2 arrays do
not unpickle under numpy 1.23) and as ``.rec``/``.idx`` files.
"""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from fpr_plugin.data.record_set import write_record_set
from fpr_plugin.data.recordio import (MAGIC, IndexedRecordReader, IndexedRecordWriter, IRHeader,
                                      pack, pack_img, scan_records, unpack, unpack_img)

pytestmark = pytest.mark.mxnet
M = struct.pack("<I", MAGIC)

MX_READ = """
import pickle, sys
import mxnet as mx
idx, rec, decode = sys.argv[1], sys.argv[2], sys.argv[3].split(",") if sys.argv[3] else []
reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
out = {"keys": list(reader.keys), "records": {}, "images": {}, "sequential": []}
for key in reader.keys:
    record = reader.read_idx(key)
    header, payload = mx.recordio.unpack(record)
    label = header.label.tolist() if header.flag > 0 else float(header.label)
    out["records"][key] = (int(header.flag), label, int(header.id), int(header.id2), payload)
    if str(key) in decode:
        if mx.recordio.cv2 is not None:
            _, img = mx.recordio.unpack_img(record)
        else:  # no python cv2 in this env: libmxnet's own OpenCV decoder, BGR like unpack_img
            img = mx.image.imdecode(payload, flag=1, to_rgb=False).asnumpy()
        out["images"][key] = (img.shape, img.tobytes())
seq = mx.recordio.MXRecordIO(rec, "r")
while True:
    item = seq.read()
    if item is None:
        break
    out["sequential"].append(item)
pickle.dump(out, open("mx_out.pkl", "wb"))
"""

MX_WRITE = """
import pickle, sys
import numpy as np
import mxnet as mx
spec = pickle.load(open("mx_in.pkl", "rb"))
writer = mx.recordio.MXIndexedRecordIO("mx.idx", "mx.rec", "w")
decoded = {}
for key, kind, header, data in spec:
    header = mx.recordio.IRHeader(*header)
    if kind == "jpeg":
        img = np.frombuffer(data[1], np.uint8).reshape(data[0])
        record = mx.recordio.pack_img(header, img, quality=95, img_fmt=".jpg")
        decoded[key] = mx.recordio.unpack_img(record)[1].tobytes()
    else:
        record = mx.recordio.pack(header, data)
    writer.write_idx(key, record)
writer.close()
pickle.dump(decoded, open("mx_out.pkl", "wb"))
"""


def test_our_record_set_reads_identically_in_mxnet(tmp_path, mxnet_env, make_image):
    images = [make_image() for _ in range(6)]
    import cv2

    jpegs = [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for img in images]
    labels = [0, 0, 1, 2, 2, 2]
    write_record_set(tmp_path / "set", zip(labels, jpegs))
    idx, rec = tmp_path / "set" / "train.idx", tmp_path / "set" / "train.rec"
    mxnet_env.run(MX_READ, tmp_path, str(idx), str(rec), "1,2,3,4,5,6")
    mx = pickle.loads((tmp_path / "mx_out.pkl").read_bytes())

    ours = IndexedRecordReader(idx, rec)
    assert mx["keys"] == ours.keys == list(range(10))  # header, 6 images, 3 identities
    assert mx["records"][0][:2] == (2, [7.0, 10.0])  # InsightFace header record: identity keys 7..9
    assert [mx["records"][k][1] for k in (7, 8, 9)] == [[1.0, 3.0], [3.0, 4.0], [4.0, 7.0]]
    for key in range(1, 7):
        flag, label, id_, _, payload = mx["records"][key]
        assert (flag, label, id_, payload) == (0, float(labels[key - 1]), key, jpegs[key - 1])
        shape, raw = mx["images"][key]
        mx_img = np.frombuffer(raw, np.uint8).reshape(shape)
        assert np.array_equal(mx_img, unpack_img(ours.read_idx(key))[1])
    assert mx["sequential"] == [record for _, record in scan_records(rec)]


def test_our_writer_framing_reads_identically_in_mxnet(tmp_path, mxnet_env, rng, make_image):
    records = {
        5: pack(IRHeader(0, 1.0, 5, 0), b""),                                  # empty payload
        2: pack(IRHeader(0, [3.0, 0.5, -1.25], 2, 7), b"label array"),          # float label array
        9: pack(IRHeader(0, 4.0, 9, 0), b"abcd" + M + b"efgh" + M + M + b"ij"),  # magic, aligned
        3: pack(IRHeader(0, 4.0, 3, 0), b"abc" + M + b"de"),                    # magic, unaligned
        11: pack(IRHeader(0, 0.0, 11, 0), M * 5),
        4: pack_img(IRHeader(0, 6.0, 4, 0), make_image(), quality=3, img_fmt=".png"),
    }
    records.update({100 + i: pack(IRHeader(0, float(i), i, 0),
                                  rng.integers(0, 256, size=i * 13, dtype=np.uint8).tobytes())
                    for i in range(40)})
    with IndexedRecordWriter(tmp_path / "o.idx", tmp_path / "o.rec") as writer:
        for key, record in records.items():
            writer.write_idx(key, record)
    mxnet_env.run(MX_READ, tmp_path, "o.idx", "o.rec", "4")
    mx = pickle.loads((tmp_path / "mx_out.pkl").read_bytes())

    assert mx["keys"] == list(records)
    assert mx["sequential"] == list(records.values())
    for key, record in records.items():
        header, payload = unpack(record)
        label = header.label.tolist() if header.flag else header.label
        assert mx["records"][key] == (header.flag, label, header.id, header.id2, payload)
    shape, raw = mx["images"][4]
    assert np.array_equal(np.frombuffer(raw, np.uint8).reshape(shape), unpack_img(records[4])[1])


def test_mxnet_written_records_read_identically_and_byte_for_byte(tmp_path, mxnet_env, rng, make_image):
    if not mxnet_env.has_cv2:
        pytest.skip(f"{mxnet_env.python} has no cv2, which mx.recordio.pack_img needs "
                    "(pip install 'opencv-python-headless<4.12' there, or unset FPR_MXNET_PYTHON)")
    images = {key: make_image() for key in (1, 2, 3)}
    spec = [(key, "jpeg", (0, float(key), key, 0), (img.shape, img.tobytes())) for key, img in images.items()]
    spec += [
        (0, "raw", (2, [4.0, 6.0], 0, 0), b""),                                 # InsightFace header
        (4, "raw", (0, [1.0, 3.0, 5.5], 4, 0), b"payload after a label array"),
        (5, "raw", (0, 2.0, 5, 0), b""),
        (6, "raw", (0, 2.0, 6, 0), b"xyz!" + M + b"abc" + M),                    # magic at 4 and 11
        (7, "raw", (0, 2.0, 7, 0), M + M),
        (30, "raw", (0, 9.0, 30, 3), rng.integers(0, 256, 4099, dtype=np.uint8).tobytes()),
    ]
    (tmp_path / "mx_in.pkl").write_bytes(pickle.dumps(spec, protocol=4))
    mxnet_env.run(MX_WRITE, tmp_path)
    mx_decoded = pickle.loads((tmp_path / "mx_out.pkl").read_bytes())

    reader = IndexedRecordReader(tmp_path / "mx.idx", tmp_path / "mx.rec")
    assert reader.keys == [key for key, *_ in spec]
    for key, kind, (flag, label, id_, id2), data in spec:
        record = reader.read_idx(key)
        header, payload = unpack(record)
        assert (header.id, header.id2) == (id_, id2)
        if isinstance(label, list):
            assert header.flag == len(label) and header.label.tolist() == label
        else:
            assert header.flag == 0 and header.label == label
        if kind == "jpeg":
            assert payload[:2] == b"\xff\xd8"
            _, img = unpack_img(record)
            assert img.tobytes() == mx_decoded[key]
            assert np.abs(img.astype(int) - images[key]).mean() < 3
        else:
            assert payload == data
            assert record == pack(IRHeader(flag, label, id_, id2), data)  # our pack == mxnet's pack
    # our writer, given the same records, writes the same bytes as mxnet's writer
    with IndexedRecordWriter(tmp_path / "ours.idx", tmp_path / "ours.rec") as writer:
        for key in reader.keys:
            writer.write_idx(key, reader.read_idx(key))
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "mx.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_text() == (tmp_path / "mx.idx").read_text()
