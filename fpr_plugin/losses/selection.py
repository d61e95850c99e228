"""Exact selection of the k largest entries of a cosine matrix (Algorithm 1, step 2).

The FPR threshold ``T_u`` is the k-th largest non-target cosine of the batch,
with k small (about 1,400 out of 14 million at BUPT scale). A full sort, or a
top-k over the flattened matrix, costs far more than the loss around it.
Instead the matrix is cut into blocks of ``block`` entries (strided, so
that their maxima are one cheap elementwise reduction over the matrix) and
only the block maxima are ranked:

Let ``L`` be the (k + e)-th largest block maximum, ``e`` the number of
excluded entries (the targets). At least k of the chosen blocks have a
non-excluded maximum >= L, and every non-excluded entry > L lies in a chosen
block. So the chosen blocks contain the k largest non-excluded entries, and
every entry above any threshold >= their k-th value: the candidates are
exact, and they also give the mined set ``{cos > T_u}`` once ``T_u`` is
known (``T_u`` over several ranks is >= this rank's k-th value).
"""

from __future__ import annotations

import math

import torch

__all__ = ["DEFAULT_BLOCK", "fpr_rank", "kth_largest", "mine_above_threshold", "top_candidates"]

DEFAULT_BLOCK = 64


def fpr_rank(gamma_u: float, num_negatives: int) -> int:
    """``k = ceil(gamma_u * num_negatives)``, at least 1.

    The product is shrunk by one part in 1e12 before rounding up, so that a
    float product such as ``0.1 * 30 = 3.0000000000000004`` gives 3, not 4.
    """
    return max(1, math.ceil(gamma_u * num_negatives * (1.0 - 1e-12)))


def kth_largest(top_values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of ``top_values`` (sorted descending), or -inf when there are fewer than k.

    With fewer than k candidates the k-th largest does not exist; -inf then
    makes every candidate count as above the threshold.
    """
    if top_values.numel() < k:
        return top_values.new_full((), float("-inf"))
    return top_values[k - 1]


def top_candidates(
    scores: torch.Tensor,
    excluded_columns: torch.Tensor | None,
    k: int,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices and values of a small subset of ``scores`` that is exact for the top k.

    Args:
        scores: ``[N, C]`` matrix (no gradient is taken). Entries equal to
            -inf count as excluded.
        excluded_columns: ``[N]`` int64, one column per row to leave out (the
            target), -1 for none; or None.
        k: how many of the largest non-excluded entries must be covered.
        block: entries per block (a speed knob; the result is exact for any).

    Returns:
        ``(flat_index, values)`` of at most ``k + N`` non-excluded entries
        (flat index = row * C + column) that include the k largest
        non-excluded entries of ``scores`` and every non-excluded entry
        greater than the k-th largest.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    scores = scores.detach()
    num_rows, num_cols = scores.shape
    flat = scores.reshape(-1)
    numel = flat.numel()
    stride = numel // block  # block b holds the flat entries b, b + stride, b + 2 * stride, ...
    # Each excluded entry can take the place of one non-excluded maximum.
    chosen = k + (0 if excluded_columns is None else num_rows)
    if chosen < stride:
        # strided blocks: the maxima are an elementwise max of `block` contiguous
        # slices, about as fast as a sum over the matrix
        blocks = flat[: stride * block].view(block, stride)
        picked = blocks.amax(dim=0).topk(chosen, sorted=False).indices
        index = (picked.unsqueeze(0) + stride * torch.arange(block, device=flat.device).unsqueeze(1)).reshape(-1)
        if numel > stride * block:  # the few entries past the last full slice are always candidates
            index = torch.cat([index, torch.arange(stride * block, numel, device=flat.device)])
        values = flat[index]
    else:
        index, values = torch.arange(numel, device=flat.device), flat
    # The `chosen` largest candidates hold at least k non-excluded entries and
    # every entry above the smallest of them: keep only those.
    if chosen < values.numel():
        top = values.topk(chosen, sorted=False)
        index, values = index[top.indices], top.values
    keep = values > float("-inf")
    if excluded_columns is not None:
        keep &= (index % num_cols) != excluded_columns[index // num_cols]
    return index[keep], values[keep]


def mine_above_threshold(
    scores: torch.Tensor,
    excluded_columns: torch.Tensor | None,
    k: int,
    layout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold ``T_u`` and the entries strictly above it (Algorithm 1, steps 2-3).

    ``T_u`` is the k-th largest non-excluded entry over all ranks of
    ``layout`` (a :class:`fpr_plugin.distributed.Layout`), -inf when there are
    fewer than k. Returns ``(threshold, rows, cols, values)`` of this rank's
    non-excluded entries with ``value > T_u``. No gradient.
    """
    with torch.no_grad():
        index, values = top_candidates(scores, excluded_columns, k)
        threshold = kth_largest(layout.top_values(values, k), k)
        above = values > threshold
        index, values = index[above], values[above]
        num_cols = scores.shape[1]
        return threshold, index // num_cols, index % num_cols, values
