"""``fpr-eval``: fairness evaluation of ONNX face-embedding models on RFW, BFW, ``.bin`` and dense sets.

Example::

    fpr-eval --model model.onnx --rfw /data/RFW --bfw /data/bfw --output eval_out
    fpr-eval --compare cosface.onnx cifp.onnx --rfw-bin /data/rfw_bins --output compare_out
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fpr_plugin.cli_errors import UserError, add_debug_flag, run_cli
from fpr_plugin.eval import protocols
from fpr_plugin.eval.cache import cached_embeddings, file_sha256
from fpr_plugin.eval.dense import DEFAULT_FPRS, count_tiles
from fpr_plugin.eval.evaluate import evaluate_dense, evaluate_pairs
from fpr_plugin.eval.report import write_report


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return add_debug_flag(p)


def build_embedder(model_path: Path, args: argparse.Namespace) -> Any:
    """The embedder for one model (helper C's :class:`OnnxEmbedder`)."""
    from fpr_plugin.eval.embed import OnnxEmbedder

    return OnnxEmbedder(str(model_path), providers=args.providers, batch_size=args.batch_size)


def load_sets(args: argparse.Namespace) -> list[protocols.EvalSet]:
    """Every test set named on the command line (loaded and checked before any model runs)."""
    sets = []
    if args.rfw:
        sets.append(protocols.load_rfw(args.rfw))
    if args.rfw_bin:
        sets.append(protocols.load_rfw_bin(args.rfw_bin))
    if args.bfw:
        sets.append(protocols.load_bfw(args.bfw))
    sets += [protocols.load_bin(path) for path in args.bin]
    sets += [protocols.load_pairs_csv(path) for path in args.pairs]
    sets += [protocols.load_dense_csv(path) for path in args.dense]
    if not sets:
        raise ValueError("no test set given: use --rfw, --rfw-bin, --bfw, --bin, --pairs or --dense")
    names = [s.name for s in sets]
    for i, s in enumerate(sets):  # two files with one stem must not share a report section
        if names.count(s.name) > 1:
            s.name = f"{s.name}-{i}"
    return sets


def model_labels(paths: Sequence[Path]) -> dict[str, Path]:
    """A model's label is its file stem (``parent/stem`` when two stems collide)."""
    stems = [p.stem for p in paths]
    labels = {}
    for path, stem in zip(paths, stems):
        label = stem if stems.count(stem) == 1 else f"{path.parent.name}/{stem}"
        if label in labels:
            raise ValueError(f"model {path} given twice")
        labels[label] = path
    return labels


def embed_set(embedder: Any, images: protocols.ImageSet, batch_size: int, flip: bool, desc: str,
              progress: bool) -> np.ndarray:
    """Embeddings ``[N, D]`` (float32, not normalised) of every image of a set, in batches."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(images), batch_size):
            idx = range(start, min(start + batch_size, len(images)))
            out.append(np.asarray(embedder.embed(images.load(idx), color="bgr", flip=flip), dtype=np.float32))
            bar.update(len(idx))
    return np.concatenate(out)


def evaluate_model(label: str, model_path: Path, embedder: Any, sets: Sequence[protocols.EvalSet],
                   args: argparse.Namespace) -> dict:
    """All numbers of one model on every set (embeddings cached under ``<output>/cache``)."""
    from tqdm import tqdm

    sha = file_sha256(model_path)
    progress = not args.no_progress
    flip = not args.no_flip
    out = {"model": str(model_path), "sha256": sha, "datasets": {}}
    for s in sets:
        key = s.cache_key() + ("" if flip else "-noflip")
        meta: dict = {}
        emb, cached = cached_embeddings(
            args.output / "cache", sha, key, expected_rows=len(s.images),
            compute=lambda s=s: embed_set(embedder, s.images, args.batch_size, flip, f"{label} {s.name}", progress),
            meta=meta, meta_of=lambda s=s: {"resized_from": sorted([list(hw) for hw in s.images.resized_from])})
        if not np.isfinite(emb).all():
            raise UserError(f"model {model_path} gives non-finite embeddings on {s.name}; expected finite "
                            "embeddings (is the model diverged?)")
        entry: dict = {"n_images": len(s.images), "embeddings_cached": cached, "notes": list(s.notes),
                       "pairs": None, "dense": None}
        resized = {tuple(hw) for hw in meta.get("resized_from", [])} | set(s.images.resized_from)
        if resized:
            sizes = ", ".join(f"{w}x{h}" for h, w in sorted(resized))
            entry["notes"].append(f"images of size {sizes} were resized to 112x112 without alignment")
        if s.pairs is not None:
            entry["pairs"] = evaluate_pairs(emb, s.pairs, args.fpr)
        if s.identities is not None and not (args.no_dense and s.pairs is not None):
            with tqdm(total=count_tiles(s.image_groups, args.chunk_size), desc=f"{label} {s.name} dense",
                      unit="tile", disable=not progress, leave=False) as bar:
                entry["dense"] = evaluate_dense(emb, s.identities, s.image_groups, args.fpr,
                                                chunk_size=args.chunk_size, progress=bar.update)
        out["datasets"][s.name] = entry
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fpr-eval``; returns the exit status (2 on bad input, one line on stderr naming it)."""
    return run_cli("fpr-eval", _main, argv)


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} exists and is not a folder; expected a folder for the report")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--output {output}: {parent} is a file, not a folder")
            break


def _main(argv: Sequence[str] | None) -> int:
    from fpr_plugin.atomic import clean_stale_temporaries
    from fpr_plugin.run_lock import OutputLock

    args = build_parser().parse_args(argv)
    for f in args.fpr:
        if not 0.0 < f < 1.0:
            raise UserError(f"--fpr values must be in (0, 1), got {f}")
    if args.chunk_size < 1 or args.batch_size < 1:
        raise UserError(f"--chunk-size and --batch-size must be >= 1, got {args.chunk_size} and {args.batch_size}")
    _check_output(args.output)
    paths = [args.model] if args.model else list(args.compare)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
    labels = model_labels(paths)
    sets = load_sets(args)
    report = {"fprs": list(args.fpr), "bias_degree": "std_over_f", "models": {}}
    with OutputLock(args.output, "fpr-eval"):
        for folder in (args.output, args.output / "cache"):
            for left in clean_stale_temporaries(folder):
                print(f"fpr-eval: note: removed {left}, left by an interrupted run", file=sys.stderr)
        with warnings.catch_warnings():
            # insightface's norm_crop calls a scikit-image method deprecated in 0.26, once per image
            warnings.filterwarnings("ignore", category=FutureWarning, module="insightface")
            for label, path in labels.items():
                report["models"][label] = evaluate_model(label, path, build_embedder(path, args), sets, args)
        written = write_report(report, args.output)
    print(written["report.md"].read_text(encoding="utf-8"))
    print(f"fpr-eval: wrote {', '.join(str(p) for p in written.values())}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
