"""Read a few entries of the cosine matrix, choosing where their gradient goes.

The penalty terms touch only the target entries and the few entries above
the threshold. Reading them with plain indexing would make autograd build a
dense zero matrix of the cosines' size for each read; here the gradient is
returned as a sparse tensor and accumulated into the dense one in place.
"""

from __future__ import annotations

import torch

__all__ = ["gather_entries", "weight_detached_entries"]


class _GatherEntries(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(rows, cols)
        ctx.shape = matrix.shape
        return matrix[rows, cols]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        rows, cols = ctx.saved_tensors
        sparse = torch.sparse_coo_tensor(
            torch.stack([rows, cols]), grad, ctx.shape, check_invariants=False
        )
        return sparse, None, None


def gather_entries(matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``matrix[rows, cols]`` whose gradient reaches ``matrix`` as a sparse tensor."""
    if not matrix.requires_grad:
        return matrix[rows, cols]
    return _GatherEntries.apply(matrix, rows, cols)


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
