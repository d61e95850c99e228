"""Softmax cross-entropy over the global batch, for every :class:`~fpr_plugin.distributed.Layout`."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fpr_plugin.distributed import Layout, all_reduce_sum

__all__ = ["cross_entropy"]


class _ClassShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy when the columns of ``logits`` are split over ranks.

    Row maxima and exponential sums are all-reduced (max, then sum); the
    target logit lives on exactly one rank. Backward needs no communication:
    each rank returns d(mean loss)/d(its own columns).
    """

    @staticmethod
    def forward(ctx, logits, labels, group):  # type: ignore[override]
        n = logits.shape[0]
        row_max = logits.amax(dim=1)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        probs = (logits - row_max.unsqueeze(1)).exp_()
        row_sum = probs.sum(dim=1)
        rows = (labels >= 0).nonzero().squeeze(1)
        cols = labels[rows]
        target = logits.new_zeros(n)
        target[rows] = logits[rows, cols] - row_max[rows]
        stacked = torch.stack([row_sum, target])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=group)
        row_sum, target = stacked[0], stacked[1]
        probs.div_(row_sum.unsqueeze(1))
        ctx.save_for_backward(probs, rows, cols)
        return (row_sum.log() - target).mean()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        probs, rows, cols = ctx.saved_tensors
        scale = grad / probs.shape[0]
        out = probs * scale
        out[rows, cols] -= scale
        return out, None, None


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
    """Mean softmax cross-entropy over the global batch (the same value on every rank).

    Args:
        logits: ``[N, C_local]`` scaled logits from a margin loss.
        labels: ``[N]`` column of the target on this rank, -1 when elsewhere
            (class-sharded) or to ignore the row (on one process).
        layout: how the step is split (default: one process).

    Gradients: each rank receives d(global mean loss)/d(its own logits). In
    data-parallel layout the returned value is the global mean, but only this
    rank's rows carry gradient, so gradients of replicated parameters must be
    summed over ranks.
    """
    layout = layout or Layout.local()
    labels = labels.reshape(-1).long()
    if layout.class_split and layout.distributed:
        return _ClassShardedCrossEntropy.apply(logits, labels, layout.group)
    if layout.mode == "batch" and layout.distributed:
        local_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
        counted = (labels >= 0).sum().to(logits.dtype)
        totals = all_reduce_sum(torch.stack([local_sum.detach(), counted]), layout.group)
        # Value: the global mean. Gradient: only through this rank's own rows.
        return (local_sum + (totals[0] - local_sum.detach())) / totals[1]
    return F.cross_entropy(logits, labels, ignore_index=-1)
