"""``fpr-eval``: fairness evaluation of ONNX face-embedding models on RFW, BFW, ``.bin`` and dense sets.

Example::

    fpr-eval --model model.onnx --rfw /data/RFW --bfw /data/bfw --output eval_out
    fpr-eval --compare cosface.onnx cifp.onnx --rfw-bin /data/rfw_bins --output compare_out
    fpr-eval --model sface.onnx --input-mean 0 --input-std 1 --dense dense.csv --output sface_out
    fpr-eval --model model.onnx --dense test.csv --calibration faircal.json --output calibrated_out

The command parses its arguments, loads the sets and calls
:func:`fpr_plugin.eval.evaluate_models`; the report replaces ``--output`` as a
whole folder (:class:`fpr_plugin.eval.output.ReportFolder`).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from fpr_plugin.cli_errors import UserError, add_debug_flag, run_cli
from fpr_plugin.eval import sets as loaders
from fpr_plugin.eval.dense import DEFAULT_FPRS
from fpr_plugin.eval.output import ReportFolder, check_output
from fpr_plugin.eval.runner import evaluate_models, model_labels


def build_parser() -> argparse.ArgumentParser:
    """The ``fpr-eval`` argument parser."""
    p = argparse.ArgumentParser(prog="fpr-eval", description=__doc__.split("\n\n")[0])
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", type=Path, help="one ONNX embedding model")
    models.add_argument("--compare", type=Path, nargs="+", metavar="MODEL", help="several models side by side")
    p.add_argument("--rfw", type=Path, help="RFW folder (test/data, test/txts): pairs + dense on all images")
    p.add_argument("--rfw-bin", type=Path, help="folder of <Race>_test.bin files")
    p.add_argument("--bfw", type=Path, help="BFW folder (or its bfw-v0.1.5-datatable.csv): pairs + dense")
    p.add_argument("--bin", type=Path, nargs="+", default=[], help="insightface .bin verification file(s)")
    p.add_argument("--pairs", type=Path, nargs="+", default=[], help="CSV: path1,path2,issame,group[,fold]")
    p.add_argument("--dense", type=Path, nargs="+", default=[], help="CSV: path,identity,group[,x1,y1..x5,y5]")
    p.add_argument("--output", type=Path, required=True, help="report folder (also holds the embedding cache)")
    p.add_argument("--fpr", type=float, nargs="+", default=list(DEFAULT_FPRS), help="overall FPRs (default 1e-7..1e-2)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense protocol on --rfw/--bfw images")
    p.add_argument("--chunk-size", type=int, default=2048,
                   help="dense tile size (working memory about 3 tiles of chunk^2 float32)")
    p.add_argument("--batch-size", type=int, default=64, help="images per onnxruntime call")
    p.add_argument("--no-flip", action="store_true", help="embed without the flip test (default: emb(img)+emb(flip))")
    p.add_argument("--providers", nargs="+", default=None,
                   help="onnxruntime providers (default: CUDA if available, else CPU)")
    add_input_arguments(p)
    p.add_argument("--calibration", type=Path, nargs="+", default=[], metavar="CALIB_JSON",
                   help="post-hoc calibration(s) from fpr-calibrate, each fitted for one of the models on a set "
                        "with other identities: reported as extra entries <model>+<method>")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return add_debug_flag(p)


def load_sets(args: argparse.Namespace) -> list[loaders.EvalSet]:
    """Every test set named on the command line (loaded and checked before any model runs)."""
    sets = []
    if args.rfw:
        sets.append(loaders.load_rfw(args.rfw))
    if args.rfw_bin:
        sets.append(loaders.load_rfw_bin(args.rfw_bin))
    if args.bfw:
        sets.append(loaders.load_bfw(args.bfw))
    sets += [loaders.load_bin(path) for path in args.bin]
    sets += [loaders.load_pairs_csv(path) for path in args.pairs]
    sets += [loaders.load_dense_csv(path) for path in args.dense]
    if not sets:
        raise ValueError("no test set given: use --rfw, --rfw-bin, --bfw, --bin, --pairs or --dense")
    names = [s.name for s in sets]
    for i, s in enumerate(sets):  # two files with one stem must not share a report section
        if names.count(s.name) > 1:
            s.name = f"{s.name}-{i}"
    return sets


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """``--input-mean``, ``--input-std``, ``--input-color``: how a model is fed (shared with fpr-calibrate)."""
    p.add_argument("--input-mean", type=float, default=None,
                   help="the model's input mean: it is fed (pixel - mean) / std (default: the model's "
                        "input_mean metadata, else 127.5)")
    p.add_argument("--input-std", type=float, default=None,
                   help="the model's input std (default: the model's input_std metadata, else 127.5)")
    p.add_argument("--input-color", default=None, metavar="{rgb,bgr}",
                   help="channel order the model expects (default: the model's input_color metadata, else rgb)")


def check_input_flags(args: argparse.Namespace) -> None:
    """UserError naming the flag when ``--input-mean/--input-std/--input-color`` hold a bad value."""
    if args.input_std is not None and not (math.isfinite(args.input_std) and args.input_std > 0):
        raise UserError(f"--input-std must be a finite number > 0, got {args.input_std}")
    if args.input_mean is not None and not math.isfinite(args.input_mean):
        raise UserError(f"--input-mean must be a finite number, got {args.input_mean}")
    if args.input_color is not None and args.input_color.lower() not in ("rgb", "bgr"):
        raise UserError(f"--input-color must be rgb or bgr (the channel order the model expects), "
                        f"got {args.input_color!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fpr-eval``; returns the exit status (2 on bad input, one line on stderr naming it)."""
    return run_cli("fpr-eval", _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    for f in args.fpr:
        if not 0.0 < f < 1.0:
            raise UserError(f"--fpr values must be in (0, 1), got {f}")
    if args.chunk_size < 1 or args.batch_size < 1:
        raise UserError(f"--chunk-size and --batch-size must be >= 1, got {args.chunk_size} and {args.batch_size}")
    check_input_flags(args)
    check_output(args.output)
    paths = [args.model] if args.model else list(args.compare)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
    labels = model_labels(paths)
    sets = load_sets(args)
    with ReportFolder(args.output, "fpr-eval") as folder:
        report = evaluate_models(labels, sets, fprs=args.fpr, flip=not args.no_flip, batch_size=args.batch_size,
                                 chunk_size=args.chunk_size, dense=not args.no_dense, cache_dir=folder.cache_dir,
                                 providers=args.providers, progress=not args.no_progress,
                                 input_mean=args.input_mean, input_std=args.input_std, input_color=args.input_color,
                                 calibrations=args.calibration)
        written = folder.publish(report)
    print(written["report.md"].read_text(encoding="utf-8"))
    print(f"fpr-eval: wrote {', '.join(str(p) for p in written.values())}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
