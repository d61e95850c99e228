"""Fairness of CosFace and the FPR penalty on the synthetic benchmark, over several seeds.

For every seed: draw the benchmark (``fpr_plugin.data.synthetic``, design ``rare``
by default), train every method below with ``recipes/synthetic_demo.py`` and that
seed (paired: same data, same initialisation, only the loss differs), embed the
held-out test identities (dense set, flip test) and measure, at the one global
threshold that gives overall FPR f over all within-group impostor pairs:
overall TPR, every group's FPR (as a multiple of f), and the bias summaries
(std_g(FPR_g)/f = bias degree, max/min, Gini). Also summarised from each run's
``metrics.jsonl`` (last epoch): the loss's threshold T_u, the penalty, and the
mean Eq. 9 instance FPR and share of above-threshold entries per group.

Prints mean +- std over seeds. Results per run are cached in ``--output`` as JSON,
so an interrupted bench resumes where it stopped.

    python bench/fairness_synthetic.py --seeds 0 1 2 --output bench_out/fairness
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "synthetic_demo.py"

#: label -> (loss, recipe overrides)
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cosface": ("cosface", ()),
    "fpr a0.1 g1e-4": ("fpr_penalty", ("loss_params.alpha=0.1", "loss_params.gamma_u=1e-4")),
    "tface": ("fpr_penalty_tface", ()),
    "fpr emb a0.1 g1e-4": ("fpr_penalty", ("loss_params.alpha=0.1", "loss_params.gamma_u=1e-4",
                                           "loss_params.penalty_grad=embeddings")),
    "fpr a1 g1e-4": ("fpr_penalty", ("loss_params.alpha=1.0", "loss_params.gamma_u=1e-4")),
    "fpr a0.1 g1e-3": ("fpr_penalty", ("loss_params.alpha=0.1", "loss_params.gamma_u=1e-3")),
    "fpr a1 g1e-3": ("fpr_penalty", ("loss_params.alpha=1.0", "loss_params.gamma_u=1e-3")),
}
FPRS = (1e-4, 1e-3, 1e-2)


def _slug(label: str) -> str:
    return label.replace(" ", "_").replace(".", "p")


def embed_dense(run_dir: Path, dense_csv: Path, batch: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip-test embeddings (emb(x) + emb(flip(x))) of the dense set with the run's ``model.pt``."""
    import cv2
    import torch

    from fpr_plugin.export import build_model, load_checkpoint

    state, config = load_checkpoint(run_dir / "model.pt")
    model = build_model(state, config)
    rows = [line.split(",") for line in dense_csv.read_text().splitlines()[1:]]
    images = np.stack([cv2.imread(str(dense_csv.parent / r[0]))[:, :, ::-1] for r in rows])
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).permute(0, 3, 1, 2).float()
            x = (x - 127.5) / 127.5
            out.append((model(x) + model(x.flip(3))).numpy())
    return np.concatenate(out), np.array([r[1] for r in rows]), np.array([r[2] for r in rows])


def training_stats(run_dir: Path) -> dict[str, float]:
    """Means over the last epoch's ``metrics.jsonl`` records of T_u, penalty and the per-group statistics."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not records:
        return {}
    last_epoch = max(r.get("epoch", 0) for r in records)
    last = [r for r in records if r.get("epoch", 0) == last_epoch]
    keys = {k for r in last for k, v in r.items()
            if isinstance(v, (int, float)) and (k in ("threshold", "penalty_mean", "loss", "instance_fpr_mean")
                                                or k.startswith("group_"))}
    return {k: float(np.mean([r[k] for r in last if k in r])) for k in sorted(keys)}


def run_one(seed: int, label: str, data: Path, out: Path, extra: list[str]) -> dict:
    """Train one method on one seed's data, evaluate it, cache and return the result."""
    from fpr_plugin.eval.dense import dense_fairness
    from fpr_plugin.train.config import load_config
    from fpr_plugin.train.trainer import train

    result_file = out / f"seed{seed}" / f"{_slug(label)}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    loss, overrides = METHODS[label]
    run_dir = out / f"seed{seed}" / _slug(label)
    if run_dir.exists():  # an interrupted run of this bench: start it again
        shutil.rmtree(run_dir)
    cfg = load_config(RECIPE, loss=loss, overrides=[f"rec={data / 'train'}", f"output={run_dir}", f"seed={seed}",
                                                    *overrides, *extra])
    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0
    emb, identities, groups = embed_dense(run_dir, data / "dense" / "dense.csv")
    dense = dense_fairness(emb, identities, groups, fprs=FPRS)
    at = {}
    for entry in dense.at_fpr:
        g = entry["groups"]
        at[f"{entry['target_fpr']:g}"] = {
            "tpr": sum(v["tp"] for v in g.values()) / sum(v["n_genuine"] for v in g.values()),
            "group_fpr_over_f": {name: v["fpr"] / entry["target_fpr"] for name, v in g.items()},
            "group_tpr": {name: v["tpr"] for name, v in g.items()},
            "summaries": entry["summaries"],
        }
    result = {"seed": seed, "method": label, "loss": loss, "overrides": list(overrides), "train_s": train_s,
              "at_fpr": at, "training": training_stats(run_dir)}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = result_file.with_suffix(".partial")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, result_file)
    return result


def _ms(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    text = f"{np.mean(vals):.3g} +- {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.2g}"
    return text + (f" ({len(values) - len(vals)} n/a)" if len(vals) < len(values) else "")


def _paired(results: list[dict], method: str, key: str) -> list[str]:
    """Mean +- std over seeds of (method - cosface, same seed) for std/f and TPR at overall FPR ``key``."""
    base = {r["seed"]: r["at_fpr"][key] for r in results if r["method"] == "cosface"}
    pairs = [(r["at_fpr"][key], base[r["seed"]]) for r in results if r["method"] == method and r["seed"] in base]
    if method == "cosface" or not pairs:
        return ["", ""]
    bias = [a["summaries"]["std_over_f"] - b["summaries"]["std_over_f"] for a, b in pairs
            if a["summaries"] and b["summaries"]]
    return [_ms(bias), _ms([a["tpr"] - b["tpr"] for a, b in pairs])]


def print_tables(results: list[dict], groups: list[str]) -> None:
    """Mean +- std over seeds of every measured figure, per method."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    seeds = sorted({r["seed"] for r in results})
    print(f"\nseeds {seeds}; mean +- std (ddof=1) over seeds; dense within-group impostor pairs")
    for f in FPRS:
        key = f"{f:g}"
        print(f"\n### global threshold at overall FPR {key}\n")
        head = ["method", "TPR", *[f"FPR/f {g}" for g in groups], "std/f (bias degree)", "max/min", "Gini",
                "paired d(std/f) vs cosface", "paired d(TPR)"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for m in methods:
            rs = [r["at_fpr"][key] for r in results if r["method"] == m]
            s = [r["summaries"] or {} for r in rs]
            cells = [m, _ms([r["tpr"] for r in rs]),
                     *[_ms([r["group_fpr_over_f"][g] for r in rs]) for g in groups],
                     _ms([x.get("std_over_f") for x in s]), _ms([x.get("max_min_ratio") for x in s]),
                     _ms([x.get("gini") for x in s]), *_paired(results, m, key)]
            print("| " + " | ".join(cells) + " |")
    print("\n### training, last epoch (metrics.jsonl): T_u, penalty, instance FPR and above-threshold share per group\n")
    head = ["method", "T_u", "penalty", *[f"inst. FPR {g}" for g in groups], *[f"share {g}" for g in groups], "train s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m in methods:
        ts = [r["training"] for r in results if r["method"] == m]
        cells = [m, _ms([t.get("threshold") for t in ts]), _ms([t.get("penalty_mean") for t in ts]),
                 *[_ms([t.get(f"group_fpr_mean/{g}") for t in ts]) for g in groups],
                 *[_ms([t.get(f"group_above_share/{g}") for t in ts]) for g in groups],
                 _ms([r["train_s"] for r in results if r["method"] == m])]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                        help=f"subset of: {', '.join(METHODS)}")
    parser.add_argument("--size", default="demo", help="synthetic size (demo or tiny)")
    parser.add_argument("--design", default="rare", help="synthetic design (rare, dense, control)")
    parser.add_argument("--output", default="bench_out/fairness_synthetic", help="data, runs and cached results")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for every run (e.g. num_epoch=8)")
    parser.add_argument("--cached-only", action="store_true",
                        help="print the tables from the results already in --output, train nothing")
    args = parser.parse_args(argv)

    from fpr_plugin.data.synthetic import DESIGNS, make_synthetic

    out = Path(args.output)
    results = []
    start = time.perf_counter()
    data = {seed: out / f"data_{args.design}_{args.size}_seed{seed}" for seed in args.seeds}
    if args.cached_only:
        results = [json.loads(p.read_text()) for label in args.methods for seed in args.seeds
                   for p in [out / f"seed{seed}" / f"{_slug(label)}.json"] if p.is_file()]
        print_tables(results, [g.name for g in DESIGNS[args.design]])
        return 0
    for seed, folder in data.items():
        if not (folder / "synthetic.json").is_file():
            make_synthetic(folder, seed=seed, size=args.size, design=args.design, overwrite=True)
    # method by method, so that an interrupted bench has every seed of the first methods
    for label in args.methods:
        for seed in args.seeds:
            print(f"[{time.perf_counter() - start:6.0f} s] seed {seed}: {label}", flush=True)
            results.append(run_one(seed, label, data[seed], out, args.extra))
    print_tables(results, [g.name for g in DESIGNS[args.design]])
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
