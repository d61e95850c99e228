"""Exact top-k selection against brute-force sorting."""

from __future__ import annotations

import math

import pytest
import torch

from fpr_plugin.distributed import Layout
from fpr_plugin.losses.selection import fpr_rank, kth_largest, mine_above_threshold, top_candidates


def brute_force(scores, excluded, k):
    """k-th largest non-excluded value (-inf if fewer) and the set of entries above it."""
    n, c = scores.shape
    entries = [
        (scores[i, j].item(), i * c + j)
        for i in range(n)
        for j in range(c)
        if (excluded is None or j != excluded[i]) and scores[i, j].item() > -math.inf
    ]
    ordered = sorted((v for v, _ in entries), reverse=True)
    threshold = ordered[k - 1] if k <= len(ordered) else -math.inf
    return threshold, sorted(idx for v, idx in entries if v > threshold), ordered[:k]


@pytest.mark.parametrize("block", [1, 3, 7, 64])
@pytest.mark.parametrize("k", [1, 2, 5, 17, 60, 200])
@pytest.mark.parametrize("with_targets", [True, False])
def test_candidates_and_threshold_are_exact(block, k, with_targets):
    g = torch.Generator().manual_seed(block * 1000 + k)
    # values rounded to 1/8: many ties, also across block boundaries
    scores = (torch.randn(9, 13, generator=g) * 4).round() / 8
    scores[2, 5] = float("-inf")  # counts as excluded
    excluded = torch.randint(-1, 13, (9,), generator=g) if with_targets else None
    threshold, above, top = brute_force(scores, excluded, k)
    index, values = top_candidates(scores, excluded, k, block=block)
    # every candidate is a genuine, non-excluded entry
    flat = scores.reshape(-1)
    assert torch.equal(flat[index], values)
    assert not torch.isinf(values).any()
    if excluded is not None:
        assert not ((index % 13) == excluded[index // 13]).any()
    # the candidates hold the k largest values and everything above the k-th
    assert sorted(values.tolist(), reverse=True)[: len(top)] == top
    t, rows, cols, mined = mine_above_threshold(scores, excluded, k, Layout.local())
    assert t.item() == threshold
    assert sorted((rows * 13 + cols).tolist()) == above
    assert torch.equal(mined, flat[rows * 13 + cols])


def test_k_larger_than_candidate_count_mines_everything():
    scores = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.9, -0.7]])
    excluded = torch.tensor([0, 1])
    t, rows, cols, values = mine_above_threshold(scores, excluded, 10, Layout.local())
    assert t.item() == -math.inf
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    assert kth_largest(torch.tensor([3.0, 2.0]), 3).item() == -math.inf
    assert kth_largest(torch.tensor([3.0, 2.0]), 2).item() == 2.0


def test_fpr_rank():
    assert fpr_rank(1e-4, 512 * 27999) == 1434  # BUPT scale: ceil(1433.55)
    assert fpr_rank(0.1, 30) == 3  # 0.1 * 30 = 3.0000000000000004 in floats
    assert fpr_rank(0.25, 9) == 3
    assert fpr_rank(1e-9, 10) == 1  # at least one
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_candidates(torch.zeros(2, 2), None, 0)


def test_large_matrix_matches_full_sort():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(64, 3001, generator=g)  # 3001: a short last block
    labels = torch.randint(0, 3001, (64,), generator=g)
    k = 97
    masked = scores.clone()
    masked[torch.arange(64), labels] = -math.inf
    expected = masked.reshape(-1).sort(descending=True).values[k - 1]
    t, rows, cols, values = mine_above_threshold(scores, labels, k, Layout.local())
    assert t.item() == expected.item()
    assert len(values) == k - 1 and bool((values > t).all())
