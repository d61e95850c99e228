"""Post-hoc calibration maths against independent float64 loop re-statements of the papers' formulas.

FSN (Terhörst et al. 2020), FairCal and its oracle (Salvador et al. 2022), k-means, the beta calibration fit
(checked against scikit-learn's LogisticRegression), the calibrated dense protocol, the JSON file and its checks.
"""
import itertools
import json
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fpr_plugin.cli_errors import UserError
from fpr_plugin.eval.calibration import FSN, Calibration, FairCal, FitData, Oracle, load_calibration
from fpr_plugin.eval.calibration.beta import EPS, fit_beta
from fpr_plugin.eval.calibration.fitdata import all_pairs
from fpr_plugin.eval.calibration.kmeans import _plus_plus, kmeans
from fpr_plugin.eval.calibration.protocols import calibrated_dense
from fpr_plugin.eval.dense import dense_fairness


# ----------------------------------------------------------------------------------------------- data
def planted(seed=0, n_clusters=4, ids_per=8, imgs=4, dim=12, spread=(0.25, 0.6), centre_seed=None):
    """Identities around ``n_clusters`` planted centres (drawn from ``centre_seed``, default ``seed``); group =
    centre; the first half of the groups are tighter (their impostor pairs score higher)."""
    centres = np.random.default_rng(seed if centre_seed is None else centre_seed).normal(size=(n_clusters, dim)) * 3
    rng = np.random.default_rng([seed, 1])
    emb, ids, groups = [], [], []
    for c in range(n_clusters):
        s = spread[0] if c < n_clusters // 2 else spread[1]
        for i in range(ids_per):
            proto = centres[c] + s * rng.normal(size=dim) * 3
            for _ in range(imgs):
                emb.append(proto + 0.4 * rng.normal(size=dim))
                ids.append(f"c{c}i{i}")
                groups.append(f"G{c}")
    return np.array(emb), np.array(ids), np.array(groups, dtype=object)


def unit(x):
    return [[t / math.sqrt(sum(q * q for q in v)) for t in v] for v in np.asarray(x, float).tolist()]


def dot(a, b):
    return sum(p * q for p, q in zip(a, b))


def nearest(v, centroids):
    best, arg = math.inf, -1
    for k, c in enumerate(centroids):
        d = sum((p - q) ** 2 for p, q in zip(v, c))
        if d < best:
            best, arg = d, k
    return arg


def loop_threshold(values, fpr):
    """(floor(f n) + 1)-th largest value."""
    ordered = sorted(values, reverse=True)
    return ordered[int(math.floor(fpr * len(ordered)))]


def beta_loop(params, s):
    a, b, c = params
    u = min(max((s + 1) / 2, EPS), 1 - EPS)
    return 1 / (1 + math.exp(-(a * math.log(u) - b * math.log(1 - u) + c)))


def sk_beta(scores, y, l2, monotone=False):
    """scikit-learn's L2 logistic regression on [ln u, -ln(1-u)]; ``monotone``: a negative slope's feature is
    dropped and the other refitted (Kull et al.'s a, b >= 0)."""
    u = np.clip((np.asarray(scores) + 1) / 2, EPS, 1 - EPS)
    x = np.column_stack([np.log(u), -np.log(1 - u)])

    def fit(cols):
        m = LogisticRegression(C=1 / l2, tol=1e-12, max_iter=10000, solver="newton-cholesky").fit(x[:, cols], y)
        w = [0.0, 0.0]
        for c, v in zip(cols, m.coef_[0]):
            w[c] = v
        return [w[0], w[1], m.intercept_[0]]

    w = fit([0, 1])
    if monotone and (w[0] < 0 or w[1] < 0):
        assert not (w[0] < 0 and w[1] < 0)
        w = fit([1] if w[0] < 0 else [0])
    return w


@pytest.fixture(scope="module")
def fit_set():
    emb, ids, groups = planted(0)
    pairs, issame = all_pairs(ids)
    return FitData(emb, pairs, issame, groups, "fit", [], [])


@pytest.fixture(scope="module")
def test_pairs():
    emb, ids, groups = planted(1)
    rng = np.random.default_rng(5)
    a, b = rng.integers(len(emb), size=40), rng.integers(len(emb), size=40)
    return emb[a], emb[b], groups[a], groups[b]


# ----------------------------------------------------------------------------------------------- k-means
def test_kmeans_plus_plus_init_matches_a_loop_restatement():
    x = np.random.default_rng(3).normal(size=(30, 4))
    got = _plus_plus(x, 5, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    rows = x.tolist()
    chosen = [int(rng.integers(30))]
    for _ in range(4):
        d2 = [min(sum((p - q) ** 2 for p, q in zip(r, rows[c])) for c in chosen) for r in rows]
        total = sum(d2)
        chosen.append(int(rng.choice(30, p=[d / total for d in d2])))
    np.testing.assert_allclose(got, x[chosen])


def test_kmeans_is_a_lloyd_fixed_point_and_deterministic():
    x = np.random.default_rng(4).normal(size=(60, 5))
    centroids, labels = kmeans(x, 6, seed=2)
    rows = x.tolist()
    for i, r in enumerate(rows):  # every point with its nearest centre
        assert labels[i] == nearest(r, centroids.tolist())
    for k in range(6):  # every centre the mean of its points
        members = [rows[i] for i in range(60) if labels[i] == k]
        assert members
        np.testing.assert_allclose(centroids[k], [sum(col) / len(members) for col in zip(*members)], atol=1e-12)
    c2, l2 = kmeans(x, 6, seed=2)
    assert np.array_equal(l2, labels) and np.array_equal(c2, centroids)


def test_kmeans_finds_the_best_partition_by_brute_force():
    rng = np.random.default_rng(7)
    x = np.r_[rng.normal(0, 0.3, (5, 2)), rng.normal(4, 0.3, (4, 2))]
    rows = x.tolist()

    def sse(labels):
        total = 0.0
        for k in set(labels):
            members = [rows[i] for i in range(len(rows)) if labels[i] == k]
            mean = [sum(col) / len(members) for col in zip(*members)]
            total += sum(sum((p - q) ** 2 for p, q in zip(m, mean)) for m in members)
        return total

    best = min(sse(lab) for lab in itertools.product([0, 1], repeat=len(rows)) if len(set(lab)) == 2)
    _, labels = kmeans(x, 2, seed=0)
    assert sse(labels.tolist()) == pytest.approx(best, rel=1e-12)


# ----------------------------------------------------------------------------------------------- beta
def test_beta_fit_matches_sklearn_logistic_regression():
    rng = np.random.default_rng(0)
    s = rng.uniform(-0.9, 0.95, 600)  # labels drawn from a beta map with a = 4, b = 2, c = -1
    y = rng.uniform(size=600) < np.array([beta_loop((4.0, 2.0, -1.0), v) for v in s])
    for l2 in (1e-3, 1.0):
        got = fit_beta(s, y, l2)
        assert got[0] > 0 and got[1] > 0
        np.testing.assert_allclose(got, sk_beta(s, y, l2), rtol=1e-5, atol=1e-6)


def test_beta_fit_drops_a_negative_slope_and_refits():
    rng = np.random.default_rng(1)
    # genuine pairs at both ends: the free fit wants a < 0 on ln(u); the monotone map refits on -ln(1-u)
    s = np.r_[rng.uniform(-0.2, 0.5, 300), rng.uniform(0.8, 0.99, 60), rng.uniform(-0.99, -0.9, 30)]
    y = np.r_[np.zeros(300, bool), np.ones(90, bool)]
    free = sk_beta(s, y, 1e-3)
    assert free[0] < 0 < free[1]
    got = fit_beta(s, y, 1e-3)
    u = np.clip((s + 1) / 2, EPS, 1 - EPS)
    m = LogisticRegression(C=1e3, tol=1e-12, max_iter=10000).fit(-np.log(1 - u)[:, None], y)
    np.testing.assert_allclose(got, [0.0, m.coef_[0, 0], m.intercept_[0]], rtol=1e-5, atol=1e-6)


def test_beta_fit_stays_finite_on_separable_data():
    s = np.r_[np.linspace(-0.5, 0.2, 50), np.linspace(0.5, 0.9, 10)]
    y = np.r_[np.zeros(50, bool), np.ones(10, bool)]
    got = fit_beta(s, y, 1e-3)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, sk_beta(s, y, 1e-3), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------- methods
def test_fsn_matches_the_paper_formula_with_loops(fit_set, test_pairs):
    fpr = 0.01
    calib = FSN.fit(fit_set, clusters=5, fpr=fpr, seed=0)
    centroids = calib.state["centroids"].tolist()
    x = unit(fit_set.embeddings)
    cluster = [nearest(v, centroids) for v in x]
    impostors = [(dot(x[i], x[j]), cluster[i], cluster[j])
                 for (i, j), same in zip(fit_set.pairs.tolist(), fit_set.issame.tolist()) if not same]
    thr_g = loop_threshold([s for s, _, _ in impostors], fpr)
    delta = []
    for c in range(5):
        mine = [s for s, a, b in impostors if a == c or b == c]
        delta.append(loop_threshold(mine, fpr) - thr_g if math.floor(fpr * len(mine)) >= 1 else 0.0)
    a, b, _, _ = test_pairs
    expected = []
    for va, vb in zip(unit(a), unit(b)):
        expected.append(dot(va, vb) - 0.5 * (delta[nearest(va, centroids)] + delta[nearest(vb, centroids)]))
    np.testing.assert_allclose(calib.score(a, b), expected, atol=1e-10)
    assert len(set(np.round(delta, 9))) > 1  # the clusters do get different offsets


def _loop_cluster_maps(fit_set, cluster, n, l2, within=False):
    x = unit(fit_set.embeddings)
    rows = [(dot(x[i], x[j]), same, cluster[i], cluster[j])
            for (i, j), same in zip(fit_set.pairs.tolist(), fit_set.issame.tolist())
            if not within or cluster[i] == cluster[j]]
    maps, sizes = [], []
    for c in range(n):
        mine = [(s, y) for s, y, p, q in rows if p == c or q == c]
        sizes.append(len(mine))
        maps.append(sk_beta([s for s, _ in mine], [y for _, y in mine], l2, monotone=True))
    return maps, sizes


def _loop_mixture(a, b, ka, kb, maps, sizes):
    out = []
    for va, vb, p, q in zip(unit(a), unit(b), ka, kb):
        s = dot(va, vb)
        theta = sizes[p] / (sizes[p] + sizes[q])
        out.append(theta * beta_loop(maps[p], s) + (1 - theta) * beta_loop(maps[q], s))
    return out


def test_faircal_matches_the_paper_formula_with_loops(fit_set, test_pairs):
    calib = FairCal.fit(fit_set, clusters=4, seed=0, l2=1e-2)
    centroids = calib.state["centroids"].tolist()
    cluster = [nearest(v, centroids) for v in unit(fit_set.embeddings)]
    maps, sizes = _loop_cluster_maps(fit_set, cluster, 4, 1e-2)
    a, b, _, _ = test_pairs
    ka = [nearest(v, centroids) for v in unit(a)]
    kb = [nearest(v, centroids) for v in unit(b)]
    expected = _loop_mixture(a, b, ka, kb, maps, sizes)
    np.testing.assert_allclose(calib.score(a, b), expected, atol=2e-6)
    assert len(set(ka) | set(kb)) > 1


@pytest.mark.parametrize("within", [True, False])
def test_oracle_uses_the_true_groups(fit_set, test_pairs, within):
    calib = Oracle.fit(fit_set, l2=1e-2, within_groups=within)
    names = list(dict.fromkeys(fit_set.groups.tolist()))
    cluster = [names.index(g) for g in fit_set.groups.tolist()]
    maps, sizes = _loop_cluster_maps(fit_set, cluster, len(names), 1e-2, within)
    a, b, ga, gb = test_pairs
    expected = _loop_mixture(a, b, [names.index(g) for g in ga], [names.index(g) for g in gb], maps, sizes)
    np.testing.assert_allclose(calib.score(a, b, ga, gb), expected, atol=2e-6)
    with pytest.raises(ValueError, match="needs the group"):
        calib.score(a, b)
    with pytest.raises(ValueError, match="not in the oracle"):
        calib.score(a[:1], b[:1], ["Mars"], gb[:1])


def test_clusters_are_lowered_for_a_small_set(fit_set):
    calib = FSN.fit(fit_set, clusters=100)
    assert calib.params["clusters"] == len(fit_set.embeddings) // 5 and calib.params["clusters_requested"] == 100


# ----------------------------------------------------------------------------------------------- dense protocol
class _Identity(FSN):
    def pair_scores(self, cosine, ka, kb):
        return np.asarray(cosine, np.float64) + 0 * ka + 0 * kb


def test_calibrated_dense_with_identity_scores_equals_dense_fairness(fit_set):
    emb, ids, groups = planted(2)
    calib = _Identity.fit(fit_set, clusters=3)
    fprs = [1e-3, 1e-2, 0.1]
    got = calibrated_dense(emb, ids, groups, calib, fprs, chunk_size=7)
    ref = dense_fairness(emb.astype(np.float64), ids, groups, fprs, chunk_size=13)
    for g, r in zip(got.at_fpr, ref.at_fpr):
        assert g["threshold"] == pytest.approx(r["threshold"], abs=1e-12)
        assert {k: (v["fp"], v["tp"]) for k, v in g["groups"].items()} == \
            {k: (v["fp"], v["tp"]) for k, v in r["groups"].items()}


def test_calibrated_dense_matches_a_loop_over_within_group_pairs(fit_set):
    emb, ids, groups = planted(3)
    calib = FairCal.fit(fit_set, clusters=4)
    n = len(emb)
    imp, gen = {}, {}
    for i in range(n):
        for j in range(i + 1, n):
            if groups[i] != groups[j]:
                continue
            s = float(calib.score(emb[i:i + 1], emb[j:j + 1])[0])
            (gen if ids[i] == ids[j] else imp).setdefault(groups[i], []).append(s)
    every = [s for v in imp.values() for s in v]
    got = calibrated_dense(emb, ids, groups, calib, [0.02], chunk_size=9).at_fpr[0]
    thr = loop_threshold(every, 0.02)
    assert got["threshold"] == pytest.approx(thr, abs=1e-12)
    for g in imp:
        assert got["groups"][g]["fp"] == sum(s > thr for s in imp[g])
        assert got["groups"][g]["tp"] == sum(s > thr for s in gen[g])


# ----------------------------------------------------------------------------------------------- behaviour
def shifted(seed, weights=(0.0, 0.3, 0.45, 0.6), ids_per=40, imgs=3, dim=24, noise=0.6):
    """Unit identities with a group direction mixed in at weight ``w_g``: group g's impostor cosines are shifted
    up by about ``w_g**2`` (a planted group-dependent score shift; the directions are fixed, identities new)."""
    dirs = np.random.default_rng(1234).normal(size=(len(weights), dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    emb, ids, groups = [], [], []
    for g, w in enumerate(weights):
        for i in range(ids_per):
            proto = rng.normal(size=dim)
            for _ in range(imgs):
                v = proto + noise * rng.normal(size=dim)
                emb.append(math.sqrt(1 - w * w) * v / np.linalg.norm(v) + w * dirs[g])
                ids.append(f"s{seed}g{g}i{i}")
                groups.append(f"G{g}")
    return np.array(emb), np.array(ids), np.array(groups, dtype=object)


def test_calibrations_even_out_group_fprs_on_a_planted_shift():
    """Raw: one global threshold lets the shifted group take most false positives; FSN, FairCal (no labels) and
    the oracle, fitted on other identities, cut the bias degree std_g(FPR_g)/f by more than half."""
    fit_emb, fit_ids, fit_groups = shifted(0)
    test_emb, test_ids, test_groups = shifted(1)
    pairs, issame = all_pairs(fit_ids)
    data = FitData(fit_emb, pairs, issame, fit_groups, "fit")
    fprs = [1e-2]
    raw = dense_fairness(test_emb, test_ids, test_groups, fprs).at_fpr[0]
    assert raw["summaries"]["std_over_f"] > 1.2 and raw["groups"]["G3"]["fpr"] > 2.5 * 1e-2  # measured 1.62, 3.4 f
    for calib in (FSN.fit(data, clusters=8, fpr=1e-2), FairCal.fit(data, clusters=8), Oracle.fit(data)):
        got = calibrated_dense(test_emb, test_ids, test_groups, calib, fprs).at_fpr[0]
        # measured 0.62 (fsn), 0.61 (faircal), 0.66 (oracle)
        assert got["summaries"]["std_over_f"] < 0.5 * raw["summaries"]["std_over_f"], calib.method
        assert got["groups"]["G3"]["fpr"] < 2.0 * 1e-2, calib.method


# ----------------------------------------------------------------------------------------------- file
@pytest.mark.parametrize("method", ["fsn", "faircal", "oracle"])
def test_json_round_trip(tmp_path, fit_set, test_pairs, method):
    cls = {"fsn": FSN, "faircal": FairCal, "oracle": Oracle}[method]
    options = {} if method == "oracle" else {"clusters": 4}
    calib = cls.fit(fit_set, **options, model_sha256="ab" * 32)
    path = calib.save(tmp_path / "c.json")
    back = load_calibration(path)
    assert type(back) is cls and back.to_dict() == json.loads(path.read_text())
    a, b, ga, gb = test_pairs
    np.testing.assert_array_equal(back.score(a, b, ga, gb), calib.score(a, b, ga, gb))


def _mutations():
    def set_(path, value):
        def apply(d):
            node = d
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        return apply

    def drop(path):
        def apply(d):
            node = d
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
        return apply

    return [
        (drop(["state", "thresholds"]), "state.thresholds"),
        (set_(["version"], 2), "version"),
        (set_(["version"], True), "version"),
        (set_(["method"], "__import__('os')"), "method"),
        (set_(["format"], "pickle"), "format"),
        (set_(["model_sha256"], "xyz"), "model_sha256"),
        (set_(["state", "thresholds"], ["0.1", 0.2, 0.3, 0.4]), "state.thresholds"),
        (set_(["state", "thresholds"], [0.1, 0.2]), "state.thresholds"),
        (set_(["state", "centroids"], [[1.0, 2.0], [3.0]]), "state.centroids"),
        (set_(["state", "impostor_counts"], [1, -2, 3, 4]), "state.impostor_counts"),
        (set_(["state", "global_threshold"], None), "state.global_threshold"),
        (set_(["params", "clusters"], 4.5), "params.clusters"),
        (set_(["params", "fpr"], 2.0), "params.fpr"),
        (set_(["params"], []), "params"),
        (set_(["fit_images"], ["not-hex"]), "fit_images"),
        (set_(["embedding", "flip"], {"a": 1}), "embedding.flip"),
    ]


@pytest.mark.parametrize("mutate, key", _mutations())
def test_bad_calibration_json_raises_user_error_naming_the_key(tmp_path, fit_set, mutate, key):
    d = FSN.fit(fit_set, clusters=4).to_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError) as info:
        load_calibration(path)
    assert str(path) in str(info.value) and repr(key) in str(info.value)


@pytest.mark.parametrize("text", ['{"format": NaN}', "[1, 2]", "not json", "[" * 100000, ""])
def test_unreadable_calibration_files_raise_user_error(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError, match=str(path).replace("\\", "\\\\")):
        load_calibration(path)
    assert isinstance(Calibration, type)
