"""Exact selection by rounds of histograms: against a float64 sort, in 1 and in 4 gloo processes.

The reference is Python's sort of the values as float64 (every float16,
bfloat16 and float32 value is exact in float64); it shares no code with the
selection.
"""

from __future__ import annotations

import math
import struct
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gloo import run_ranks  # noqa: E402

from fpr_plugin.distributed import Layout, shard_bounds  # noqa: E402
from fpr_plugin.losses import selection  # noqa: E402
from fpr_plugin.losses.selection import (  # noqa: E402
    histogram_kth_largest,
    key_value,
    mine_above_threshold,
    order_keys,
    selection_method,
)
from fpr_plugin.registry import build_loss  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def sorted_reference(values: list[float], k: int) -> float:
    """k-th largest of the values that are neither -inf nor NaN, as float64; -inf if fewer than k."""
    kept = sorted((float(v) for v in values if v > -math.inf), reverse=True)
    return kept[k - 1] if k <= len(kept) else -math.inf


def float32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def adversarial(dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """Inputs that break a sloppy histogram: ties, one value, denormals, signed zeros, +-1, -inf."""
    g = torch.Generator().manual_seed(seed)
    tiny = torch.finfo(dtype).tiny  # smallest normal; tiny / 4 is a denormal in every dtype here
    cases = {
        "random": torch.randn(300, generator=g),
        "rounded ties": (torch.randn(400, generator=g) * 3).round() / 8,
        "all equal": torch.full((50,), 0.3125),
        "one distinct": torch.cat([torch.full((40,), -0.25), torch.tensor([0.75])]),
        "denormals": torch.tensor([tiny / 4, -tiny / 4, tiny / 2, tiny, -tiny, 0.0, -0.0, tiny / 4] * 3),
        "signed zeros": torch.tensor([0.0, -0.0, -0.0, 0.0, -0.0, 1e-3, -1e-3]),
        "at +-1": torch.tensor([1.0, -1.0, 1.0, 0.999, -0.999, -1.0, 1.0, 0.0]),
        "-inf excluded": torch.tensor([float("-inf"), 0.5, float("-inf"), -0.5, 0.5, float("-inf")]),
        "only -inf": torch.full((5,), float("-inf")),
        "empty": torch.empty(0),
        "cosines": torch.rand(500, generator=g) * 2 - 1,
    }
    return {name: v.to(dtype) for name, v in cases.items()}


def ranks_to_check(count: int) -> list[int]:
    """k = 1, 2, the middle, all, one more than all."""
    return sorted({1, 2, max(1, count // 2), max(1, count), count + 1})


def test_keys_preserve_order_and_invert():
    values = torch.tensor(
        [float("-inf"), -3.4e38, -1.0, -0.5, -1e-40, -1e-45, 0.0, 1e-45, 1e-40, 0.5, 1.0, 3.4e38, float("inf")]
    )
    keys = order_keys(values)
    assert keys.dtype == torch.int32
    assert bool((keys[1:] > keys[:-1]).all()), "strictly increasing for strictly increasing floats"
    assert order_keys(torch.tensor([-0.0])).item() == order_keys(torch.tensor([0.0])).item()
    for v, key in zip(values.tolist(), keys.tolist()):
        assert float32_bits(key_value(key)) == float32_bits(v)
    doubles = torch.tensor([-1.0, -5e-324, 0.0, 5e-324, 0.1, 1.0], dtype=torch.float64)
    dkeys = order_keys(doubles)
    assert dkeys.dtype == torch.int64 and bool((dkeys[1:] > dkeys[:-1]).all())
    assert [key_value(key, 64) for key in dkeys.tolist()] == doubles.tolist()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_local_form_equals_float64_sort_on_adversarial_inputs(dtype):
    for name, values in adversarial(dtype, seed=3).items():
        for k in ranks_to_check(values.numel()):
            expected = sorted_reference(values.tolist(), k)
            got = histogram_kth_largest(values, k)
            assert got.dtype == dtype, name
            assert got.item() == expected, (name, k)
            if expected == 0.0:
                assert math.copysign(1.0, got.item()) == 1.0, "zero ties come back as +0.0"


def test_float64_values_and_custom_round_bits():
    g = torch.Generator().manual_seed(4)
    values = torch.randn(1000, generator=g, dtype=torch.float64)
    values[::7] = values[3]  # ties
    for k in (1, 37, 500, 1000):
        assert histogram_kth_largest(values, k).item() == sorted_reference(values.tolist(), k)
    single = values.float()
    for bits in [(8, 8, 8, 8), (16, 16), (1,) * 32, (3, 16, 13)]:
        assert histogram_kth_largest(single, 123, bits=bits).item() == sorted_reference(single.tolist(), 123)
    for bad in [(11, 11), (32,), (0, 16, 16)]:
        with pytest.raises(ValueError, match="bits must be in 1..16 per round and sum to 32"):
            histogram_kth_largest(single, 1, bits=bad)
    with pytest.raises(ValueError, match="k must be >= 1"):
        histogram_kth_largest(single, 0)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        histogram_kth_largest(torch.arange(3), 1)


def brute_force(scores: torch.Tensor, excluded, k: int) -> tuple[float, list[int]]:
    """k-th largest non-excluded entry (float64 sort) and the flat indices strictly above it."""
    n, c = scores.shape
    flat = scores.reshape(-1).tolist()
    entries = [(float(flat[i * c + j]), i * c + j) for i in range(n) for j in range(c) if excluded is None or j != excluded[i]]
    threshold = sorted_reference([v for v, _ in entries], k)
    return threshold, sorted(idx for v, idx in entries if v > -math.inf and v > threshold)


def matrices(dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    ties = ((torch.randn(37, 70, generator=g) * 3).round() / 8).clamp(-1, 1)  # 2590 entries: a short last block
    spread = torch.rand(19, 300, generator=g) * 2 - 1
    spread[3, :] = float("-inf")
    spread[5, 7:40] = 1.0
    yield "ties", ties.to(dtype), torch.randint(-1, 70, (37,), generator=g)
    yield "spread", spread.to(dtype), torch.randint(0, 300, (19,), generator=g)
    yield "no targets", spread.to(dtype), None
    yield "all equal", torch.full((9, 200), -0.0).to(dtype), torch.randint(0, 200, (9,), generator=g)
    yield "tiny", torch.tensor([[0.5, -0.0, 0.0]]).to(dtype), torch.tensor([0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mined_set_is_the_same_for_both_methods_and_brute_force(dtype):
    for name, scores, excluded in matrices(dtype, seed=5):
        count = scores.numel() - (0 if excluded is None else int((excluded >= 0).sum()))
        for k in ranks_to_check(count) + [97]:
            threshold, above = brute_force(scores, None if excluded is None else excluded.tolist(), k)
            c = scores.shape[1]
            for method in ("topk", "histogram"):
                t, rows, cols, values = mine_above_threshold(scores, excluded, k, Layout.local(), method=method)
                assert t.item() == threshold, (name, k, method)
                assert sorted((rows * c + cols).tolist()) == above, (name, k, method)
                assert torch.equal(values, scores[rows, cols])


def test_method_setting_auto_crossover_and_errors(monkeypatch):
    calls = []
    real = selection.histogram_kth_largest
    monkeypatch.setattr(selection, "histogram_kth_largest", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    scores = torch.rand(64, 400, generator=torch.Generator().manual_seed(6))
    small = selection.HISTOGRAM_MIN_K - 1
    monkeypatch.setattr(selection, "HISTOGRAM_MIN_K", 100)
    mine_above_threshold(scores, None, 99, Layout.local())
    assert not calls, "auto below the crossover uses top-k"
    mine_above_threshold(scores, None, 100, Layout.local())
    assert len(calls) == 1, "auto from the crossover on uses the histogram"
    with selection_method("topk"):
        mine_above_threshold(scores, None, 5000, Layout.local())
    assert len(calls) == 1 and selection.METHOD == "auto"
    with selection_method("histogram"):
        mine_above_threshold(scores, None, 1, Layout.local())
    assert len(calls) == 2
    assert small >= 1
    with pytest.raises(ValueError, match="selection method must be one of 'auto', 'topk', 'histogram', got 'sort'"):
        mine_above_threshold(scores, None, 3, Layout.local(), method="sort")
    with pytest.raises(ValueError, match="selection method must be one of"):
        selection_method("sort")


def fc_batch(n: int, c: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, d, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    x = W[labels] + 1.5 * torch.randn(n, d, generator=g)
    return x, W, labels


def loss_and_gradients(name: str, params: dict, method: str, x, W, labels):
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    xn, wn = F.normalize(x, dim=1), F.normalize(W, dim=1)
    loss = build_loss(name, **params)
    with selection_method(method):
        logits = loss(xn @ wn.T, labels, norm_embeddings=xn, norm_weight=wn)
    value = F.cross_entropy(logits, labels)
    gx, gw = torch.autograd.grad(value, (x, W))
    return value.detach(), gx, gw, loss.last_stats


@pytest.mark.parametrize(
    "name, params", [("fpr_penalty", dict(gamma_u=0.01)), ("fpr_penalty", dict(gamma_u=2e-4)), ("fpr_penalty_tface", {})]
)
def test_loss_and_gradients_do_not_depend_on_the_method(name, params):
    x, W, labels = fc_batch(96, 700, 16, seed=7)
    ref = loss_and_gradients(name, params, "topk", x, W, labels)
    new = loss_and_gradients(name, params, "histogram", x, W, labels)
    assert ref[3]["threshold"] == new[3]["threshold"] and ref[3]["k"] == new[3]["k"]
    assert ref[3]["instance_fpr_mean"] > 0, "case must mine something"
    torch.testing.assert_close(new[0], ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new[1], ref[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new[2], ref[2], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- 4 gloo processes

WORLD = 4


def shard_of(values: torch.Tensor, rank: int) -> torch.Tensor:
    """Uneven shards, rank 2 empty: rank 0 gets half, rank 1 a quarter, rank 3 the rest."""
    n = values.numel()
    cuts = [0, n // 2, 3 * n // 4, 3 * n // 4, n]
    return values[cuts[rank] : cuts[rank + 1]]


def counted_all_reduce(log: list[int]):
    real = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        log.append(tensor.numel() * tensor.element_size())
        return real(tensor, *args, **kwargs)

    return all_reduce


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        out: dict = {"kth": {}, "mined": {}, "loss": {}, "traffic": {}}
        layout = Layout.data_parallel()
        for dtype in DTYPES:
            for name, values in adversarial(dtype, seed=3).items():
                for k in ranks_to_check(values.numel()):
                    got = histogram_kth_largest(shard_of(values, rank), k, layout.sum_counts)
                    out["kth"][(str(dtype), name, k)] = got.item()
            # class-sharded matrices: every rank holds all rows and its own columns
            for name, scores, excluded in matrices(dtype, seed=5):
                c = scores.shape[1]
                lo, hi = shard_bounds(c, WORLD, rank) if c >= WORLD else (min(rank, c), min(rank + 1, c))
                local = scores[:, lo:hi]
                labels = None
                if excluded is not None:
                    inside = (excluded >= lo) & (excluded < hi)
                    labels = torch.where(inside, excluded - lo, torch.full_like(excluded, -1))
                sharded = Layout.class_sharded(c)
                count = scores.numel() - (0 if excluded is None else int((excluded >= 0).sum()))
                for k in ranks_to_check(count) + [97]:
                    for method in ("topk", "histogram"):
                        t, rows, cols, _ = mine_above_threshold(local, labels, k, sharded, method=method)
                        out["mined"][(str(dtype), name, k, method)] = (t.item(), (rows * c + cols + lo).tolist())
        # traffic of one selection does not grow with k
        scores = torch.rand(64, 500, generator=torch.Generator().manual_seed(rank))
        for k in (1, 10, 300, 2000, 40_000, 200_000):  # 128,000 entries in all
            log: list[int] = []
            dist.all_reduce, saved = counted_all_reduce(log), dist.all_reduce
            try:
                mine_above_threshold(scores, None, k, Layout.class_sharded(2000), method="histogram")
            finally:
                dist.all_reduce = saved
            out["traffic"][k] = log
        # the class-sharded losses: logits and gradients per method
        x, W, labels = fc_batch(24, 160, 8, seed=8)
        lo, hi = shard_bounds(160, WORLD, rank)
        inside = (labels >= lo) & (labels < hi)
        local_labels = torch.where(inside, labels - lo, torch.full_like(labels, -1))
        for name, params in (("fpr_penalty", dict(gamma_u=0.02)), ("fpr_penalty_tface", {})):
            for method in ("topk", "histogram"):
                Wl = W[lo:hi].clone().requires_grad_()
                xr = x.clone().requires_grad_()
                xn, wn = F.normalize(xr, dim=1), F.normalize(Wl, dim=1)
                loss = build_loss(name, **params).shard_classes(160)
                with selection_method(method):
                    logits = loss(xn @ wn.T, local_labels, norm_embeddings=xn, norm_weight=wn)
                weights = torch.linspace(-1, 1, logits.numel()).view_as(logits)
                gx, gw = torch.autograd.grad((logits * weights).sum(), (xr, Wl))
                out["loss"][(name, method)] = (logits.detach(), gx, gw, loss.last_stats["threshold"])
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return run_ranks(_worker, tmp_path_factory.mktemp("histogram"), nprocs=WORLD)


@pytest.mark.distributed
def test_four_ranks_find_the_float64_sort_value_with_an_empty_rank(four_ranks):
    checked = 0
    for dtype in DTYPES:
        for name, values in adversarial(dtype, seed=3).items():
            for k in ranks_to_check(values.numel()):
                expected = sorted_reference(values.tolist(), k)
                for out in four_ranks:
                    assert out["kth"][(str(dtype), name, k)] == expected, (dtype, name, k)
                checked += 1
    assert checked > 100


@pytest.mark.distributed
def test_four_ranks_mine_the_brute_force_set_with_both_methods(four_ranks):
    for dtype in DTYPES:
        for name, scores, excluded in matrices(dtype, seed=5):
            count = scores.numel() - (0 if excluded is None else int((excluded >= 0).sum()))
            for k in ranks_to_check(count) + [97]:
                threshold, above = brute_force(scores, None if excluded is None else excluded.tolist(), k)
                for method in ("topk", "histogram"):
                    results = [out["mined"][(str(dtype), name, k, method)] for out in four_ranks]
                    assert all(t == threshold for t, _ in results), (dtype, name, k, method)
                    assert sorted(i for _, mined in results for i in mined) == above, (dtype, name, k, method)


@pytest.mark.distributed
def test_four_ranks_traffic_is_independent_of_k_and_small(four_ranks):
    for out in four_ranks:
        full = out["traffic"][1]
        assert len(full) == 5 and sum(full) < 64 * 1024
        assert all(out["traffic"][k] == full for k in (10, 300, 2000, 40_000)), out["traffic"]
        # more k than entries: the first round of each search finds too few and stops (all entries mined)
        assert len(out["traffic"][200_000]) == 2 and sum(out["traffic"][200_000]) < sum(full)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["fpr_penalty", "fpr_penalty_tface"])
def test_four_ranks_loss_and_gradients_do_not_depend_on_the_method(four_ranks, name):
    for out in four_ranks:
        ref, new = out["loss"][(name, "topk")], out["loss"][(name, "histogram")]
        assert ref[3] == new[3]
        for a, b in zip(ref[:3], new[:3]):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert len({out["loss"][(name, "topk")][3] for out in four_ranks}) == 1, "one threshold on every rank"
