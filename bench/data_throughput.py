"""Record reading throughput: fpr_plugin's RecordDataset vs mxnet's MXIndexedRecordIO, same decode.

Both pipelines read every image of a generated 112x112 JPEG record set in the same shuffled order:
read the record, ``cv2.imdecode``, BGR->RGB, random flip, ``(x / 255 - 0.5) / 0.5``, CHW float32,
batches of ``--batch-size``. Ours runs through a torch DataLoader with 0, 1, 2 workers; mxnet's
runs in its own environment (``FPR_MXNET_PYTHON`` or ``<repo>/.venv-mxnet``, with cv2) through a
multiprocessing pool of the same size. The two alternate, worker count by worker count; medians are printed
with their ratio (target: >= 1.0x).

    python bench/data_throughput.py [--images 4000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import DataLoader

from fpr_plugin.data.dataset import RecordDataset
from fpr_plugin.data.record_set import write_record_set

REPO = Path(__file__).resolve().parents[1]
MXNET_SCRIPT = Path(__file__).resolve().parent / "_mxnet_reader.py"


def mxnet_python() -> str:
    """The mxnet interpreter: ``FPR_MXNET_PYTHON`` or ``<repo>/.venv-mxnet`` (created by the tests)."""
    python = os.environ.get("FPR_MXNET_PYTHON") or str(REPO / ".venv-mxnet" / "bin" / "python")
    probe = subprocess.run([python, "-c", "import mxnet, cv2"], capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit(f"{python} cannot import mxnet and cv2; create it with\n  python3 -m venv .venv-mxnet && "
                 ".venv-mxnet/bin/pip install mxnet==1.9.1 'numpy<1.24' 'opencv-python-headless<4.12'\n"
                 "(or run `pytest -m mxnet tests/data`), or set FPR_MXNET_PYTHON")
    return python


def generate_record_set(out: Path, num_images: int, num_classes: int = 100, seed: int = 0) -> float:
    """Write photo-like 112x112 JPEGs (q95) as a record set; return the mean JPEG size in KiB."""
    rng = np.random.default_rng(seed)
    sizes = []

    def samples():
        for i in range(num_images):
            base = cv2.resize(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8), (112, 112),
                              interpolation=cv2.INTER_CUBIC)
            img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
            data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            sizes.append(len(data))
            yield i * num_classes // num_images, data

    write_record_set(out, samples())
    return float(np.mean(sizes)) / 1024


def ours(path: Path, order: list[int], batch_size: int, workers: int) -> float:
    """Images/s of one epoch through a DataLoader (after a warm-up that starts the workers)."""
    loader = DataLoader(RecordDataset(path), batch_size=batch_size, sampler=order, num_workers=workers,
                        persistent_workers=workers > 0)
    for i, _ in enumerate(loader):  # warm-up
        if i + 1 >= 2 * max(workers, 1):
            break
    start = time.perf_counter()
    count = sum(images.shape[0] for images, _ in loader)
    return count / (time.perf_counter() - start)


def theirs(python: str, path: Path, keys: str, batch_size: int, workers: int) -> float:
    """Images/s of one epoch of the mxnet pipeline (``_mxnet_reader.py`` in the mxnet env)."""
    out = subprocess.run([python, str(MXNET_SCRIPT), str(path / "train.idx"), str(path / "train.rec"),
                          "--keys", keys, "--batch-size", str(batch_size), "--workers", str(workers)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return float(json.loads(out.strip().splitlines()[-1])[str(workers)])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", default="0,1,2")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    python = mxnet_python()
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rs"
        kib = generate_record_set(path, args.images)
        dataset = RecordDataset(path)
        order = np.random.default_rng(1).permutation(len(dataset)).tolist()
        keys = ",".join(str(int(dataset.image_keys[i])) for i in order)
        runs = {"ours": {w: [] for w in workers}, "mxnet": {w: [] for w in workers}}
        for _ in range(args.repeats):
            for w in workers:  # alternate the two readers closely: the machine's load drifts
                runs["ours"][w].append(ours(path, order, args.batch_size, w))
                runs["mxnet"][w].append(theirs(python, path, keys, args.batch_size, w))
    print(f"record set: {args.images} JPEG 112x112 q95 (mean {kib:.1f} KiB), batch {args.batch_size}, "
          f"median of {args.repeats} epochs, {os.cpu_count()} CPUs, mxnet python {python}")
    print(f"{'workers':>7}  {'fpr_plugin img/s':>16}  {'mxnet img/s':>11}  {'ratio':>6}")
    for w in workers:
        a, b = statistics.median(runs["ours"][w]), statistics.median(runs["mxnet"][w])
        print(f"{w:>7}  {a:>16.0f}  {b:>11.0f}  {a / b:>5.2f}x")


if __name__ == "__main__":
    main()
