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
