"""Margin losses with ``stats_gamma_u``: T_u and Eq. 9 instance FPR measured, logits and gradients unchanged."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from fpr_plugin.losses.margin import ArcFace, CombinedMargin, CosFace
from fpr_plugin.registry import build_loss
from fpr_reference import cosine_table, kth_largest, paper_rank, value

MAKERS = [
    lambda g: CosFace(s=30.0, m=0.35, stats_gamma_u=g),
    lambda g: ArcFace(s=30.0, m=0.5, stats_gamma_u=g),
    lambda g: CombinedMargin(s=30.0, m1=1.0, m2=0.3, m3=0.2, stats_gamma_u=g),
]


def loop_reference(x, W, labels, gamma_u):
    """Threshold, rank and per-row instance FPR from one dot product per entry and a sorted list."""
    n, c = x.shape[0], W.shape[0]
    cos, _, _, _ = cosine_table(x, W)
    negatives = [value(cos[i][j]) for i in range(n) for j in range(c) if j != labels[i]]
    k = paper_rank(gamma_u, n, c)
    threshold = kth_largest(negatives, k)
    fpr = [sum(1 for j in range(c) if j != labels[i] and value(cos[i][j]) > threshold) / (c - 1) for i in range(n)]
    return threshold, k, fpr


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize("gamma_u", [1e-3, 0.02, 0.3])
def test_measurement_matches_float64_loop_reference(make, gamma_u):
    torch.manual_seed(3)
    n, c, d = 24, 37, 8
    x, W = torch.randn(n, d, dtype=torch.float64), torch.randn(c, d, dtype=torch.float64)
    labels = torch.randint(0, c, (n,))
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(W).T
    loss = make(gamma_u)
    loss(cos, labels)
    threshold, k, fpr = loop_reference(x, W, labels.tolist(), gamma_u)
    assert loss.last_stats["k"] == k
    assert loss.last_stats["threshold"] == pytest.approx(threshold, abs=1e-12)
    torch.testing.assert_close(loss.last_instance_fpr, torch.tensor(fpr, dtype=torch.float64), rtol=0, atol=1e-12)
    assert loss.last_stats["instance_fpr_mean"] == pytest.approx(sum(fpr) / n, abs=1e-12)
    assert loss.last_stats["instance_fpr_max"] == pytest.approx(max(fpr), abs=1e-12)
    assert loss.last_stats["penalty_mean"] == 0.0
    # the share above T_u is about gamma_u by construction (exactly k entries when there are no ties)
    assert sum(fpr) * (c - 1) == pytest.approx(k - 1, abs=1e-9)


@pytest.mark.parametrize("make", MAKERS)
def test_logits_and_gradients_are_unchanged_by_measurement(make):
    torch.manual_seed(4)
    cos0 = torch.rand(16, 21, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.randint(0, 21, (16,))
    labels[3] = -1  # a row whose class lives elsewhere
    results = []
    for gamma_u in (None, 0.01):
        cos = cos0.clone().requires_grad_(True)
        loss = make(gamma_u)
        logits = loss(cos, labels)
        torch.nn.functional.cross_entropy(logits, labels.clamp_min(0), reduction="sum").backward()
        results.append((logits.detach(), cos.grad, loss))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert results[0][2].last_stats == {} and results[0][2].last_instance_fpr is None
    assert set(results[1][2].last_stats) == {"threshold", "k", "instance_fpr_mean", "instance_fpr_max", "penalty_mean"}


def test_registry_passes_stats_gamma_u_and_checks_it():
    loss = build_loss("cosface", stats_gamma_u=1e-4)
    assert loss.stats_gamma_u == 1e-4 and "stats_gamma_u=0.0001" in repr(loss)
    assert build_loss("arcface").stats_gamma_u is None
    with pytest.raises(ValueError, match="stats_gamma_u"):
        CosFace(stats_gamma_u=1.5)


def pair_loop_reference(x, labels, gamma_u):
    """Pair form: threshold, rank and per-row instance FPR over the unordered impostor pairs (float64 loops)."""
    n = x.shape[0]
    xn = [x[i] / torch.sqrt((x[i] * x[i]).sum()) for i in range(n)]
    pair_cos = {(i, j): value((xn[i] * xn[j]).sum()) for i in range(n) for j in range(i + 1, n) if labels[i] != labels[j]}
    k = max(1, math.ceil(Fraction(repr(gamma_u)) * len(pair_cos)))
    threshold = kth_largest(list(pair_cos.values()), k)
    fpr = []
    for i in range(n):
        impostors = [pair_cos[min(i, j), max(i, j)] for j in range(n) if labels[j] != labels[i]]
        fpr.append(sum(1 for c in impostors if c > threshold) / len(impostors))
    return threshold, k, fpr


@pytest.mark.parametrize("make", [
    lambda g: CosFace(s=30.0, m=0.35, stats_pairs_gamma_u=g),
    lambda g: ArcFace(s=30.0, m=0.5, stats_gamma_u=0.05, stats_pairs_gamma_u=g),
    lambda g: CombinedMargin(s=30.0, m1=1.0, m2=0.3, m3=0.2, stats_pairs_gamma_u=g),
])
@pytest.mark.parametrize("gamma_u", [0.013, 0.1, 0.37])
def test_pair_measurement_matches_float64_loop_reference(make, gamma_u):
    torch.manual_seed(5)
    n, c, d = 23, 9, 6
    x, W = torch.randn(n, d, dtype=torch.float64), torch.randn(c, d, dtype=torch.float64)
    labels = torch.randint(0, c, (n,))
    xn, wn = torch.nn.functional.normalize(x), torch.nn.functional.normalize(W)
    loss = make(gamma_u)
    loss(xn @ wn.T, labels, norm_embeddings=xn, norm_weight=wn)
    threshold, k, fpr = pair_loop_reference(x, labels.tolist(), gamma_u)
    assert loss.last_stats["pairs_k"] == k
    assert loss.last_stats["pairs_threshold"] == pytest.approx(threshold, abs=1e-12)
    torch.testing.assert_close(loss.last_pair_instance_fpr, torch.tensor(fpr, dtype=torch.float64), rtol=0, atol=1e-12)
    assert loss.last_stats["pairs_instance_fpr_mean"] == pytest.approx(sum(fpr) / n, abs=1e-12)
    assert loss.last_stats["pairs_instance_fpr_max"] == pytest.approx(max(fpr), abs=1e-12)
    # the class-form measurement is there exactly when stats_gamma_u asks for it
    assert ("threshold" in loss.last_stats) == (loss.stats_gamma_u is not None)
    assert (loss.last_instance_fpr is not None) == (loss.stats_gamma_u is not None)


def test_pair_measurement_leaves_logits_and_gradients_unchanged_and_needs_embeddings():
    torch.manual_seed(6)
    x, W = torch.randn(14, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    labels = torch.randint(0, 6, (14,))
    out = []
    for g in (None, 0.2):
        xn = torch.nn.functional.normalize(x.clone().requires_grad_(True))
        wn = torch.nn.functional.normalize(W)
        cos = (xn @ wn.T).detach().requires_grad_(True)
        emb = xn.detach().requires_grad_(True)
        logits = CosFace(s=16.0, stats_pairs_gamma_u=g)(cos, labels, norm_embeddings=emb, norm_weight=wn)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        out.append((logits.detach(), cos.grad, emb.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert out[1][2] is None  # the measurement takes no gradient through the embeddings
    with pytest.raises(ValueError, match="stats_pairs_gamma_u"):
        CosFace(stats_pairs_gamma_u=0.01)(cos.detach(), labels)
    with pytest.raises(ValueError, match="stats_pairs_gamma_u"):
        CosFace(stats_pairs_gamma_u=0.0)
    assert "stats_pairs_gamma_u=0.01" in repr(build_loss("cosface", stats_pairs_gamma_u=0.01))
