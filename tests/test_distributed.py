"""Collectives and layouts: shard bounds, differentiable gathers/sums, global top-k, data-parallel threshold."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from fpr_plugin.distributed import Layout, all_gather_rows, all_reduce_sum, merge_top_values, shard_bounds
from fpr_plugin.registry import build_loss
from gloo import run_two_ranks


def test_shard_bounds_cover_classes_contiguously_with_sizes_differing_by_one():
    for num_classes, world in [(11, 2), (10, 3), (7, 7), (28000, 8), (5, 1)]:
        bounds = [shard_bounds(num_classes, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == num_classes
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="num_classes=2 is smaller than the world size 3"):
        shard_bounds(2, 3, 0)
    with pytest.raises(ValueError, match="rank must be in"):
        shard_bounds(10, 2, 2)


def test_without_process_group_everything_is_local():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_rows(x) is x and all_reduce_sum(x) is x
    layout = Layout.local()
    assert layout.global_rows(7) == 7 and layout.global_classes(9) == 9
    assert merge_top_values(torch.tensor([1.0, 5.0, 3.0]), 2).tolist() == [5.0, 3.0]
    with pytest.raises(ValueError, match="Layout mode must be"):
        Layout("model")
    with pytest.raises(ValueError, match="needs num_classes"):
        Layout("classes")


def data_parallel_batch():
    g = torch.Generator().manual_seed(7)
    W = torch.randn(9, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 9, (7,), generator=g)
    x = W[labels] + torch.randn(7, 5, generator=g, dtype=torch.float64)
    return x, W, labels


ROWS = (4, 3)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
    try:
        out = {}
        # all_gather_rows with uneven rows; backward sums over ranks
        x = torch.full((ROWS[rank], 2), float(rank + 1), requires_grad=True)
        gathered = all_gather_rows(x)
        out["gathered"] = gathered.detach()
        weights = torch.arange(gathered.numel(), dtype=torch.float32).view_as(gathered) * (rank + 1)
        (gathered * weights).sum().backward()
        out["gather_grad"] = x.grad
        # all_reduce_sum: forward sums, backward sums the gradients
        y = torch.tensor([1.0, 2.0], requires_grad=True) * (rank + 1)
        total = all_reduce_sum(y)
        out["reduced"] = total.detach()
        y.retain_grad()
        (total * (rank + 1)).sum().backward()
        out["reduce_grad"] = y.grad
        # global top-k from per-rank candidates
        values = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, -0.3]][rank])
        out["top3"] = merge_top_values(values, 3)
        out["top9"] = merge_top_values(values, 9)
        layout = Layout.data_parallel()
        out["global_rows"] = layout.global_rows(ROWS[rank])
        # a bare fpr_penalty loss in data-parallel layout: the threshold of the global batch
        xb, W, labels = data_parallel_batch()
        start = sum(ROWS[:rank])
        rows = slice(start, start + ROWS[rank])
        cos = F.normalize(xb[rows], dim=1) @ F.normalize(W, dim=1).T
        for name, params in (("fpr_penalty", dict(gamma_u=0.1)), ("fpr_penalty_tface", {})):
            loss = build_loss(name, **params)
            loss.layout = layout
            xn, wn = F.normalize(xb[rows], dim=1), F.normalize(W, dim=1)
            loss(cos, labels[rows], norm_embeddings=xn, norm_weight=wn)
            out[name] = (dict(loss.last_stats), loss.last_instance_fpr)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_two_ranks(_worker, tmp_path_factory.mktemp("collectives"))


@pytest.mark.distributed
def test_all_gather_rows_uneven_and_its_gradient(two_ranks):
    expected = torch.cat([torch.full((4, 2), 1.0), torch.full((3, 2), 2.0)])
    base = torch.arange(14, dtype=torch.float32).view(7, 2)
    summed = base * 1 + base * 2  # every rank's weights, summed by the backward
    for rank, out in enumerate(two_ranks):
        torch.testing.assert_close(out["gathered"], expected)
        start = sum(ROWS[:rank])
        torch.testing.assert_close(out["gather_grad"], summed[start : start + ROWS[rank]])


@pytest.mark.distributed
def test_all_reduce_sum_and_its_gradient(two_ranks):
    for rank, out in enumerate(two_ranks):
        torch.testing.assert_close(out["reduced"], torch.tensor([3.0, 6.0]))
        # d(sum_r (r+1) * total)/dy = (1 + 2) on every rank
        torch.testing.assert_close(out["reduce_grad"], torch.tensor([3.0, 3.0]))


@pytest.mark.distributed
def test_global_top_values_and_rows(two_ranks):
    for out in two_ranks:
        assert out["top3"].tolist() == pytest.approx([0.9, 0.8, 0.7])
        assert out["top9"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.5, 0.1, -0.3])
        assert out["global_rows"] == 7


@pytest.mark.distributed
@pytest.mark.parametrize("name, params", [("fpr_penalty", dict(gamma_u=0.1)), ("fpr_penalty_tface", {})])
def test_data_parallel_loss_uses_the_global_threshold(two_ranks, name, params):
    x, W, labels = data_parallel_batch()
    xn, wn = F.normalize(x, dim=1), F.normalize(W, dim=1)
    cos = xn @ wn.T
    # brute force over the whole batch
    negatives = sorted((cos[i, j].item() for i in range(7) for j in range(9) if j != labels[i]), reverse=True)
    single = build_loss(name, **params)
    single(cos, labels, norm_embeddings=xn, norm_weight=wn)
    if name == "fpr_penalty":
        k = math.ceil(0.1 * 7 * 8)
        assert single.last_stats["threshold"] == negatives[k - 1]
    local_only = build_loss(name, **params)
    local_only(cos[:4], labels[:4], norm_embeddings=xn[:4], norm_weight=wn)
    for rank, out in enumerate(two_ranks):
        stats, instance_fpr = out[name]
        # (the sub-batch matmul may differ from the full one in the last bit)
        assert stats["threshold"] == pytest.approx(single.last_stats["threshold"], abs=1e-12)
        assert stats["k"] == single.last_stats["k"]
        start = sum(ROWS[:rank])
        torch.testing.assert_close(instance_fpr, single.last_instance_fpr[start : start + ROWS[rank]])
    # a rank on its own would have picked a different threshold
    assert local_only.last_stats["threshold"] != pytest.approx(single.last_stats["threshold"], abs=1e-6)
