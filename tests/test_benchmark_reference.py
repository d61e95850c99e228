"""bench/benchmark_reference.py and fpr_plugin.benchmark_reference: the 5-seed table fpr-demo prints."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from fpr_plugin.benchmark_reference import REFERENCE_FILE, format_reference, load_reference

_SPEC = importlib.util.spec_from_file_location("benchmark_reference_bench",
                                               Path(__file__).parents[1] / "bench" / "benchmark_reference.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # two-sided 95 % Student-t quantiles


def loop_ci(values):
    """Mean and t-interval half-width, with explicit sums."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T_975[n - 1] * sd / math.sqrt(n)


def _run(method, seed, tpr, dense, std, calibration=None):
    at = {key: {"tpr": tpr, "group_fpr_over_f": {"Common1": 0.5, "Dense": dense}, "summaries": {"std_over_f": std}}
          for key in ("0.0001", "0.001", "0.01")}
    record = {"design": "tight", "size": "wide", "seed": seed, "method": method, "extra": [], "at_fpr": at}
    if calibration is not None:
        record.update(calibration=calibration, models_from="bench/results/x.jsonl")
    return record


def test_build_gives_means_intervals_and_paired_changes_over_seeds():
    cos = [(0.97, 2.6, 1.10), (0.96, 2.8, 1.20), (0.98, 2.5, 1.00)]
    pen = [(0.98, 2.1, 0.80), (0.97, 2.3, 0.85), (0.975, 2.0, 0.70)]
    fairness = [_run("cosface", s, *v) for s, v in enumerate(cos)] + \
               [_run("fpr pairs a0.1 g1e-2", s, *v) for s, v in enumerate(pen)] + \
               [_run("cosface", 9, 0.5, 9.0, 9.0) | {"extra": ["num_epoch=1"]}]  # another setting: left out
    raw = [0.9, 1.3, 1.1]
    faircal = [0.85, 1.35, 0.9]
    calibration = [_run("cosface", s, 0.9, 2.0, v, "raw") for s, v in enumerate(raw)] + \
                  [_run("cosface", s, 0.9, 2.0, v, "faircal") for s, v in enumerate(faircal)] + \
                  [_run("cosface", 0, 0.9, 2.0, 5.0, "fsn") | {"models_from": "elsewhere"}]  # other models: left out
    out = bench.build(fairness, calibration, "bench/results/x.jsonl")
    assert set(out["methods"]) == {"cosface", "fpr_penalty_pairs"}
    c, p = out["methods"]["cosface"], out["methods"]["fpr_penalty_pairs"]
    assert c["seeds"] == p["seeds"] == [0, 1, 2]
    for got, values in [(c["at_fpr"]["0.001"]["std_over_f"], [v[2] for v in cos]),
                        (p["at_fpr"]["0.001"]["hard_fpr_over_f"], [v[1] for v in pen]),
                        (p["at_fpr"]["0.01"]["delta_std_over_f"], [a[2] - b[2] for a, b in zip(pen, cos)]),
                        (p["at_fpr"]["0.001"]["delta_tpr"], [a[0] - b[0] for a, b in zip(pen, cos)]),
                        (c["calibrations"]["faircal"]["0.001"]["delta_std_over_f"], [a - b for a, b in zip(faircal, raw)])]:
        mean, half = loop_ci(values)
        assert got[0] == pytest.approx(mean, abs=1e-12) and got[1] == pytest.approx(half, rel=1e-9) and got[2] == 3
    assert "delta_std_over_f" not in c["at_fpr"]["0.001"] and set(c["calibrations"]) == {"faircal"}
    table = format_reference(out)
    assert "| fpr_penalty_pairs | 0.975 ± 0.012 | 2.13 ± 0.38 | 0.783 ± 0.19 | -0.32 ± 0.072 |" in table
    assert "| Δ std/f from faircal (test half) |" in table and "| n/a |" in table  # the pairs runs: no calibration


def test_the_shipped_reference_is_what_the_committed_results_give():
    assert bench.main(["--check"]) == 0, "run: python bench/benchmark_reference.py"
    reference = json.loads(REFERENCE_FILE.read_text())
    assert set(reference["methods"]) == set(bench.DEMO_LABELS)
    assert all(len(entry["seeds"]) >= 5 for entry in reference["methods"].values())


def test_load_reference_only_for_its_design_and_size(tmp_path):
    assert load_reference("tight", "wide") is not None
    assert load_reference("tight", "tiny") is None and load_reference("rare", "wide") is None
    assert load_reference("tight", "wide", tmp_path / "absent.json") is None


def test_the_demo_prints_every_default_method_of_the_shipped_reference():
    from fpr_plugin.demo import DEFAULT_DESIGN, DEFAULT_LOSSES, DEFAULT_SIZE

    table = format_reference(load_reference(DEFAULT_DESIGN, DEFAULT_SIZE), DEFAULT_LOSSES)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[0][2:] for row in rows] == list(DEFAULT_LOSSES)
    assert "Δ std/f from faircal" in table and "n/a" not in table
