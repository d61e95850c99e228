"""Post-hoc calibration (FSN, FairCal, Oracle) on the fairness benchmark's trained models.

For every finished run of ``bench/fairness_synthetic.py`` (its record in
``bench/results/fairness_synthetic.jsonl`` and its ``model.pt`` in
``bench_out/fairness_synthetic/<design>_<size>/seed<k>/<slug(method)>/``), the
held-out dense set (``data_<design>_<size>_seed<k>/dense/dense.csv``) is embedded
with the run's model exactly as there (:func:`fairness_synthetic.embed_dense`,
flip test), and its test identities are split per group by a seeded permutation
(seed = the run's seed) into a calibration half and a test half. On the test
half, at f = 1e-4, 1e-3, 1e-2 and one global threshold over all within-group
impostor pairs (:func:`fpr_plugin.eval.dense.dense_fairness` for the raw scores,
:func:`fpr_plugin.eval.calibration.protocols.calibrated_dense` for the
calibrated ones): raw, +FSN and +FairCal (label-free, K = ``--clusters``,
default 20: the calibration half holds about 2,400 images, so K = 100 would leave
~24 images a cluster) and Oracle (the true groups). FSN is fitted at each f
separately (its thresholds are tuned to one FPR); FairCal and Oracle once.

One JSON line per (design, seed, base method, calibration) goes to
``bench/results/calibration_synthetic.jsonl``; lines already there are skipped.
``--report`` prints mean ± 95 % t-interval over seeds and the paired difference
against the raw scores of the same run.

    python bench/calibration_synthetic.py --seeds 0 1 2 3 4
    python bench/calibration_synthetic.py --design tight \
        --fairness-results bench/results/fairness_synthetic_replication.jsonl   # the replication's models
    python bench/calibration_synthetic.py --report

Each line records ``models_from``: the fairness results file whose runs were calibrated.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fairness_synthetic as fs  # noqa: E402 - the benchmark's own helpers (embed_dense, mean_ci, tables)

RESULTS = fs.REPO / "bench" / "results" / "calibration_synthetic.jsonl"
WORK = fs.REPO / "bench_out" / "fairness_synthetic"
CALIBRATIONS = ("raw", "fsn", "faircal", "oracle")
DEFAULT_METHODS = ("cosface", "fpr pairs a0.1 g1e-2", "fpr a0.1 g1e-4")


def key_of(design: str, size: str, seed: int, method: str, calibration: str, clusters: int) -> str:
    """The identity of one result line."""
    return json.dumps([design, size, seed, method, calibration, clusters])


def split_identities(identities: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (calibration, test): per group, a seeded permutation of its identities cut in two halves."""
    rng = np.random.default_rng(seed)
    calib = np.zeros(identities.shape[0], bool)
    for g in dict.fromkeys(groups.tolist()):
        ids = np.array(sorted(set(identities[groups == g].tolist())))
        chosen = set(ids[rng.permutation(ids.shape[0])[: ids.shape[0] // 2]].tolist())
        calib |= (groups == g) & np.isin(identities, list(chosen))
    return calib, ~calib


def _figures(entry: dict) -> dict:
    g, f = entry["groups"], entry["target_fpr"]
    return {"threshold": entry["threshold"],
            "tpr": sum(v["tp"] for v in g.values()) / sum(v["n_genuine"] for v in g.values()),
            "group_fpr_over_f": {name: v["fpr"] / f for name, v in g.items()},
            "group_tpr": {name: v["tpr"] for name, v in g.items()},
            "group_fp": {name: v["fp"] for name, v in g.items()},
            "summaries": entry["summaries"]}


def run_one(design: str, size: str, seed: int, method: str, clusters: int, work: Path, todo: list[str]) -> list[dict]:
    """Every calibration in ``todo`` for one finished run; returns the result records."""
    from fpr_plugin.eval.calibration import FSN, FairCal, FitData, Oracle
    from fpr_plugin.eval.calibration.fitdata import all_pairs
    from fpr_plugin.eval.calibration.protocols import calibrated_dense
    from fpr_plugin.eval.dense import dense_fairness

    run_dir = work / f"{design}_{size}" / f"seed{seed}" / fs._slug(method)
    dense_csv = work / f"data_{design}_{size}_seed{seed}" / "dense" / "dense.csv"
    emb, identities, groups = fs.embed_dense(run_dir, dense_csv)
    groups = groups.astype(object)
    cal, test = split_identities(identities, groups, seed)
    pairs, issame = all_pairs(identities[cal])
    data = FitData(emb[cal], pairs, issame, groups[cal], f"{design}_{size}_seed{seed} calibration half")
    out = []
    for name in todo:
        t0 = time.perf_counter()
        at = {}
        if name == "raw":
            entries = dense_fairness(emb[test], identities[test], groups[test], fs.FPRS).at_fpr
        elif name == "fsn":  # FSN's thresholds are tuned to one FPR: one fit per f
            entries = [calibrated_dense(emb[test], identities[test], groups[test],
                                        FSN.fit(data, clusters=clusters, fpr=f, seed=seed), [f]).at_fpr[0]
                       for f in fs.FPRS]
        else:
            calib = FairCal.fit(data, clusters=clusters, seed=seed) if name == "faircal" else Oracle.fit(data)
            entries = calibrated_dense(emb[test], identities[test], groups[test], calib, fs.FPRS).at_fpr
        for entry in entries:
            at[f"{entry['target_fpr']:g}"] = _figures(entry)
        out.append({"key": key_of(design, size, seed, method, name, clusters), "design": design, "size": size,
                    "seed": seed, "method": method, "calibration": name, "clusters": clusters,
                    "n_calibration_images": int(cal.sum()), "n_test_images": int(test.sum()),
                    "seconds": round(time.perf_counter() - t0, 1), "at_fpr": at})
    return out


def finished_runs(design: str, size: str, fairness_results: Path = fs.RESULTS) -> set[tuple[int, str]]:
    """``(seed, method)`` of every run the fairness benchmark recorded as done in ``fairness_results``."""
    return {(r["seed"], r["method"]) for r in fs.load_results(fairness_results)
            if r["design"] == design and r["size"] == size and not r.get("extra")}


def print_report(results: list[dict], design: str, size: str, clusters: int) -> None:
    """Mean ± 95 % t-interval over seeds, and paired differences against the raw scores of the same run."""
    results = [r for r in results if r["design"] == design and r["size"] == size and r["clusters"] == clusters]
    if not results:
        print(f"no results for design {design}, size {size}, K={clusters}")
        return
    seeds = sorted({r["seed"] for r in results})
    groups = list(results[0]["at_fpr"][f"{fs.FPRS[0]:g}"]["group_fpr_over_f"])
    raw = {(r["seed"], r["method"]): r for r in results if r["calibration"] == "raw"}
    methods = list(dict.fromkeys(r["method"] for r in results))
    print(f"\n## calibration on design {design}, size {size}, K={clusters}: seeds {seeds}; test half of the "
          "test identities; mean ± 95 % t-interval over seeds")
    for f in fs.FPRS:
        key = f"{f:g}"
        print(f"\n### f = {key}\n")
        head = ["method", "calibration", "n", "TPR", *[f"{g} FPR/f" for g in groups], "std/f", "max/min", "Gini",
                "Δstd/f vs raw", "ΔTPR vs raw"]
        rows = []
        for method in methods:
            for name in CALIBRATIONS:
                rs = [r for r in results if r["method"] == method and r["calibration"] == name]
                if not rs:
                    continue

                def summary(r: dict, s: str):
                    v = r["at_fpr"][key]["summaries"]
                    return None if not v else v.get(s)

                def paired(value) -> list:
                    out = []
                    for r in rs:
                        b = raw.get((r["seed"], method))
                        if b is not None:
                            a_v, b_v = value(r), value(b)
                            out.append(None if a_v is None or b_v is None else a_v - b_v)
                    return out

                rows.append([method, name, str(len(rs)), fs.fmt_ci([r["at_fpr"][key]["tpr"] for r in rs]),
                             *[fs.fmt_ci([r["at_fpr"][key]["group_fpr_over_f"][g] for r in rs]) for g in groups],
                             fs.fmt_ci([summary(r, "std_over_f") for r in rs]),
                             fs.fmt_ci([summary(r, "max_min_ratio") for r in rs]),
                             fs.fmt_ci([summary(r, "gini") for r in rs]),
                             "" if name == "raw" else fs.fmt_ci(paired(lambda r: summary(r, "std_over_f"))),
                             "" if name == "raw" else fs.fmt_ci(paired(lambda r: r["at_fpr"][key]["tpr"]))])
        fs._table(head, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--design", default="tighter")
    p.add_argument("--size", default="wide")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--clusters", type=int, default=20, help="k-means K of FSN and FairCal (default 20)")
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--fairness-results", type=Path, default=fs.RESULTS,
                   help="the fairness benchmark's results file whose runs' models are calibrated "
                        f"(default {fs.RESULTS.relative_to(fs.REPO)})")
    p.add_argument("--report", action="store_true", help="print the tables from the results file only")
    args = p.parse_args(argv)
    if not args.report:
        done = {r["key"] for r in fs.load_results(args.results)}
        finished = finished_runs(args.design, args.size, args.fairness_results)
        for seed in args.seeds:
            for method in args.methods:
                todo = [c for c in CALIBRATIONS
                        if key_of(args.design, args.size, seed, method, c, args.clusters) not in done]
                run_dir = args.work / f"{args.design}_{args.size}" / f"seed{seed}" / fs._slug(method)
                if not todo:
                    continue
                if (seed, method) not in finished or not (run_dir / "model.pt").is_file():
                    print(f"skip {args.design} seed {seed} {method}: no finished run in {run_dir}")
                    continue
                for record in run_one(args.design, args.size, seed, method, args.clusters, args.work, todo):
                    source = args.fairness_results.resolve()
                    record["models_from"] = str(source.relative_to(fs.REPO) if source.is_relative_to(fs.REPO) else source)
                    fs.append_result(args.results, record)
                    print(f"{args.design} seed {seed} {method} {record['calibration']}: std/f at 1e-3 = "
                          f"{(record['at_fpr']['0.001']['summaries'] or {}).get('std_over_f')} "
                          f"({record['seconds']} s)")
    print_report(fs.load_results(args.results), args.design, args.size, args.clusters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
