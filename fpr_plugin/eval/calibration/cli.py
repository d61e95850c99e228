"""``fpr-calibrate``: fit a post-hoc score calibration (FSN, FairCal, Oracle) of an ONNX model on a labelled set.

Example::

    fpr-calibrate --model model.onnx --fit calib/dense.csv --method faircal --output faircal.json
    fpr-eval --model model.onnx --dense test/dense.csv --calibration faircal.json --output eval_out

The fit set must hold other identities than the sets the calibration is used on.
It is loaded with fpr-eval's loaders (:func:`fpr_plugin.eval.cli.load_sets`); its
format comes from ``--fit-format``, or from the path: a ``.bin`` file, a CSV with
``path1,path2,issame`` (pair list), with ``path,identity`` (dense set) or the BFW
table, a folder with ``test/txts`` (RFW), ``<Race>_test.bin`` files (RFW .bin) or
the BFW table. The set is embedded as fpr-eval embeds (flip test unless ``--no-flip``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from fpr_plugin.cli_errors import UserError, add_debug_flag, run_cli
from fpr_plugin.eval.calibration import calibrate_model
from fpr_plugin.eval.calibration.fitdata import DEFAULT_MAX_PAIRS, image_groups

FORMATS = ("auto", "rfw", "rfw-bin", "bfw", "bin", "pairs", "dense")


def build_parser() -> argparse.ArgumentParser:
    """The ``fpr-calibrate`` argument parser."""
    from fpr_plugin.eval.cli import add_input_arguments

    p = argparse.ArgumentParser(prog="fpr-calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the ONNX embedding model to calibrate")
    p.add_argument("--fit", type=Path, required=True, help="labelled calibration set (identities disjoint from "
                                                           "the test sets)")
    p.add_argument("--fit-format", choices=FORMATS, default="auto", help="format of --fit (default: from the path)")
    p.add_argument("--method", choices=("fsn", "faircal", "oracle"), required=True,
                   help="fsn / faircal: label-free (k-means clusters); oracle: the fit set's groups")
    p.add_argument("--output", type=Path, required=True, help="calibration JSON file to write")
    p.add_argument("--clusters", type=int, default=100, help="k-means clusters K (fsn, faircal; default 100, "
                                                             "lowered to N/5 for a small set)")
    p.add_argument("--fpr", type=float, default=1e-3, help="target FPR of FSN's thresholds (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="k-means++ seed and pair-sampling seed (default 0)")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty of the beta maps' slopes (faircal, oracle)")
    p.add_argument("--max-pairs", type=int, default=DEFAULT_MAX_PAIRS,
                   help="pairs of a dense fit set above which impostor pairs are sampled")
    p.add_argument("--batch-size", type=int, default=64, help="images per onnxruntime call")
    p.add_argument("--no-flip", action="store_true", help="embed without the flip test (as fpr-eval --no-flip)")
    p.add_argument("--providers", nargs="+", default=None, help="onnxruntime providers")
    add_input_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return add_debug_flag(p)


def detect_format(path: Path) -> str:
    """The ``--fit-format`` of a path (see the module docstring); UserError when it cannot tell."""
    from fpr_plugin.eval.sets import find_bfw_table
    from fpr_plugin.eval.sets.base import csv_header

    if path.is_file() and path.suffix.lower() == ".bin":
        return "bin"
    if path.is_file() and path.suffix.lower() == ".csv":
        header = csv_header(path)
        if {"path1", "path2", "issame"} <= set(header):
            return "pairs"
        if {"path", "identity"} <= set(header):
            return "dense"
        return "bfw"
    if path.is_dir():
        if (path / "test" / "txts").is_dir():
            return "rfw"
        if any(path.glob("*_test.bin")):
            return "rfw-bin"
        try:
            find_bfw_table(path)
            return "bfw"
        except (OSError, ValueError):
            pass
    raise UserError(f"--fit {path}: cannot tell its format; expected a .bin file, a pair or dense CSV, an RFW or "
                    "BFW folder, or a folder of <Race>_test.bin files (or say --fit-format)")


def load_fit_set(path: Path, fmt: str = "auto"):
    """The fit set, loaded by fpr-eval's :func:`~fpr_plugin.eval.cli.load_sets`."""
    from fpr_plugin.eval.cli import load_sets

    fmt = detect_format(path) if fmt == "auto" else fmt
    ns = argparse.Namespace(rfw=None, rfw_bin=None, bfw=None, bin=[], pairs=[], dense=[])
    if fmt in ("rfw", "rfw-bin", "bfw"):
        setattr(ns, fmt.replace("-", "_"), path)
    else:
        setattr(ns, fmt, [path])
    (eval_set,) = load_sets(ns)
    return eval_set


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fpr-calibrate``; returns the exit status (2 on bad input, one line on stderr naming it)."""
    return run_cli("fpr-calibrate", _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from fpr_plugin.eval.cli import check_input_flags

    args = build_parser().parse_args(argv)
    check_input_flags(args)
    if args.clusters < 1:
        raise UserError(f"--clusters must be >= 1, got {args.clusters}")
    if not 0.0 < args.fpr < 1.0:
        raise UserError(f"--fpr must be in (0, 1), got {args.fpr}")
    if not args.l2 >= 0.0:
        raise UserError(f"--l2 must be >= 0, got {args.l2}")
    if args.batch_size < 1 or args.max_pairs < 1:
        raise UserError(f"--batch-size and --max-pairs must be >= 1, got {args.batch_size} and {args.max_pairs}")
    if args.output.is_dir():
        raise UserError(f"--output {args.output} is a folder; expected the path of the calibration JSON file")
    if not args.model.is_file():
        raise FileNotFoundError(f"model file not found: {args.model}")
    eval_set = load_fit_set(args.fit, args.fit_format)
    if args.method == "oracle" and image_groups(eval_set) is None:
        raise UserError(f"--method oracle needs a group per image; --fit {args.fit} does not give one")
    calibration = calibrate_model(args.model, eval_set, args.method, clusters=args.clusters, fpr=args.fpr,
                                  seed=args.seed, l2=args.l2, max_pairs=args.max_pairs, flip=not args.no_flip,
                                  batch_size=args.batch_size, providers=args.providers,
                                  input_mean=args.input_mean, input_std=args.input_std,
                                  input_color=args.input_color, name=f"{eval_set.name} ({args.fit})",
                                  progress=not args.no_progress)
    calibration.save(args.output)
    k = calibration.params.get("clusters")
    extra = "" if k is None else f", K={k}" + ("" if k == args.clusters else f" (asked {args.clusters})")
    print(f"fpr-calibrate: {args.method} on {eval_set.name} ({len(eval_set.images)} images{extra}) -> {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
