"""Pair and dense evaluation of embeddings: scores, curves and thresholds against independent computations."""
import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.metrics.pairwise import cosine_similarity

from fpr_plugin.eval import metrics
from fpr_plugin.eval.evaluate import evaluate_dense, evaluate_pairs, l2_normalize
from fpr_plugin.eval.sets import PairList


def _pair_data(seed=0, n_img=120, n_pairs=400):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(30), 4)
    emb = rng.normal(size=(30, 8))[ids] + rng.normal(size=(n_img, 8)) * 0.8
    emb *= rng.uniform(0.5, 3, (n_img, 1))  # not normalised
    a_all, b_all = np.triu_indices(n_img, 1)  # unique unordered pairs: no ties from repeated pairs
    same = ids[a_all] == ids[b_all]
    pick = np.r_[rng.choice(np.nonzero(same)[0], 80, replace=False),
                 rng.choice(np.nonzero(~same)[0], n_pairs - 80, replace=False)]
    rng.shuffle(pick)
    a, b = a_all[pick], b_all[pick]
    groups = np.where(ids[a] % 2 == 0, "even", "odd").astype(object)
    folds = metrics.consecutive_folds(n_pairs, 10)
    return emb, PairList(np.stack([a, b], 1), ids[a] == ids[b], groups, folds)


def test_evaluate_pairs_scores_accuracy_and_roc():
    emb, pairs = _pair_data()
    fprs = [0.01, 0.1]
    res = evaluate_pairs(emb, pairs, fprs)
    cos = cosine_similarity(emb)
    scores = cos[pairs.pairs[:, 0], pairs.pairs[:, 1]]
    for g in ("even", "odd"):
        m = pairs.groups == g
        # accuracy recomputed with the independently computed cosine scores
        ref = metrics.kfold_accuracy(scores[m], pairs.issame[m], pairs.folds[m])
        assert res["accuracy"]["groups"][g]["accuracy"] == pytest.approx(ref.accuracy)
        # the compact ROC holds exact sklearn ROC values at its grid points
        sk_fpr, sk_tpr, _ = sk_roc_curve(pairs.issame[m], scores[m])
        for f, t in zip(res["roc"][g]["fpr"], res["roc"][g]["tpr"]):
            assert t == pytest.approx(sk_tpr[sk_fpr <= f + 1e-12].max())
        # group FPR vs threshold curve
        imp = scores[m & ~pairs.issame]
        for t, f in zip(res["fpr_vs_threshold"][g]["threshold"], res["fpr_vs_threshold"][g]["fpr"]):
            assert f == pytest.approx(np.mean(imp > t + 1e-12))  # t is one of the scores
    assert [r["target_fpr"] for r in res["at_fpr"]] == fprs
    thr, _ = metrics.threshold_at_fpr(scores[~pairs.issame], 0.1)
    assert res["at_fpr"][1]["threshold"] == pytest.approx(thr)


def test_evaluate_dense_curves_and_roc():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(40), 4)
    groups = np.where(ids < 20, "A", "B")
    emb = rng.normal(size=(40, 8))[ids] + rng.normal(size=(160, 8))
    res = evaluate_dense(emb, ids, groups, [0.001, 0.01], chunk_size=33)
    x = l2_normalize(emb, np.float64)
    sim = x @ x.T
    for g in ("A", "B"):
        m = groups == g
        sub, sid = sim[np.ix_(m, m)], ids[m]
        upper = np.triu(np.ones(sub.shape, bool), 1)
        imp, gen = sub[upper & (sid[:, None] != sid[None, :])], sub[upper & (sid[:, None] == sid[None, :])]
        assert res["n_impostor"][g] == imp.size and res["n_genuine"][g] == gen.size
        for t, f, tpr in zip(res["fpr_vs_threshold"][g]["threshold"], res["fpr_vs_threshold"][g]["fpr"],
                             res["roc"][g]["tpr"]):
            # t is one of the similarities; the slack absorbs last-bit differences of the matmuls
            assert f == pytest.approx(np.mean(imp > t + 1e-12), abs=1e-9)
            assert tpr == pytest.approx(np.mean(gen > t + 1e-12), abs=1e-9)


def test_l2_normalize_rejects_zero_rows():
    with pytest.raises(ValueError, match="all zero"):
        l2_normalize(np.zeros((2, 3)))
