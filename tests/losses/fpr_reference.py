"""Slow float64 reference implementations, written from method.md with plain loops.

Nothing here imports fpr_plugin: every cosine is a separate dot product, the
threshold a sorted Python list, each row's loss an explicit log-sum-exp.
Gradients come from autograd through these scalar loops, so they follow the
definitions (including which cosines have their class weight detached).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch


def value(t: torch.Tensor) -> float:
    """A 0-d tensor's value as a float, without its graph."""
    return t.detach().item()


def cosine_table(x: torch.Tensor, W: torch.Tensor):
    """(cos, cos_detached_W, xn, Wn): lists of lists of 0-d tensors, one dot product each."""
    xn = [x[i] / torch.sqrt((x[i] * x[i]).sum()) for i in range(x.shape[0])]
    Wn = [W[j] / torch.sqrt((W[j] * W[j]).sum()) for j in range(W.shape[0])]
    cos = [[(xi * wj).sum() for wj in Wn] for xi in xn]
    cos_tilde = [[(xi * wj.detach()).sum() for wj in Wn] for xi in xn]
    return cos, cos_tilde, xn, Wn


def kth_largest(values: list[float], k: int) -> float:
    """The k-th largest of a list, -inf when it has fewer than k elements (or k < 1)."""
    ordered = sorted(values, reverse=True)
    return ordered[k - 1] if 1 <= k <= len(ordered) else -math.inf


def margin_logit(cos_y: torch.Tensor, base: str, m: float) -> torch.Tensor:
    """G(cos_y): CosFace cos - m; ArcFace cos(theta + m), continued as cos - 1 + cos(m) past pi."""
    if base == "cosface":
        return cos_y - m
    theta = math.acos(max(-1.0, min(1.0, value(cos_y))))
    if theta + m <= math.pi:
        # cos(theta + m) written with sin(theta) = sqrt(1 - cos^2), differentiable in cos_y
        return cos_y * math.cos(m) - torch.sqrt(1 - cos_y * cos_y) * math.sin(m)
    return cos_y - 1.0 + math.cos(m)


def row_cross_entropy(logits: list[torch.Tensor], target_index: int) -> torch.Tensor:
    """-log softmax(logits)[target_index] from a list of 0-d tensors."""
    return torch.logsumexp(torch.stack(logits), dim=0) - logits[target_index]


def paper_rank(gamma_u: float, n: int, c: int) -> int:
    """k = ceil(gamma_u * n * (c - 1)) in exact decimal arithmetic, at least 1."""
    return max(1, math.ceil(Fraction(repr(gamma_u)) * n * (c - 1)))


def paper_loss(
    x: torch.Tensor,
    W: torch.Tensor,
    labels: list[int],
    *,
    s: float = 64.0,
    m: float = 0.35,
    gamma_u: float = 1e-4,
    p: float = 2.0,
    alpha: float = 1.0,
    base: str = "cosface",
    penalty_grad: str = "both",
    form: str = "target",
) -> dict:
    """Mean Eq. 10 loss over the batch, with the threshold, rank and per-row FPRs.

    form="target": alpha * g_i / gamma_u subtracted from the target logit;
    form="non_target": added to every non-target logit.
    """
    n, c = x.shape[0], W.shape[0]
    cos, cos_tilde, _, _ = cosine_table(x, W)
    penalty_cos = cos if penalty_grad == "both" else cos_tilde
    negatives = [value(cos[i][j]) for i in range(n) for j in range(c) if j != labels[i]]
    k = paper_rank(gamma_u, n, c)
    threshold = kth_largest(negatives, k)
    total = 0.0
    instance_fpr, weighted_fpr = [], []
    for i in range(n):
        y = labels[i]
        above = 0
        g = torch.zeros((), dtype=x.dtype)
        for j in range(c):
            if j != y and value(cos[i][j]) > threshold:
                above += 1
                if value(cos[i][j]) > 0:
                    g = g + penalty_cos[i][j] ** p
        g = g / (c - 1)
        instance_fpr.append(above / (c - 1))
        weighted_fpr.append(value(g))
        shift = alpha * g / gamma_u
        target = margin_logit(cos[i][y], base, m)
        if form == "target":
            logits = [s * (target - shift)] + [s * cos[i][j] for j in range(c) if j != y]
        else:
            logits = [s * target] + [s * (cos[i][j] + shift) for j in range(c) if j != y]
        total = total + row_cross_entropy(logits, 0)
    return {
        "loss": total / n,
        "threshold": threshold,
        "k": k,
        "instance_fpr": instance_fpr,
        "weighted_fpr": weighted_fpr,
    }


def tface_loss(x: torch.Tensor, W: torch.Tensor, labels: list[int], *, s: float = 64.0, m: float = 0.35) -> dict:
    """Mean loss of the released (TFace) variant, per method.md "The released code differs"."""
    n, c = x.shape[0], W.shape[0]
    cos, cos_tilde, _, _ = cosine_table(x, W)
    excluded = 0
    candidates = []
    for i in range(n):
        y = labels[i]
        for j in range(c):
            if j == y:
                continue
            if value(cos[i][j]) > value(cos[i][y]):
                excluded += 1
            else:
                candidates.append(value(cos[i][j]))
    k = math.ceil(Fraction(n * (c - 1) - excluded, c - 1))  # gamma_u = 1 / (c - 1)
    threshold = kth_largest(candidates, k)
    total = 0.0
    mined_counts, penalties = [], []
    for i in range(n):
        y = labels[i]
        cos_y = value(cos[i][y])
        mined = [j for j in range(c) if j != y and value(cos[i][j]) <= cos_y and value(cos[i][j]) > threshold]
        terms = [(cos[i][j] if value(cos[i][j]) < cos_y - m else cos_tilde[i][j]) ** 2 for j in mined]
        penalty = sum(terms) / len(terms) if terms else torch.zeros((), dtype=x.dtype)
        mined_counts.append(len(mined))
        penalties.append(value(penalty))
        target = (cos[i][y] - m) - (1 + cos_tilde[i][y]) * penalty
        logits = [s * target] + [s * cos[i][j] for j in range(c) if j != y]
        total = total + row_cross_entropy(logits, 0)
    return {
        "loss": total / n,
        "threshold": threshold,
        "k": k,
        "excluded": excluded,
        "instance_fpr": [count / (c - 1) for count in mined_counts],
        "mined_cos2": penalties,
    }
