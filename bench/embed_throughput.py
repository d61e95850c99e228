"""Faces/s of onnxruntime against torch eager for the same IResNet on CPU.

Usage: python bench/embed_throughput.py [--network r34] [--batch-sizes 1 64] [--repeats 5] [--threads 1]

Both engines run the same exported weights with the same number of threads; the
runs alternate (torch, onnxruntime, torch, ...) so shared-machine noise hits both,
and the median of ``--repeats`` timed runs is reported. Target: ratio >= 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def seconds(fn) -> float:
    """Wall time of one call of ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="r34")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both engines")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from fpr_plugin import build_backbone
    from fpr_plugin.export import export_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_backbone(args.network, width=args.width, embedding_size=args.embedding_size).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_model(model, path)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    print(f"{args.network} width {args.width} embedding {args.embedding_size}, CPU, {args.threads} thread(s), "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}, median of {args.repeats}")
    print(f"{'batch':>5}  {'torch faces/s':>14}  {'onnxruntime faces/s':>20}  {'ratio ort/torch':>15}")
    ratios = []
    for batch in args.batch_sizes:
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 112, 112)).astype(np.float32)
        xt = torch.from_numpy(x)

        def run_torch() -> None:
            with torch.inference_mode():
                model(xt)

        def run_ort() -> None:
            session.run(None, {"data": x})

        run_torch(), run_ort()  # warm-up
        torch_times, ort_times = [], []
        for _ in range(args.repeats):  # alternate the engines
            torch_times.append(seconds(run_torch))
            ort_times.append(seconds(run_ort))
        torch_fps = batch / statistics.median(torch_times)
        ort_fps = batch / statistics.median(ort_times)
        ratios.append(ort_fps / torch_fps)
        print(f"{batch:>5}  {torch_fps:>14.1f}  {ort_fps:>20.1f}  {ort_fps / torch_fps:>14.2f}x")
    verdict = "met" if min(ratios) >= 1.0 else "MISSED"
    print(f"target onnxruntime >= 1.0x torch eager: {verdict} (min ratio {min(ratios):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
