"""Dense protocol: chunked exact selection against a full similarity matrix and a full sort."""
import math
import tracemalloc

import numpy as np
import pytest

from fpr_plugin.eval import dense


def _data(seed, n=300, dim=16, n_ids=60, n_groups=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_ids, n)
    groups = np.array([f"g{i % n_groups}" for i in ids])
    centres = rng.normal(size=(n_ids, dim))
    x = (centres[ids] + rng.normal(size=(n, dim))).astype(dtype)
    return x, ids, groups


def _brute(x, ids, groups, fprs, normalize=True):
    """All pairs at once: full matrix, explicit masks, full descending sort."""
    x = np.asarray(x, np.float64)
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    upper = np.triu(np.ones(sim.shape, bool), 1)
    same_group = groups[:, None] == groups[None, :]
    same_id = (ids[:, None] == ids[None, :]) & same_group
    imp = upper & same_group & ~same_id
    gen = upper & same_id
    imp_sorted = np.sort(sim[imp])[::-1]
    n = imp_sorted.shape[0]
    out = []
    for f in fprs:
        k = math.floor(f * n * (1 + 1e-12))
        t = imp_sorted[k]
        per = {}
        for g in np.unique(groups):
            gm = groups[:, None] == g
            per[g] = (int(np.sum(imp & gm & (sim > t))), int(np.sum(imp & gm)),
                      int(np.sum(gen & gm & (sim > t))), int(np.sum(gen & gm)))
        out.append((t, k, per))
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_dense_matches_brute_force(chunk_size):
    x, ids, groups = _data(0)
    fprs = [1e-4, 1e-3, 1e-2, 0.1]
    res = dense.dense_fairness(x, ids, groups, fprs, chunk_size=chunk_size)
    for r, (t, k, per) in zip(res.at_fpr, _brute(x, ids, groups, fprs)):
        assert r["k"] == k
        assert r["threshold"] == pytest.approx(t, abs=1e-12)
        for g, (fp, n_imp, tp, n_gen) in per.items():
            got = r["groups"][g]
            assert (got["fp"], got["n_impostor"], got["tp"], got["n_genuine"]) == (fp, n_imp, tp, n_gen)


def test_dense_exact_with_many_ties():
    rng = np.random.default_rng(1)
    n = 240
    ids = rng.integers(0, 40, n)
    groups = np.where(ids < 20, "A", "B")
    x = rng.integers(-1, 2, size=(n, 6)).astype(np.float64)  # integer dot products: heavy exact ties
    fprs = [0.001, 0.01, 0.05, 0.3]
    res = dense.dense_fairness(x, ids, groups, fprs, chunk_size=13, normalize=False)
    for r, (t, k, per) in zip(res.at_fpr, _brute(x, ids, groups, fprs, normalize=False)):
        assert r["threshold"] == t and r["k"] == k
        assert {g: r["groups"][g]["fp"] for g in per} == {g: v[0] for g, v in per.items()}
        assert r["measured_fpr"] <= r["target_fpr"]


@pytest.mark.parametrize("chunk_size", [128, 300])  # 300: 90k-value tiles take the in-place partition path
def test_dense_streaming_buffer_shrinks_and_stays_exact(monkeypatch, chunk_size):
    # 2 groups of 400: ~160k impostor pairs > the buffer's 65536 limit, so the running bound is used
    x, ids, groups = _data(2, n=800, dim=8, n_ids=100, n_groups=2)
    shrinks = []
    original = dense._TopK._shrink
    monkeypatch.setattr(dense._TopK, "_shrink", lambda self: (shrinks.append(self.bound), original(self)))
    fprs = [1e-5, 1e-3, 0.05, 0.2]
    res = dense.dense_fairness(x, ids, groups, fprs, chunk_size=chunk_size)
    assert len(shrinks) >= 2 and shrinks[-1] > -np.inf  # filtered against a finite bound before the end
    for r, (t, k, per) in zip(res.at_fpr, _brute(x, ids, groups, fprs)):
        assert r["k"] == k
        assert r["threshold"] == pytest.approx(t, abs=1e-12)
        assert {g: r["groups"][g]["fp"] for g in per} == {g: v[0] for g, v in per.items()}


def test_dense_float32_stays_float32_and_close():
    x, ids, groups = _data(7, n=400, dim=8, n_ids=80, n_groups=2, dtype=np.float32)
    res = dense.dense_fairness(x, ids, groups, [0.01], chunk_size=64)
    assert res.top_scores.dtype == np.float32
    (t, k, per), = _brute(x, ids, groups, [0.01])
    assert res.at_fpr[0]["threshold"] == pytest.approx(t, abs=1e-5)
    for g, (fp, *_rest) in per.items():
        assert abs(res.at_fpr[0]["groups"][g]["fp"] - fp) <= 2  # float32 rounding can only move boundary ties


@pytest.mark.parametrize("first_size", [10, 500])
def test_topk_buffer_against_sort(first_size):
    rng = np.random.default_rng(3)
    top = dense._TopK(50)
    top._limit = 120  # force many shrinks; a first array of 500 takes the in-place partition path
    first = rng.integers(0, 30, size=first_size).astype(float)
    first[:5] = -np.inf  # masked entries never count
    chunks = [first] + [rng.integers(0, 30, size=rng.integers(1, 80)).astype(float) for _ in range(40)]
    expected = np.sort(np.concatenate(chunks))[::-1][:50]
    for i, c in enumerate(chunks):
        top.add(c.copy(), i % 3)
    vals, tags = top.result()
    np.testing.assert_array_equal(vals, expected)
    assert vals.shape == tags.shape


def test_fpr_curve_matches_brute_force():
    x, ids, groups = _data(4)
    res = dense.dense_fairness(x, ids, groups, [0.05], chunk_size=50)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    for g in res.groups:
        m = groups == g
        sub, sub_ids = sim[np.ix_(m, m)], ids[m]
        imp = np.triu(np.ones(sub.shape, bool), 1) & (sub_ids[:, None] != sub_ids[None, :])
        scores = sub[imp]
        thresholds, fpr = res.fpr_curve(g)
        for t, f in list(zip(thresholds, fpr))[:: max(1, len(fpr) // 20)]:
            assert f == pytest.approx(np.sum(scores > t) / scores.size)


def test_dense_errors_name_the_group():
    x, ids, groups = _data(5, n=60)
    solo = groups.astype(object)
    solo[ids == ids[0]] = "lonely"  # one identity alone: no impostor pairs
    with pytest.raises(ValueError, match="group 'lonely' has .* and 0 impostor"):
        dense.dense_fairness(x, ids, solo, [0.01])
    with pytest.raises(ValueError, match="group '.*' has 0 genuine"):
        dense.dense_fairness(x, np.arange(60), groups, [0.01])
    with pytest.raises(ValueError, match="identities must be a 1-D array"):
        dense.dense_fairness(x, ids[:10], groups, [0.01])
    with pytest.raises(ValueError, match="fprs must be in"):
        dense.dense_fairness(x, ids, groups, [0.0])


def test_dense_memory_is_bounded_by_the_tile():
    x, ids, groups = _data(6, n=3000, dim=32, n_ids=600, n_groups=2, dtype=np.float32)
    full_matrix_bytes = 3000 * 3000 * 4
    tracemalloc.start()
    try:
        dense.dense_fairness(x, ids, groups, [1e-4, 1e-3], chunk_size=128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # inputs copies (~0.8 MB) + 128x128 tiles + candidate buffer; a full matrix would be 36 MB
    assert peak < full_matrix_bytes / 8, peak


def test_count_tiles_matches_iteration():
    groups = np.array(["a"] * 10 + ["b"] * 25)
    bounds = [(0, 10), (10, 35)]
    assert dense.count_tiles(groups, 4) == sum(1 for _ in dense.iter_tiles(bounds, 4))
