"""The boundary check of a record set (``IndexedRecordReader.header_labels``) against reading every record.

    python bench/record_check.py [--records 200000] [--payload 6000]

Writes a record set of ``--records`` records of ``--payload`` bytes (about the size of a
112x112 JPEG) in a temporary folder, then times, side by side: the vectorised header
scan that ``RecordSet.open`` runs before training (``check_labels=True``), once on a
cold page cache where the kernel lets us drop it (root) and once warm, and a loop that
reads and unpacks every record (what checking the labels through the dataset would cost).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from fpr_plugin.data.recordio import IndexedRecordReader, IndexedRecordWriter, IRHeader, pack, unpack


def drop_page_cache() -> bool:
    """Drop the kernel's page cache (root only); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--payload", type=int, default=6000, help="bytes per record payload")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="record_check.")
    try:
        idx, rec = os.path.join(folder, "t.idx"), os.path.join(folder, "t.rec")
        payload = np.random.default_rng(0).integers(0, 256, args.payload, dtype=np.uint8).tobytes()
        with IndexedRecordWriter(idx, rec) as writer:
            for key in range(args.records):
                writer.write_idx(key, pack(IRHeader(0, float(key % 1000), key, 0), payload))
        keys = np.arange(args.records)
        cold = drop_page_cache()
        reader = IndexedRecordReader(idx, rec)
        t0 = time.perf_counter()
        reader.header_labels(keys)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels = reader.header_labels(keys)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        looped = np.array([unpack(reader.read_idx(int(k)))[0].label for k in keys])
        loop = time.perf_counter() - t0
        assert np.array_equal(labels, looped)
        size = os.path.getsize(rec) / 2**30
        print(f"{args.records} records of {args.payload} B ({size:.2f} GiB)")
        print(f"header scan, {'cold page cache' if cold else 'first pass (cache not dropped: not root)'}: "
              f"{first:.2f} s")
        print(f"header scan, warm: {warm:.3f} s")
        print(f"read + unpack every record, warm: {loop:.2f} s; scan / loop = {warm / loop:.3f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
