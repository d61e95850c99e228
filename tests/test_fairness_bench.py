"""bench/fairness_synthetic.py: its statistics, per-identity FPR, validity checks and resumable results file."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location("fairness_synthetic", Path(__file__).parents[1] / "bench" / "fairness_synthetic.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_mean_ci_is_the_student_t_interval():
    values = [1.0, 2.0, 4.0, 7.0, 11.0]
    mean, half, n = bench.mean_ci(values)
    sd = math.sqrt(sum((v - 5.0) ** 2 for v in values) / 4)
    assert (mean, n) == (5.0, 5)
    assert half == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)  # t_{0.975, 4}
    assert bench.mean_ci([3.0, None, float("nan")])[2] == 1 and math.isnan(bench.mean_ci([3.0])[1])
    assert bench.fmt_ci([1.0, None]) == "1 (1 n/a)"


def test_identity_fpr_matches_a_pair_loop():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(18, 4))
    ids = np.array([f"id{i // 3}" for i in range(18)])
    groups = np.array(["A"] * 9 + ["B"] * 9)
    out = bench.identity_fpr(emb, ids, groups, threshold=0.2)
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for g in ("A", "B"):
        members = [i for i in range(18) if groups[i] == g]
        expected = []
        for name in sorted({ids[i] for i in members}):
            own = [i for i in members if ids[i] == name]
            pairs = [(i, j) for i in own for j in members if ids[j] != name]
            expected.append(sum(float(x[i] @ x[j]) > 0.2 for i, j in pairs) / len(pairs))
        assert out[g] == pytest.approx(expected)


def _record(seed, design, fpr_over_f, shares, loss=2.0, method="cosface"):
    return {"design": design, "size": "wide", "seed": seed, "method": method,
            "at_fpr": {"0.001": {"group_fpr_over_f": fpr_over_f,
                                 "summaries": {"max_min_ratio": 2.0, "std_over_f": 0.3}}},
            "training": {"loss": loss, **{f"group_above_share/{g}": s for g, s in shares.items()}}}


GROUPS = ["Common1", "Common2", "Common3", "Dense"]


def test_validity_passes_and_fails_on_each_check(capsys):
    good = [_record(s, "dense", {"Common1": 0.5, "Common2": 0.6, "Common3": 0.7, "Dense": 2.2},
                    {"Common1": 0.2, "Common2": 0.2, "Common3": 0.2, "Dense": 0.4}) for s in range(5)]
    assert bench.validity(good, "dense", "wide", GROUPS) == ["classes"]
    out = capsys.readouterr().out
    assert "VALID as a benchmark for the penalty over classes" in out
    assert out.count("[FAIL]") == 1 and "pairs signal on every seed (not measured on seeds [0, 1, 2, 3, 4])" in out
    low_share = [dict(r, training={**r["training"], "group_above_share/Dense": 0.3}) for r in good]
    assert bench.validity(low_share, "dense", "wide", GROUPS) == []  # 30 % < 1.4 x 25 %
    # the pair signal sees Dense where the class signal does not: valid for the pair form only
    pairs_see_it = [dict(r, training={**r["training"], "pairs_group_above_share/Dense": 0.36}) for r in low_share]
    assert bench.validity(pairs_see_it, "dense", "wide", GROUPS) == ["pairs"]
    one_seed_low = pairs_see_it[:4] + [dict(pairs_see_it[4], training={**pairs_see_it[4]["training"],
                                                                       "pairs_group_above_share/Dense": 0.34})]
    assert bench.validity(one_seed_low, "dense", "wide", GROUPS) == []
    both = [dict(r, training={**r["training"], "pairs_group_above_share/Dense": 0.5}) for r in good]
    assert bench.validity(both, "dense", "wide", GROUPS) == ["classes", "pairs"]
    saturated = [dict(r, training={**r["training"], "loss": 0.1}) for r in both]
    assert bench.validity(saturated, "dense", "wide", GROUPS) == []
    assert bench.validity(both[:4], "dense", "wide", GROUPS) == []  # fewer than 5 seeds
    other_highest = both[:4] + [dict(both[4], at_fpr={"0.001": {**both[4]["at_fpr"]["0.001"], "group_fpr_over_f": {
        "Common1": 2.5, "Common2": 0.6, "Common3": 0.7, "Dense": 2.2}}})]
    capsys.readouterr()
    assert bench.validity(other_highest, "dense", "wide", GROUPS) == []
    out = capsys.readouterr().out
    assert out.count("[FAIL]") == 1 and "NOT VALID" in out and "[FAIL] Dense is the highest" in out


def test_control_check_is_whether_every_group_is_within_noise_of_one():
    groups = ["A", "B", "C", "D"]
    noisy = [_record(s, "control", dict(zip(groups, v)), {g: 0.25 for g in groups})
             for s, v in enumerate([(1.2, 0.8, 1.1, 0.9), (0.8, 1.3, 0.9, 1.0), (1.0, 0.9, 1.0, 1.1),
                                      (1.1, 1.0, 0.8, 1.1), (0.9, 1.0, 1.2, 0.9)])]
    assert bench.validity(noisy, "control", "wide", groups)
    gap = [_record(s, "control", dict(zip(groups, v)), {g: 0.25 for g in groups})
           for s, v in enumerate([(2.0, 0.6, 0.7, 0.7), (2.1, 0.6, 0.6, 0.7), (1.9, 0.7, 0.7, 0.7),
                                    (2.2, 0.6, 0.6, 0.6), (2.0, 0.7, 0.6, 0.7)])]
    assert not bench.validity(gap, "control", "wide", groups)


def test_results_file_appends_and_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    bench.append_result(path, {"key": "a", "x": 1})
    bench.append_result(path, {"key": "b", "x": 2})
    with open(path, "a") as handle:
        handle.write('{"key": "c", "x"')  # a write cut off by a kill
    assert [r["key"] for r in bench.load_results(path)] == ["a", "b"]
    bench.append_result(path, {"key": "d", "x": 4})  # the next run starts on a line of its own
    assert [r["key"] for r in bench.load_results(path)] == ["a", "b", "d"]
    assert bench.run_key("dense", "wide", 0, "cosface", ["b=1", "a=2"]) == json.dumps(["dense", "wide", 0, "cosface", ["a=2", "b=1"]])


def test_seed_failures_names_each_failed_check():
    shares = {"Common1": 0.36, "Common2": 0.17, "Common3": 0.15, "Dense": 0.32}
    record = dict(_record(0, "dense", {"Common1": 0.6, "Common2": 0.4, "Common3": 0.3, "Dense": 2.6}, shares), size="wide")
    assert bench.seed_failures(record, "dense", GROUPS) == [
        "Dense holds 32.0 % (classes), n/a (pairs) of above-T_u entries, < 1.4 x 25.0 %"]
    record["training"]["pairs_group_above_share/Dense"] = 0.34
    assert bench.seed_failures(record, "dense", GROUPS) == [
        "Dense holds 32.0 % (classes), 34.0 % (pairs) of above-T_u entries, < 1.4 x 25.0 %"]
    record["training"]["pairs_group_above_share/Dense"] = 0.36  # one form's signal sees Dense: the seed passes
    assert bench.seed_failures(record, "dense", GROUPS) == []
    record["training"]["pairs_group_above_share/Dense"] = 0.2
    record["training"]["group_above_share/Dense"] = 0.36
    assert bench.seed_failures(record, "dense", GROUPS) == []
    record["training"]["loss"] = 0.2
    record["at_fpr"]["0.001"]["group_fpr_over_f"]["Common1"] = 3.0
    assert [f.split(" ")[0] for f in bench.seed_failures(record, "dense", GROUPS)] == ["saturated", "Common1"]
