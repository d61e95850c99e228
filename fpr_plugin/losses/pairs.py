"""Instance FPR over impostor pairs of the global batch (``fpr_penalty(negatives="pairs")``).

A project option, not in the paper. The negatives of sample i are the other
samples j of the *global* batch whose class differs from i's, and their
similarity is the embedding-to-embedding cosine ``cos(f_i, f_j)``, the one a
test threshold meets. Each unordered impostor pair ``{i, j}`` is one entry,
its cosine computed once (so it is the same number for both rows). With
``M`` the number of unordered impostor pairs and ``m_i`` the number of
impostors of row i:

- ``T_u``: the k-th largest of the ``M`` pair cosines, ``k = ceil(gamma_u * M)``
  (:func:`fpr_plugin.losses.selection.fpr_rank`); no gradient;
- ``I_ij = 1(cos(f_i, f_j) > T_u)`` (strict), no gradient; a pair above
  ``T_u`` counts in the FPR of both its rows;
- Eq. 9: ``fpr_i = sum_j I_ij / m_i``; Eq. 11: ``g_i = sum_j I_ij * max(cos, 0)^p / m_i``;
- rows without an impostor (``m_i = 0``) have ``fpr_i = g_i = 0``. When the
  whole batch has none (``M = 0``: one class), nothing is penalised: ``T_u``
  is +inf and ``k`` is 0.

Counting both orders ``(i, j)`` and ``(j, i)`` gives the same threshold and
mined set: the k-th largest of the doubled list at ``k = ceil(2 gamma_u M)``
is the ``ceil(k / 2) = ceil(gamma_u M)``-th largest pair. Computing each
cosine once is what makes that exact: two separately computed dot products
of the same pair may differ in the last bit, and the threshold of the
doubled list sits on such a twin whenever k is even.

Rows whose class is known to no rank (label -1 everywhere, e.g. rows that a
local loss is told to ignore) take no part in any pair.

Layouts: on one process the pairs are the upper triangle of the ``[N, N]``
matrix. Data-parallel ranks all-gather the normalised embeddings
(differentiably) and take the pairs ``i < j`` of their own rows i.
Class-sharded ranks already hold all N rows; rank r takes the pairs ``i < j``
of its row block (:func:`row_block`). Every pair lies on exactly one rank;
the per-row sums over both ends of the pairs are summed over ranks by a
differentiable all-reduce (as the class form sums ``g_i`` over class
shards), so each pair's gradient is taken once, on its rank, and the
embedding gather's backward adds the ranks' parts: nothing is counted W
times. ``T_u`` is merged over the ranks' disjoint pairs as in Algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from fpr_plugin.distributed import Layout, all_gather_rows, all_reduce_sum, group_rank, group_size
from fpr_plugin.losses.selection import fpr_rank, mine_above_threshold

__all__ = ["PairFpr", "impostor_counts", "pair_fpr", "row_block", "row_identities"]


@dataclass
class PairFpr:
    """What :func:`pair_fpr` found for the rows of this rank's logits.

    ``threshold``: ``T_u`` (0-d, +inf when there is no impostor pair);
    ``k``: its rank among the unordered pairs (0 then); ``weighted_fpr``:
    Eq. 11's ``g_i`` (differentiable); ``instance_fpr``: Eq. 9 (no gradient).
    """

    threshold: torch.Tensor
    k: int
    weighted_fpr: torch.Tensor
    instance_fpr: torch.Tensor


def row_block(num_rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, end)`` of rank's contiguous block of ``num_rows`` rows (sizes differ by at most one; may be empty)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def row_identities(labels: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, int]:
    """``(identities, offset)``: an int64 class identity for every row of the global batch (-1: unknown),
    and the global index of this rank's first row (no gradient).

    Two rows have the same identity exactly when they have the same class.
    On one process (or ``per_rank``) the labels are the identities;
    data-parallel ranks all-gather theirs. Class-split ranks see a row's
    label only on the rank that holds its column: the identity is
    ``column * W + rank`` there (unique across ranks, also for PartialFC's
    sampled columns), taken over ranks by an all-reduce max.
    """
    labels = labels.detach().long()
    if not layout.distributed:
        return labels.clone(), 0
    world, rank = group_size(layout.group), group_rank(layout.group)
    if layout.mode == "batch":
        tagged = torch.stack([labels, torch.full_like(labels, rank)], dim=1)
        gathered = all_gather_rows(tagged, layout.group)
        offset = int((gathered[:, 1] < rank).sum())
        return gathered[:, 0].contiguous(), offset
    ids = torch.where(labels >= 0, labels * world + rank, torch.full_like(labels, -1)).contiguous()
    dist.all_reduce(ids, op=dist.ReduceOp.MAX, group=layout.group)
    return ids, 0


def impostor_counts(identities: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(m, M)``: each row's number of impostors among the known rows, and the number of unordered impostor pairs."""
    known = identities >= 0
    counts = torch.zeros_like(identities)
    if bool(known.any()):
        _, inverse, sizes = torch.unique(identities[known], return_inverse=True, return_counts=True)
        counts[known] = int(known.sum()) - sizes[inverse]
    return counts, int(counts.sum()) // 2


def pair_fpr(
    norm_embeddings: torch.Tensor,
    labels: torch.Tensor,
    gamma_u: float,
    p: float,
    layout: Layout,
    dtype: torch.dtype | None = None,
) -> PairFpr:
    """``T_u``, Eq. 9 and Eq. 11 over the impostor pairs of the global batch (see the module docstring).

    Args:
        norm_embeddings: ``[N_local, D]`` L2-normalised embeddings, the rows of
            the loss's cosines (global rows when class-split).
        labels: ``[N_local]`` the loss's labels (this rank's column or -1).
        gamma_u, p: the penalty's target FPR and exponent.
        layout: the loss's :class:`~fpr_plugin.distributed.Layout`.
        dtype: dtype of the pair cosines (default: the embeddings'; the loss
            passes its cosines' dtype, float32 under half precision).

    Returns the per-row results for the ``N_local`` rows.
    """
    dtype = dtype or norm_embeddings.dtype
    embeddings = norm_embeddings.to(dtype)
    num_local = embeddings.shape[0]
    identities, offset = row_identities(labels, layout)
    impostors, total = impostor_counts(identities)
    if total == 0:  # one class in the whole batch: no pair can be a false positive
        zeros = embeddings.new_zeros(num_local)
        return PairFpr(embeddings.new_tensor(float("inf")), 0, zeros, zeros.clone())
    num_global = identities.shape[0]
    if layout.class_split and layout.distributed:
        start, end = row_block(num_global, group_size(layout.group), group_rank(layout.group))
        rows_side, columns = embeddings[start:end], embeddings
    elif layout.distributed:  # data parallel: own rows against the gathered batch
        start, end = offset, offset + num_local
        rows_side, columns = embeddings, all_gather_rows(embeddings, layout.group)
    else:
        start, end = 0, num_global
        rows_side, columns = embeddings, embeddings

    k = fpr_rank(gamma_u, total)
    with torch.no_grad():
        scores = rows_side.detach() @ columns.detach().T
        row_ids, row_index = identities[start:end], torch.arange(start, end, device=identities.device)
        column_index = torch.arange(num_global, device=identities.device)
        excluded = (
            (column_index.unsqueeze(0) <= row_index.unsqueeze(1))  # each unordered pair once: i < j
            | (row_ids.unsqueeze(1) == identities.unsqueeze(0))
            | (row_ids < 0).unsqueeze(1)
            | (identities < 0).unsqueeze(0)
        )
        scores.masked_fill_(excluded, float("-inf"))
    threshold, rows, cols, values = mine_above_threshold(scores, None, k, layout)

    positive = values > 0  # F(z) = 0 for z <= 0
    rows_p, cols_p = rows[positive], cols[positive]
    dots = (rows_side[rows_p] * columns[cols_p]).sum(dim=1)
    z = (values[positive].detach() + (dots - dots.detach())).pow(p)  # the selected values, with the pairs' gradient
    # both ends of every pair of this rank, over the global rows
    weighted = embeddings.new_zeros(num_global).index_add(0, rows_p + start, z).index_add(0, cols_p, z)
    with torch.no_grad():
        counts = (torch.bincount(rows + start, minlength=num_global) + torch.bincount(cols, minlength=num_global)).to(dtype)
    if layout.distributed:
        weighted = all_reduce_sum(weighted, layout.group)
        counts = layout.sum_counts(counts)
    denominator = impostors.clamp_min(1).to(dtype)
    weighted, instance = weighted / denominator, counts / denominator
    if layout.mode == "batch" and layout.distributed:
        weighted, instance = weighted[offset : offset + num_local], instance[offset : offset + num_local]
    return PairFpr(threshold, k, weighted, instance)
