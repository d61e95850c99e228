"""Read a few entries of the cosine matrix, choosing where their gradient goes.

The penalty terms touch only the target entries and the few entries above
the threshold. With plain indexing autograd would build a dense zero matrix
of the cosines' size for every read and then add it to the logits' gradient
(two passes and two matrices of memory per read; a sparse gradient still
costs a dense copy, since autograd only adds a sparse gradient in place when
it arrives first). :class:`EntryGradients` instead adds the entries'
gradients in place into the dense gradient that :func:`scaled_logits`
computes for the cosines: every gathered entry feeds the logits, so its
backward always runs after that one.
"""

from __future__ import annotations

import torch

__all__ = ["EntryGradients", "weight_detached_entries"]


class EntryGradients:
    """Gathers entries of a matrix; their gradients go into one dense gradient in place.

    Use :meth:`gather` for the entries, pass this object to
    :func:`fpr_plugin.losses.margin.scaled_logits` (whose backward calls
    :meth:`deliver` with the matrix's dense gradient), and let every gathered
    value contribute to those logits.
    """

    def __init__(self) -> None:
        self.dense: torch.Tensor | None = None

    def deliver(self, dense_grad: torch.Tensor) -> None:
        """Called by the logits' backward with the matrix's (fresh, owned) dense gradient."""
        self.dense = dense_grad

    def gather(self, matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``matrix[rows, cols]``; the gradient is added into the delivered dense gradient."""
        if not matrix.requires_grad:
            return matrix[rows, cols]
        return _GatherEntries.apply(matrix, rows, cols, self)


class _GatherEntries(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix, rows, cols, sink):  # type: ignore[override]
        ctx.save_for_backward(rows, cols)
        ctx.sink = sink
        return matrix[rows, cols]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        rows, cols = ctx.saved_tensors
        dense = ctx.sink.dense
        if dense is None:
            raise RuntimeError(
                "gathered cosine entries must feed scaled_logits(..., entries=...) so that "
                "their gradient has a dense gradient to go into"
            )
        dense.index_put_((rows, cols), grad.to(dense.dtype), accumulate=True)
        return None, None, None, None


def weight_detached_entries(
    values: torch.Tensor,
    norm_embeddings: torch.Tensor,
    norm_weight: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """The cosines ``cos~[rows, cols]`` with the class weights detached.

    Forward value: ``values`` (the entries as the head computed them, so
    comparisons stay consistent). Gradient: that of
    ``<norm_embeddings[rows], norm_weight[cols].detach()>``, i.e. into the
    embeddings only. Costs one dot product per entry, not a second matmul.
    """
    dots = (norm_embeddings[rows] * norm_weight[cols].detach()).sum(dim=1)
    return values.detach() + (dots - dots.detach())
