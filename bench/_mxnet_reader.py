"""mxnet side of bench/data_throughput.py; runs inside the mxnet 1.9.1 environment (needs cv2).

Same pipeline as ``fpr_plugin.data.dataset.RecordDataset`` with mxnet's reader:
``MXIndexedRecordIO.read_idx`` -> ``recordio.unpack`` -> ``cv2.imdecode`` -> BGR->RGB -> random
flip -> ``(x / 255 - 0.5) / 0.5`` -> CHW float32, batched; worker processes via multiprocessing.
Prints one JSON line ``{"workers": images_per_second}`` per call.
"""
import argparse
import json
import multiprocessing
import random
import time

import cv2
import mxnet as mx
import numpy as np

_reader = None


def _open(idx, rec):
    global _reader
    _reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")


def _sample(key):
    header, payload = mx.recordio.unpack(_reader.read_idx(key))
    label = header.label if header.flag == 0 else header.label[0]
    img = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    if random.random() < 0.5:
        img = img[:, ::-1]
    chw = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32)
    return chw / 127.5 - 1.0, int(label)


def _batch(keys):
    samples = [_sample(k) for k in keys]
    return np.stack([s[0] for s in samples]), np.array([s[1] for s in samples], dtype=np.int64)


def _epoch(batches, pool):
    start = time.perf_counter()
    count = 0
    results = pool.imap(_batch, batches) if pool is not None else map(_batch, batches)
    for images, _ in results:
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("idx")
    p.add_argument("rec")
    p.add_argument("--keys", required=True, help="comma-separated image keys in read order")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", default="0,1,2")
    args = p.parse_args()
    keys = [int(k) for k in args.keys.split(",")]
    batches = [keys[i:i + args.batch_size] for i in range(0, len(keys), args.batch_size)]
    result = {}
    for workers in (int(w) for w in args.workers.split(",")):
        if workers == 0:
            _open(args.idx, args.rec)
            _epoch(batches[:2], None)  # warm-up
            result[workers] = _epoch(batches, None)
        else:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers, initializer=_open, initargs=(args.idx, args.rec)) as pool:
                _epoch(batches[: 2 * workers], pool)  # warm-up: workers started, files open
                result[workers] = _epoch(batches, pool)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
