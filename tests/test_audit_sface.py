"""bench/audit_sface.py: its table rows (FPR/f, TPR, summaries) and the printed table."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("audit_sface", Path(__file__).parents[1] / "bench" / "audit_sface.py")
audit = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(audit)

AT_FPR = [
    {"target_fpr": 1e-4, "measurable": False, "n_impostor": 5000},
    {"target_fpr": 1e-2, "measurable": True, "threshold": 0.51234, "n_impostor": 5000,
     "groups": {"A": {"fpr": 0.005, "tpr": 0.9, "low_count": False},
                "B": {"fpr": 0.015, "tpr": 0.8, "low_count": True}},
     "summaries": {"std_over_f": 0.7071, "max_min_ratio": 3.0, "gini": 0.5}},
]


def test_rows_divide_each_group_fpr_by_f():
    rows = audit.protocol_rows(AT_FPR)
    assert rows[0] == {"target_fpr": 1e-4, "measurable": False, "n_impostor": 5000}
    assert rows[1]["groups"]["A"]["fpr_over_f"] == pytest.approx(0.5)
    assert rows[1]["groups"]["B"]["fpr_over_f"] == pytest.approx(1.5)
    assert (rows[1]["std_over_f"], rows[1]["max_min_ratio"], rows[1]["threshold"]) == (0.7071, 3.0, 0.51234)


def test_table_has_one_line_per_fpr():
    table = audit.markdown_table(audit.protocol_rows(AT_FPR)).splitlines()
    assert table[0] == "| f | threshold | A | B | std/f |"
    assert table[2].startswith("| 1e-04 | not measurable (< 1/5000) |")
    assert table[3] == "| 1e-02 | 0.5123 | 0.50 f (90.0 %) | 1.50 f (80.0 %)* | 0.71 |"


def _seed_run(std_raw, std_cal, dense_raw):
    def rows(std, dense):
        return [{"target_fpr": 1e-3, "measurable": True, "threshold": 0.5, "std_over_f": std,
                 "groups": {"A": {"fpr_over_f": 0.5, "tpr": 0.9}, "Dense": {"fpr_over_f": dense, "tpr": 0.6}}},
                {"target_fpr": 1e-4, "measurable": False, "n_impostor": 10}]
    return {"models": {"sface": {"dense-dense": {"dense": rows(std_raw, dense_raw)}},
                       "sface+faircal": {"dense-dense": {"dense": rows(std_cal, dense_raw - 0.1)}}}}


def test_over_seeds_means_intervals_and_paired_calibration_change():
    import math

    runs = [_seed_run(1.3, 1.2, 3.0), _seed_run(1.4, 1.25, 3.2), _seed_run(1.2, 1.15, 2.9)]
    out = audit.over_seeds(runs)
    raw, cal = out["sface"]["dense-dense dense"], out["sface+faircal"]["dense-dense dense"]
    assert set(raw) == {"0.001"}  # 1e-4 is not measurable on every seed: left out
    deltas = [-0.1, -0.15, -0.05]
    mean = sum(deltas) / 3
    half = 4.302652729911275 * math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2) / math.sqrt(3)
    assert cal["0.001"]["delta_std_over_f_vs_raw"] == pytest.approx([mean, half, 3])
    assert raw["0.001"]["delta_std_over_f_vs_raw"] is None
    assert raw["0.001"]["group_fpr_over_f"]["Dense"][0] == pytest.approx((3.0 + 3.2 + 2.9) / 3)
    assert raw["0.001"]["std_over_f"][2] == 3 and math.isnan(audit._mean_ci([1.0])[1])
