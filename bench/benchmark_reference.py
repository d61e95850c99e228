"""The 5-seed figures that ``fpr-demo`` prints beside its one-seed table, written from the committed results.

The demo trains each method once, on one seed; one seed is one draw. This
script turns the benchmark's results files into the small table the demo
prints after its own (``fpr_plugin/benchmark_reference.json``, package data):
for each demo method, the mean and 95 % t-interval over seeds of TPR, the
hard group's FPR/f and std/f, the paired change of std/f and TPR against
CosFace on the same seed, and the paired change of std/f that each post-hoc
calibration brings to the same run (``bench/calibration_synthetic.py``: on the
test half of the test identities).

    python bench/benchmark_reference.py            # write fpr_plugin/benchmark_reference.json
    python bench/benchmark_reference.py --check    # exit 1 when the shipped file is not what the results give
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fairness_synthetic as fs  # noqa: E402 - the benchmark's own statistics (mean_ci) and results loader

FAIRNESS = fs.REPO / "bench" / "results" / "fairness_synthetic_replication.jsonl"
CALIBRATION = fs.REPO / "bench" / "results" / "calibration_synthetic.jsonl"
OUTPUT = fs.REPO / "fpr_plugin" / "benchmark_reference.json"
#: fpr-demo's method names -> the benchmark's labels of the same settings
DEMO_LABELS = {"cosface": "cosface", "fpr_penalty": "fpr a0.1 g1e-4", "fpr_penalty_pairs": "fpr pairs a0.1 g1e-2"}


def _ci(values: list[float]) -> list[float] | None:
    mean, half, n = fs.mean_ci(values)
    return None if n == 0 else [mean, half, n]


def _std(record: dict, key: str) -> float | None:
    summaries = record["at_fpr"][key]["summaries"]
    return None if not summaries else summaries.get("std_over_f")


def build(fairness: list[dict], calibration: list[dict], models_from: str, design: str = "tight",
          size: str = "wide") -> dict:
    """The reference table of ``design``/``size`` from the two benchmarks' records (see the module docstring)."""
    hard = fs.HARD_GROUP[design]
    runs = {(r["method"], r["seed"]): r for r in fairness
            if r["design"] == design and r["size"] == size and not r.get("extra")}
    calibrated = {(r["method"], r["calibration"], r["seed"]): r for r in calibration
                  if r["design"] == design and r["size"] == size and r.get("models_from") == models_from}
    out = {"design": design, "size": size, "hard_group": hard, "fprs": [f"{f:g}" for f in fs.FPRS],
           "methods": {}}
    for name, label in DEMO_LABELS.items():
        seeds = sorted(seed for method, seed in runs if method == label)
        if not seeds:
            continue
        entry = {"label": label, "seeds": seeds, "at_fpr": {}, "calibrations": {}}
        for key in out["fprs"]:
            rs = [runs[label, s] for s in seeds]
            figures = {"tpr": _ci([r["at_fpr"][key]["tpr"] for r in rs]),
                       "hard_fpr_over_f": _ci([r["at_fpr"][key]["group_fpr_over_f"][hard] for r in rs]),
                       "std_over_f": _ci([_std(r, key) for r in rs])}
            if label != "cosface":
                pairs = [(runs[label, s], runs["cosface", s]) for s in seeds if ("cosface", s) in runs]
                figures["delta_std_over_f"] = _ci([None if _std(a, key) is None or _std(b, key) is None
                                                   else _std(a, key) - _std(b, key) for a, b in pairs])
                figures["delta_tpr"] = _ci([a["at_fpr"][key]["tpr"] - b["at_fpr"][key]["tpr"] for a, b in pairs])
            entry["at_fpr"][key] = figures
        for method_calibration in sorted({c for m, c, _ in calibrated if m == label and c != "raw"}):
            per_f = {}
            for key in out["fprs"]:
                deltas = []
                for s in seeds:
                    a, b = calibrated.get((label, method_calibration, s)), calibrated.get((label, "raw", s))
                    if a is not None and b is not None and _std(a, key) is not None and _std(b, key) is not None:
                        deltas.append(_std(a, key) - _std(b, key))
                per_f[key] = {"delta_std_over_f": _ci(deltas)}
            entry["calibrations"][method_calibration] = per_f
        out["methods"][name] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    args = parser.parse_args(argv)
    models_from = str(FAIRNESS.relative_to(fs.REPO))
    reference = build(fs.load_results(FAIRNESS), fs.load_results(CALIBRATION), models_from)
    reference["sources"] = [models_from, str(CALIBRATION.relative_to(fs.REPO))]
    text = json.dumps(reference, indent=1, sort_keys=True) + "\n"
    if args.check:
        same = OUTPUT.is_file() and OUTPUT.read_text(encoding="utf-8") == text
        print(f"{OUTPUT.relative_to(fs.REPO)}: {'up to date' if same else 'differs from the results files'}")
        return 0 if same else 1
    from fpr_plugin.atomic import atomic_write
    from fpr_plugin.benchmark_reference import format_reference

    atomic_write(OUTPUT, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    print(format_reference(reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
