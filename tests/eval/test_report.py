"""report.json / report.md / PNGs from evaluation results; the embedding cache."""
import json

import matplotlib.image
import numpy as np
import pytest

from fpr_plugin.eval import cache, metrics
from fpr_plugin.eval.evaluate import evaluate_dense, evaluate_pairs
from fpr_plugin.eval.sets import PairList
from fpr_plugin.eval.report import render_markdown, to_jsonable, write_report


def _model_results(seed):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(40), 5)
    groups = np.array(["African", "Asian", "Caucasian", "Indian"])[ids % 4].astype(object)
    emb = rng.normal(size=(40, 12))[ids] + rng.normal(size=(200, 12)) * (1.0 + 0.2 * (ids % 4))[:, None]
    a, b = np.triu_indices(200, 1)
    keep = (groups[a] == groups[b])
    a, b = a[keep], b[keep]
    pick = np.r_[np.nonzero(ids[a] == ids[b])[0][:200], np.nonzero(ids[a] != ids[b])[0][::20][:800]]
    a, b = a[pick], b[pick]
    pairs = PairList(np.stack([a, b], 1), ids[a] == ids[b], groups[a], np.zeros(len(a), int))
    for g in np.unique(groups):  # 10 consecutive folds inside each group
        m = pairs.groups == g
        pairs.folds[m] = metrics.consecutive_folds(int(m.sum()), 10)
    fprs = [1e-4, 1e-2, 0.1]
    return {"model": f"/models/m{seed}.onnx", "sha256": f"{seed:064x}",
            "datasets": {"rfw": {"n_images": 200, "embeddings_cached": False, "notes": ["a note"],
                                 "pairs": evaluate_pairs(emb, pairs, fprs),
                                 "dense": evaluate_dense(emb, ids, groups, fprs, chunk_size=64)}}}


@pytest.fixture(scope="module")
def report():
    return {"fprs": [1e-4, 1e-2, 0.1], "bias_degree": "std_over_f",
            "models": {"cosface": _model_results(0), "cifp": _model_results(1)}}


def test_write_report_files(tmp_path, report):
    written = write_report(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    for label in ("cosface", "cifp"):
        src = report["models"][label]["datasets"]["rfw"]
        got = data["models"][label]["datasets"]["rfw"]
        assert got["pairs"]["accuracy"]["avg"] == pytest.approx(src["pairs"]["accuracy"]["avg"])
        assert got["dense"]["at_fpr"][2]["groups"]["Asian"]["fpr"] == src["dense"]["at_fpr"][2]["groups"]["Asian"]["fpr"]
    for name in ("rfw_pairs_roc.png", "rfw_pairs_fpr_vs_threshold.png", "rfw_dense_roc.png",
                 "rfw_dense_fpr_vs_threshold.png"):
        img = matplotlib.image.imread(written[name])
        assert img.ndim == 3 and img.shape[1] > img.shape[0]  # two panels side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)  # no temporary files left


def test_markdown_tables(report):
    md = render_markdown(to_jsonable(report))
    assert "| model | African | Asian | Caucasian | Indian | Avg | Std |" in md
    acc = report["models"]["cifp"]["datasets"]["rfw"]["pairs"]["accuracy"]
    row = "| cifp | " + " | ".join(f"{100 * acc['groups'][g]['accuracy']:.2f}"
                                    for g in ("African", "Asian", "Caucasian", "Indian"))
    assert row + f" | {100 * acc['avg']:.2f} | {100 * acc['std']:.2f} |" in md
    # bias degree table: one row per model, one column per overall FPR; 1e-4 < 1/#impostor pairs
    assert "| model | 1e-4 | 1e-2 | 1e-1 |" in md
    dense_bias = report["models"]["cosface"]["datasets"]["rfw"]["dense"]["at_fpr"][2]["summaries"]["std_over_f"]
    assert f"| cosface | not measurable |" in md
    assert f"{dense_bias:.3f}" in md
    assert "> a note" in md and "Bias degree** = std_g(FPR_g)/f" in md


def test_to_jsonable_makes_strict_json():
    obj = {"a": np.float32(0.5), "b": [np.inf, -np.inf, np.nan], "c": np.arange(3), "d": np.bool_(True),
           "e": (1, np.int64(2))}
    out = to_jsonable(obj)
    assert json.loads(json.dumps(out, allow_nan=False)) == {"a": 0.5, "b": [None, None, None], "c": [0, 1, 2],
                                                              "d": True, "e": [1, 2]}


def test_cache_round_trip_and_stale_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float64).reshape(4, 3)

    emb, hit = cache.cached_embeddings(tmp_path, "ab" * 32, "set-1", compute, expected_rows=4)
    assert not hit and emb.dtype == np.float32 and len(calls) == 1
    assert cache.cache_path(tmp_path, "ab" * 32, "set-1").name == "abababababababab_set-1.npy"
    emb2, hit = cache.cached_embeddings(tmp_path, "ab" * 32, "set-1", compute, expected_rows=4)
    assert hit and len(calls) == 1 and np.array_equal(emb, emb2)
    _, hit = cache.cached_embeddings(tmp_path, "ab" * 32, "set-1", compute, expected_rows=5)  # stale
    assert not hit and len(calls) == 2
    cache.cache_path(tmp_path, "ab" * 32, "set-1").write_bytes(b"garbage")
    _, hit = cache.cached_embeddings(tmp_path, "ab" * 32, "set-1", compute, expected_rows=4)
    assert not hit and len(calls) == 3


def test_file_sha256(tmp_path):
    import hashlib

    p = tmp_path / "m.onnx"
    p.write_bytes(b"x" * 3_000_000)
    assert cache.file_sha256(p, block_size=4096) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_plot_curves_draws_one_panel_per_model_and_skips_missing_curves(tmp_path, report):
    from fpr_plugin.eval.report import PLOTS, plot_curves

    models = to_jsonable(report)["models"]
    assert [p.curve for p in PLOTS] == ["roc", "fpr_vs_threshold"]
    assert plot_curves(models, "rfw", "pairs", PLOTS[0], tmp_path / "two.png")
    one = {"cosface": models["cosface"]}
    assert plot_curves(one, "rfw", "dense", PLOTS[1], tmp_path / "one.png")
    two, single = matplotlib.image.imread(tmp_path / "two.png"), matplotlib.image.imread(tmp_path / "one.png")
    assert two.shape[1] == 2 * single.shape[1] and two.shape[0] == single.shape[0]  # 5.0 in wide per panel
    assert not plot_curves(models, "lfw", "pairs", PLOTS[0], tmp_path / "none.png")
    assert not plot_curves({"x": {"datasets": {"rfw": {"pairs": None}}}}, "rfw", "pairs", PLOTS[1],
                           tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
