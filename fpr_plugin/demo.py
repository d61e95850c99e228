"""``fpr-demo``: the whole product on synthetic data, in minutes on a CPU.

Steps, each shown as it runs: (1) draw the synthetic demographic benchmark
(:mod:`fpr_plugin.data.synthetic`, design ``tight`` at size ``wide`` by default);
(2) train a CosFace baseline, the paper's FPR penalty and its impostor-pairs
variant with the same recipe (``recipes/synthetic_demo.py``) and seed; (3) export
them to ONNX; (4) fit FairCal for each on the benchmark's calibration split (other
identities); (5) evaluate all side by side, raw and calibrated
(:func:`fpr_plugin.eval.evaluate_models`, as ``fpr-eval --compare --calibration``)
on the RFW-layout pairs and the dense all-pairs set. Everything lands in one folder::

    OUT/data/                 the benchmark (train record set, rfw/, dense/, calib/)
    OUT/runs/<method>/        training output: config.json, model.pt, checkpoints, metrics.jsonl
    OUT/models/<method>.onnx  exported embedding networks
    OUT/calibration/          <method>.faircal.json (fpr-calibrate's files)
    OUT/report/               report.md, report.json, plots
    OUT/demo.json             seeds, sizes, stage timings, paths, the benchmark's 5-seed table
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from fpr_plugin.atomic import atomic_write

#: Demo methods beyond a registered loss with the recipe's settings: name -> (loss, recipe overrides).
#: ``fpr_penalty_pairs``: the penalty over the batch's impostor pairs (negatives="pairs", not in the paper)
#: at gamma_u 1e-2 (a batch of 128 has ~8,100 impostor pairs), alpha 0.1: bench/fairness_synthetic.py's
#: "fpr pairs a0.1 g1e-2", the setting that narrowed the gap there.
DEMO_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fpr_penalty_pairs": ("fpr_penalty", ("loss_params.negatives=pairs", "loss_params.gamma_u=1e-2")),
}
DEFAULT_LOSSES = ("cosface", "fpr_penalty", "fpr_penalty_pairs")
#: Post-hoc calibrations fitted on the benchmark's calibration split for every trained model.
DEFAULT_CALIBRATIONS = ("faircal",)
#: The default benchmark: the design with a test gap on every seed (bench/fairness_synthetic.py, README).
DEFAULT_DESIGN, DEFAULT_SIZE = "tight", "wide"
#: Overall FPRs of the report: the demo's dense set has about 7e5 within-group impostor pairs, so lower
#: rates rest on fewer than 10 false positives.
REPORT_FPRS = (1e-4, 1e-3, 1e-2)

#: Recipe overrides per demo size: "tiny" is a smoke test of the pipeline (seconds), not a result. Its batches
#: hold 32 x 25 negative cosines: gamma_u 1e-4 would give the threshold rank k = 1, where no entry lies strictly
#: above the threshold and the penalty is exactly zero, so tiny raises gamma_u to keep the penalty active.
SIZE_OVERRIDES: dict[str, tuple[str, ...]] = {
    "tiny": ("num_epoch=1", "batch_size=32", "lr_steps=[]", "warmup_epoch=0.0", "frequent=1",
             "loss_params.fpr_penalty.gamma_u=0.02"),
    "demo": (),
    "wide": (),  # 240 identities x 5 images per group, 200 test identities per group (see data.synthetic.SIZES)
}


def default_recipe() -> Path:
    """The shipped ``recipes/synthetic_demo.py`` (package data: found in a regular and an editable install)."""
    from fpr_plugin.train.config import recipes_dir

    return recipes_dir() / "synthetic_demo.py"


def _stage(number: int, total: int, text: str) -> None:
    print(f"\n[{number}/{total}] {text}", flush=True)


def _prepare_data(data_dir: Path, seed: int, size: str, design: str, progress: bool) -> dict:
    """Draw the benchmark, or reuse the one already in ``data_dir`` when it has the same seed/size/design."""
    from fpr_plugin.data.synthetic import make_synthetic

    manifest_path = data_dir / "synthetic.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if (manifest.get("seed"), manifest.get("design")) == (seed, design) and manifest.get("size_name") == size:
            print(f"reusing {data_dir} (seed {seed}, size {size}, design {design})", flush=True)
            return manifest
    return make_synthetic(data_dir, seed=seed, size=size, design=design, overwrite=True, progress=progress)


def method_config(recipe: Path, name: str, rec: Path, output: Path, seed: int, overrides: Sequence[str]):
    """The training config of demo method ``name`` (a :data:`DEMO_METHODS` entry, else a registered loss)."""
    from fpr_plugin.train.config import load_config

    loss, own = DEMO_METHODS.get(name, (name, ()))
    return load_config(recipe, loss=loss, overrides=[f"rec={rec}", f"output={output}", f"seed={seed}", *own,
                                                     *overrides])


def _train(recipe: Path, name: str, rec: Path, output: Path, seed: int, overrides: Sequence[str]) -> dict:
    """Train one method on the benchmark's record set into ``output`` (replacing an earlier demo run there)."""
    from fpr_plugin.train.trainer import train

    if output.exists():
        shutil.rmtree(output)
    return train(method_config(recipe, name, rec, output, seed, overrides))


def _check_settings(recipe: Path, losses: Sequence[str], out: Path, seed: int, overrides: Sequence[str]) -> None:
    """Every training's config, checked before anything is drawn or written (bad --set, loss or recipe: no leftovers)."""
    for name in losses:
        method_config(recipe, name, out / "data" / "train", out / "runs" / name, seed, overrides)


def _calibrate(models: dict[str, Path], methods: Sequence[str], data: Path, folder: Path, progress: bool) -> list:
    """Fit every post-hoc calibration of ``methods`` for every model on the calibration split; saved in ``folder``."""
    from fpr_plugin.eval.calibration import calibrate_model
    from fpr_plugin.eval.sets import load_dense_csv

    if not methods:
        return []
    fit_set = load_dense_csv(data / "calib" / "calib.csv")
    folder.mkdir(exist_ok=True)
    calibrations = []
    for label, model in models.items():
        for method in methods:
            calibration = calibrate_model(model, fit_set, method, clusters=20, progress=progress,
                                          name=f"{fit_set.name} (the benchmark's calibration split)")
            calibration.save(folder / f"{label}.{method}.json")
            print(f"{folder / f'{label}.{method}.json'}: {method} fitted for {label} on {len(fit_set.images)} "
                  f"images of other identities", flush=True)
            calibrations.append(folder / f"{label}.{method}.json")
    return calibrations


def _evaluate(models: dict[str, Path], data: Path, report_dir: Path, calibrations: Sequence[Path],
              progress: bool) -> None:
    """The models (and their calibrated scores) side by side: the RFW-layout pairs and the dense set."""
    from fpr_plugin.eval import ReportFolder, evaluate_models
    from fpr_plugin.eval.sets import load_dense_csv, load_rfw

    # RFW layout: the 10-fold pair lists (dense=False: its images are the dense set below, already aligned)
    test_sets = [load_rfw(data / "rfw"), load_dense_csv(data / "dense" / "dense.csv")]
    with ReportFolder(report_dir, "fpr-demo") as folder:
        report = evaluate_models(models, test_sets, fprs=REPORT_FPRS, dense=False, cache_dir=folder.cache_dir,
                                 progress=progress, calibrations=list(calibrations))
        folder.publish(report)


def run_demo(output: str | os.PathLike = "fpr_demo", *, size: str = DEFAULT_SIZE, seed: int = 0,
             design: str = DEFAULT_DESIGN, losses: Sequence[str] = DEFAULT_LOSSES,
             calibrations: Sequence[str] = DEFAULT_CALIBRATIONS, recipe: str | os.PathLike | None = None,
             overrides: Sequence[str] = (), progress: bool = True) -> dict:
    """Run the five demo stages into ``output``; return the summary also written to ``output/demo.json``."""
    if size not in SIZE_OVERRIDES:
        raise ValueError(f"size must be one of {sorted(SIZE_OVERRIDES)}, got {size!r}")
    if len(set(losses)) != len(losses) or not losses:
        raise ValueError(f"losses must be distinct loss names, got {list(losses)}")
    from fpr_plugin.eval.calibration import METHODS as CALIBRATION_METHODS

    unknown = [c for c in calibrations if c not in CALIBRATION_METHODS]
    if unknown or len(set(calibrations)) != len(calibrations):
        raise ValueError(f"calibrations must be distinct names among {sorted(CALIBRATION_METHODS)}, "
                         f"got {list(calibrations)}")
    recipe = Path(recipe) if recipe is not None else default_recipe()
    if not recipe.is_file():
        raise FileNotFoundError(f"demo recipe {recipe} not found (pass --recipe PATH)")
    out = Path(output)
    _check_settings(recipe, losses, out, seed, [*SIZE_OVERRIDES[size], *overrides])
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    _stage(1, 5, f"synthetic benchmark (design {design}, size {size}, seed {seed}) -> {out / 'data'}")
    t0 = time.perf_counter()
    manifest = _prepare_data(out / "data", seed, size, design, progress)
    timings["data_s"] = time.perf_counter() - t0

    models = {}
    for index, loss in enumerate(losses, 1):
        _stage(2, 5, f"training {loss} ({index}/{len(losses)}) -> {out / 'runs' / loss}")
        t0 = time.perf_counter()
        _train(recipe, loss, out / "data" / "train", out / "runs" / loss, seed, [*SIZE_OVERRIDES[size], *overrides])
        timings[f"train_{loss}_s"] = time.perf_counter() - t0

    _stage(3, 5, f"export to ONNX -> {out / 'models'}")
    from fpr_plugin.export import export_onnx

    (out / "models").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for loss in losses:
        models[loss] = out / "models" / f"{loss}.onnx"
        report = export_onnx(out / "runs" / loss / "model.pt", models[loss])
        print(f"{models[loss]}: {json.dumps(report.get('checks', {}))}", flush=True)
    timings["export_s"] = time.perf_counter() - t0

    _stage(4, 5, f"post-hoc calibration ({', '.join(calibrations) or 'none'}) on the calibration split -> "
                 f"{out / 'calibration'}")
    t0 = time.perf_counter()
    fitted = _calibrate(models, calibrations, out / "data", out / "calibration", progress)
    timings["calibration_s"] = time.perf_counter() - t0

    _stage(5, 5, f"evaluation (as fpr-eval --compare --calibration) -> {out / 'report'}")
    t0 = time.perf_counter()
    _evaluate(models, out / "data", out / "report", fitted, progress)
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    summary = {
        "seed": seed, "size": size, "design": design, "losses": list(losses), "calibrations": list(calibrations),
        "recipe": str(recipe),
        "train": manifest["train"], "timings": {k: round(v, 1) for k, v in timings.items()},
        "paths": {"data": str(out / "data"), "runs": {loss: str(out / "runs" / loss) for loss in losses},
                  "models": {loss: str(path) for loss, path in models.items()}, "report": str(out / "report")},
    }
    from fpr_plugin.benchmark_reference import format_reference, load_reference

    reference = load_reference(design, size)
    summary["benchmark_reference"] = None if reference is None else format_reference(reference, losses)
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(out / "demo.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    report_md = out / "report" / "report.md"
    if report_md.is_file():
        print("\n" + report_md.read_text(), flush=True)
    print("\n" + (summary["benchmark_reference"] or f"(no 5-seed benchmark figures for design {design} at size "
                                                   f"{size}: bench/fairness_synthetic.py measures them)"), flush=True)
    print(f"demo finished in {timings['total_s']:.0f} s; report in {out / 'report'}", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The ``fpr-demo`` argument parser."""
    from fpr_plugin.cli_errors import add_debug_flag
    from fpr_plugin.data.synthetic import DESIGNS

    parser = argparse.ArgumentParser(prog="fpr-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="fpr_demo", help="folder for data, runs, models and report (default fpr_demo)")
    parser.add_argument("--size", choices=sorted(SIZE_OVERRIDES), default=DEFAULT_SIZE,
                        help="wide (default): the benchmark's size, 240 identities x 5 images per group and 200 test "
                             "identities; demo: 120 x 10 and 100; tiny: a smoke test of the pipeline (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of both trainings (default 0)")
    parser.add_argument("--design", default=DEFAULT_DESIGN, choices=sorted(DESIGNS),
                        help=f"group design of the synthetic data (default {DEFAULT_DESIGN}; rare is the documented "
                             "counter-example; bench/fairness_synthetic.py checks the designs)")
    parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES),
                        help="methods to train and compare: registered losses (recipe settings) or "
                             f"{', '.join(DEMO_METHODS)} (default: {' '.join(DEFAULT_LOSSES)})")
    parser.add_argument("--calibrations", nargs="*", default=list(DEFAULT_CALIBRATIONS),
                        help="post-hoc calibrations fitted for every model on the calibration split (fsn, faircal, "
                             "oracle; none: no arguments; default faircal)")
    parser.add_argument("--recipe", default=None, help="recipe file (default recipes/synthetic_demo.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every training run (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars while drawing the data")
    return add_debug_flag(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """``fpr-demo [--output DIR] [--size demo|tiny] [--seed S]``; exit 2 and one line on bad input (as every CLI)."""
    from fpr_plugin.cli_errors import run_cli

    return run_cli("fpr-demo", _main, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    run_demo(args.output, size=args.size, seed=args.seed, design=args.design, losses=args.losses,
             calibrations=args.calibrations,
             recipe=args.recipe, overrides=args.overrides, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
