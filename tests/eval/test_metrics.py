"""fpr_plugin.eval.metrics against sklearn, brute-force loops and hand-computed cases."""
import math
import statistics

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.model_selection import KFold

from fpr_plugin.eval import metrics


def _scores(seed, n=400, ties=True):
    rng = np.random.default_rng(seed)
    issame = rng.random(n) < 0.5
    scores = rng.normal(size=n) * 0.3 + issame * 0.5
    return (scores.round(1) if ties else scores), issame


# ----------------------------------------------------------------------------- ROC
@pytest.mark.parametrize("ties", [True, False])
def test_roc_curve_matches_sklearn(ties):
    scores, issame = _scores(0, ties=ties)
    fpr, tpr, thr = metrics.roc_curve(scores, issame)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(issame, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    scores, issame = _scores(1)
    fpr, tpr, _ = metrics.roc_curve(scores, issame)
    assert metrics.auc(fpr, tpr) == pytest.approx(roc_auc_score(issame, scores))


@pytest.mark.parametrize("f", [0.01, 0.05, 0.1, 0.3])
def test_tpr_at_fpr_is_best_sklearn_point_under_target(f):
    scores, issame = _scores(2, ties=True)
    sk_fpr, sk_tpr, _ = sk_roc_curve(issame, scores, drop_intermediate=False)
    assert metrics.tpr_at_fpr(scores, issame, f) == pytest.approx(sk_tpr[sk_fpr <= f].max())


def test_roc_at_fprs_takes_best_point_at_or_below_each_grid_value():
    fpr = np.array([0.0, 0.1, 0.1, 0.5, 1.0])
    tpr = np.array([0.0, 0.3, 0.6, 0.8, 1.0])
    got = metrics.roc_at_fprs(fpr, tpr, [0.05, 0.1, 0.4, 1.0])
    np.testing.assert_allclose(got, [0.0, 0.6, 0.6, 1.0])


# ----------------------------------------------------------------------------- threshold at FPR
def test_threshold_at_fpr_hand_case():
    impostors = [0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.5, 0.4, 0.0]  # 10 impostors
    thr, k = metrics.threshold_at_fpr(impostors, 0.2)  # k = 2: accept 0.9 and 0.8
    assert (thr, k) == (0.7, 2)
    thr, k = metrics.threshold_at_fpr(impostors, 0.25)  # floor(2.5) = 2
    assert (thr, k) == (0.7, 2)
    thr, k = metrics.threshold_at_fpr(impostors, 0.05)  # below 1/10: not measurable, nothing accepted
    assert (thr, k) == (0.9, 0)


def test_threshold_at_fpr_with_ties_never_exceeds_target():
    impostors = np.array([0.5] * 5 + [0.1] * 5)
    thr, k = metrics.threshold_at_fpr(impostors, 0.3)  # k = 3 but 5 impostors tie at 0.5
    assert k == 3 and thr == 0.5
    assert np.mean(impostors > thr) == 0.0  # cannot accept 3 of the 5 tied ones


def test_rank_at_fpr_survives_float_rounding():
    assert 0.29 * 100 < 29  # the trap
    assert metrics.rank_at_fpr(0.29, 100) == 29
    assert metrics.rank_at_fpr(1e-3, 12000) == 12


# ----------------------------------------------------------------------------- k-fold accuracy
def _brute_best_threshold(scores, issame):
    values = sorted(set(float(s) for s in scores))
    candidates = [math.inf] + [(values[i] + values[i + 1]) / 2 for i in range(len(values) - 2, -1, -1)] + [-math.inf]
    best_t, best_correct = None, -1
    for t in candidates:  # from the highest threshold down; keep the first maximum
        correct = sum((s > t) == y for s, y in zip(scores, issame))
        if correct > best_correct:
            best_t, best_correct = t, correct
    return best_t


def _brute_kfold(scores, issame, n_folds=10):
    accs = []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(scores):
        t = _brute_best_threshold(scores[train], issame[train])
        accs.append(sum((scores[i] > t) == issame[i] for i in test) / len(test))
    return sum(accs) / len(accs), accs


def test_best_accuracy_threshold_hand_case():
    scores = [0.9, 0.8, 0.4, 0.35, 0.3, 0.1]
    issame = [True, True, False, True, False, False]
    thr, acc = metrics.best_accuracy_threshold(scores, issame)
    # cut between 0.8 and 0.4 and between 0.35 and 0.3 both give 5/6; the higher one wins
    assert thr == pytest.approx(0.6) and acc == pytest.approx(5 / 6)


def test_best_accuracy_threshold_extremes():
    assert metrics.best_accuracy_threshold([0.2, 0.5], [True, True]) == (-np.inf, 1.0)
    assert metrics.best_accuracy_threshold([0.2, 0.5], [False, False]) == (np.inf, 1.0)


@pytest.mark.parametrize("seed,n", [(3, 200), (4, 203), (5, 60)])
def test_kfold_accuracy_matches_brute_force(seed, n):
    scores, issame = _scores(seed, n=n)
    res = metrics.kfold_accuracy(scores, issame)
    mean, accs = _brute_kfold(scores, issame)
    assert res.accuracy == pytest.approx(mean)
    np.testing.assert_allclose(res.fold_accuracies, accs)


def test_consecutive_folds_match_sklearn_kfold():
    folds = metrics.consecutive_folds(6000, 10)
    assert np.all(np.bincount(folds) == 600)
    assert np.all(folds[:600] == 0) and np.all(folds[-600:] == 9)
    uneven = metrics.consecutive_folds(23, 10)
    for fold, (_, test) in enumerate(KFold(10).split(np.zeros(23))):
        np.testing.assert_array_equal(np.nonzero(uneven == fold)[0], test)


def test_group_kfold_accuracy_avg_std_ddof1():
    parts = [_scores(s, n=100) for s in (6, 7, 8)]
    scores = np.concatenate([p[0] for p in parts])
    issame = np.concatenate([p[1] for p in parts])
    groups = np.repeat(["b", "a", "c"], 100)
    res = metrics.group_kfold_accuracy(scores, issame, groups)
    assert list(res["groups"]) == ["b", "a", "c"]  # order of appearance
    accs = [_brute_kfold(*p)[0] for p in parts]
    for name, acc in zip("bac", accs):
        assert res["groups"][name]["accuracy"] == pytest.approx(acc)
    assert res["avg"] == pytest.approx(statistics.mean(accs))
    assert res["std"] == pytest.approx(statistics.stdev(accs))


def test_group_kfold_accuracy_uses_given_folds():
    scores, issame = _scores(9, n=100)
    folds = np.arange(100) % 5  # interleaved, not consecutive
    res = metrics.group_kfold_accuracy(scores, issame, np.array(["g"] * 100), folds=folds)
    assert len(res["groups"]["g"]["fold_accuracies"]) == 5 and res["std"] is None
    expected = []
    for f in range(5):
        t = _brute_best_threshold(scores[folds != f], issame[folds != f])
        expected.append(np.mean((scores[folds == f] > t) == issame[folds == f]))
    assert res["avg"] == pytest.approx(np.mean(expected))


def test_group_without_impostors_is_named():
    scores, issame = _scores(10, n=40)
    groups = np.array(["x"] * 20 + ["y"] * 20)
    issame[20:] = True
    with pytest.raises(ValueError, match="group 'y' has 20 genuine and 0 impostor"):
        metrics.group_kfold_accuracy(scores, issame, groups)


# ----------------------------------------------------------------------------- intervals and summaries
def test_wilson_interval_hand_values():
    z = metrics.Z_95
    lo, hi = metrics.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(z * z / (10 + z * z))
    lo, hi = metrics.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)


def test_gini_hand_values():
    assert metrics.gini_coefficient([0.1, 0.1, 0.1]) == pytest.approx(0.0)
    assert metrics.gini_coefficient([1.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)
    # sum |xi - xj| = 8, mean 2, n = 3: 3/2 * 8 / (2 * 9 * 2)
    assert metrics.gini_coefficient([1.0, 2.0, 3.0]) == pytest.approx(1 / 3)
    assert metrics.gini_coefficient([0.0, 0.0]) is None


def test_bias_summaries_hand_values():
    s = metrics.bias_summaries([1e-3, 3e-3], 2e-3)
    assert s["std_over_f"] == pytest.approx(statistics.stdev([1e-3, 3e-3]) / 2e-3)
    assert s["max_min_ratio"] == pytest.approx(3.0)
    assert s["gini"] == pytest.approx(2 * 2 * 2e-3 / (2 * 4 * 2e-3))  # = 0.5
    zero = metrics.bias_summaries([0.0, 4e-3], 2e-3)
    assert zero["max_min_ratio"] is None and "FPR 0" in zero["notes"][0]


def _brute_pair_fairness(scores, issame, groups, f):
    imp = sorted((s for s, y in zip(scores, issame) if not y), reverse=True)
    k = math.floor(f * len(imp) * (1 + 1e-12))
    t = imp[k]
    out = {}
    for g in dict.fromkeys(groups):
        fp = sum(1 for s, y, gg in zip(scores, issame, groups) if gg == g and not y and s > t)
        tp = sum(1 for s, y, gg in zip(scores, issame, groups) if gg == g and y and s > t)
        n_imp = sum(1 for y, gg in zip(issame, groups) if gg == g and not y)
        n_gen = sum(1 for y, gg in zip(issame, groups) if gg == g and y)
        out[g] = (fp / n_imp, tp / n_gen)
    return t, out


def test_pair_fairness_matches_brute_force():
    rng = np.random.default_rng(11)
    groups = rng.choice(["A", "B", "C"], size=600)
    issame = rng.random(600) < 0.3
    scores = rng.normal(size=600) + issame + (groups == "B") * 0.5 * ~issame
    res = metrics.pair_fairness(scores, issame, groups, [0.01, 0.05, 0.2])
    for r, f in zip(res, [0.01, 0.05, 0.2]):
        t, per_group = _brute_pair_fairness(scores, issame, groups, f)
        assert r["threshold"] == t and r["measurable"]
        for g, (fpr, tpr) in per_group.items():
            assert r["groups"][g]["fpr"] == pytest.approx(fpr)
            assert r["groups"][g]["tpr"] == pytest.approx(tpr)
        fprs = [v[0] for v in per_group.values()]
        assert r["summaries"]["std_over_f"] == pytest.approx(statistics.stdev(fprs) / f)
        assert r["measured_fpr"] <= f


def test_fairness_not_measurable_and_low_count_notes():
    counts = {"A": {"fp": 0, "n_impostor": 50, "tp": 5, "n_genuine": 10},
              "B": {"fp": 0, "n_impostor": 50, "tp": 6, "n_genuine": 10}}
    r = metrics.fairness_at_threshold(counts, 1e-3, 0.9, 0, 100)
    assert not r["measurable"] and r["summaries"] is None
    assert "not measurable" in r["notes"][0] and "1/#impostors" in r["notes"][0]
    counts["A"]["fp"] = 2
    r = metrics.fairness_at_threshold(counts, 0.02, 0.5, 2, 100)
    assert r["measurable"] and r["groups"]["A"]["low_count"]  # 0.02 * 50 = 1 expected FP
    lo, hi = r["groups"]["A"]["fpr_ci"]
    assert lo < 2 / 50 < hi
    assert any("low counts" in n for n in r["notes"])


@pytest.mark.parametrize("call,match", [
    (lambda: metrics.roc_curve(np.zeros((2, 2)), [1, 0]), "scores must be a 1-D"),
    (lambda: metrics.roc_curve([0.1, 0.2], [1, 0, 1]), "issame must be a 1-D array of length 2"),
    (lambda: metrics.roc_curve([0.1, np.nan], [1, 0]), "scores must be finite"),
    (lambda: metrics.roc_curve([0.1, 0.2], [2, 0]), "issame must hold booleans"),
    (lambda: metrics.roc_curve([0.1, 0.2], [1, 1]), "genuine and impostor"),
    (lambda: metrics.threshold_at_fpr([0.1], 1.5), "fpr must be in"),
    (lambda: metrics.kfold_accuracy([0.1] * 5, [1, 0, 1, 0, 1]), "cannot cut 5 pairs into 10 folds"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
