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

When k is large (WebFace42M: k ~ 3.4e5 over 64 ranks) the top-k path costs a
top-k of size k on every rank and an all-gather of every rank's k values.
:func:`histogram_kth_largest` finds the same value, exact to the bit, by a
few rounds of histograms over the float's order-preserving bit pattern: each
round counts the candidates in 2^b bins of the bits below the prefix found so
far, sums the counts over ranks (one small all-reduce) and keeps the bin that
holds the k-th largest. The traffic is a few kilobytes a step, whatever k and
the world size. :func:`mine_above_threshold` uses it when k is at least
:data:`HISTOGRAM_MIN_K` (``METHOD = "auto"``), or when asked.
"""

from __future__ import annotations

import math
import struct
from typing import Callable

import torch

from fpr_plugin.distributed import group_size

__all__ = [
    "DEFAULT_BLOCK",
    "HISTOGRAM_MIN_K",
    "METHOD",
    "SELECTION_METHODS",
    "fpr_rank",
    "histogram_block",
    "histogram_candidates",
    "histogram_kth_largest",
    "key_value",
    "kth_largest",
    "mine_above_threshold",
    "order_keys",
    "selection_method",
    "top_candidates",
]

DEFAULT_BLOCK = 64

SELECTION_METHODS = ("auto", "topk", "histogram")
METHOD = "auto"
"""How :func:`mine_above_threshold` finds ``T_u`` when no method is passed: "auto", "topk" or "histogram"."""

HISTOGRAM_MIN_K = 16384
"""``auto`` uses the histogram rounds from this k on: the crossover bench/threshold_scale.py measured
(CPU, gloo, 1 to 64 processes: at k = 16,384 the histogram path took 0.56-1.18x the top-k path's time,
at 4,096 0.88-1.94x, at 32,768 and above 0.18-0.57x except 1.13x at 16 processes)."""

# Bits of the ordered key resolved per round (sum = key width). The first
# round has no bound on the global count yet, so its counts are int64.
ROUND_BITS = {32: (11, 11, 10), 64: (11, 11, 11, 11, 10, 10)}
# Rounds that give a lower bound (the lower edge of the bin holding the k-th
# block maximum) used to choose the candidate blocks: 2^-11 of an octave.
FLOOR_BITS = (10, 10)

CountReducer = Callable[[torch.Tensor], torch.Tensor]


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


def _key_width(dtype: torch.dtype) -> int:
    if dtype == torch.float64:
        return 64
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return 32
    raise TypeError(f"selection needs float16, bfloat16, float32 or float64 values, got {dtype}")


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """Order-preserving integer keys of float values: ``a < b`` exactly when ``key(a) < key(b)``.

    int32 keys of the float32 value (float16 and bfloat16 convert exactly),
    int64 keys for float64. -0.0 and +0.0 both get the key of +0.0. NaN maps
    above +inf (sign bit clear) or below -inf (sign bit set); callers drop it.
    """
    width = _key_width(values.dtype)
    if width == 32:
        bits = (values.to(torch.float32) + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)
    bits = (values + 0.0).view(torch.int64)
    return bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)


def key_value(key: int, width: int = 32) -> float:
    """The float whose :func:`order_keys` key is ``key`` (inverse of the map, as a Python float)."""
    sign_mask = (1 << (width - 1)) - 1
    bits = key ^ ((key >> (width - 1)) & sign_mask)  # the map is its own inverse
    if width == 32:
        return struct.unpack("<f", struct.pack("<i", bits))[0]
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def _select_key(
    keys: torch.Tensor,
    k: int,
    bits: tuple[int, ...],
    width: int,
    reduce_counts: CountReducer | None,
    count_bound: int | None = None,
) -> tuple[int | None, int, int]:
    """Rounds of histograms over ``keys`` (valid entries only) for the k-th largest key over ranks.

    Returns ``(prefix, shift, at_or_above)``: the k-th largest key has
    ``key >> shift == prefix`` (``shift`` = bits left unresolved, 0 after a
    full schedule), and ``at_or_above`` keys over all ranks have ``key >> shift
    >= prefix``. ``prefix`` is None when there are fewer than k keys in all
    (``at_or_above`` is then their count). Every rank runs the same rounds:
    the decisions use summed counts only. ``count_bound``, when given, bounds
    the global number of keys (same on every rank) and lets the first round
    send int32 counts.
    """
    shift, prefix, above = width, 0, 0
    for round_index, round_bits in enumerate(bits):
        shift -= round_bits
        num_bins = 1 << round_bits
        if round_index == 0:  # signed shift, offset to 0 .. num_bins - 1
            bins = (keys >> shift) + (num_bins >> 1)
        else:
            bins = (keys >> shift) & (num_bins - 1)
        # int32 counts when the global count is known to fit (after the first round it is
        # at most the chosen bin's count of the round before)
        count_dtype = torch.int32 if count_bound is not None and count_bound < 2**31 else torch.int64
        counts = torch.bincount(bins, minlength=num_bins).to(count_dtype)
        if reduce_counts is not None:
            counts = reduce_counts(counts)
        from_top = counts.flip(0).to(torch.int64).cumsum(0).cpu()
        remaining = k - above
        total = int(from_top[-1].item())
        if total < remaining:
            return None, shift, above + total
        position = int(torch.searchsorted(from_top, remaining).item())  # first cumulative count >= remaining
        at_or_above = int(from_top[position].item())
        in_bin = at_or_above - (int(from_top[position - 1].item()) if position else 0)
        chosen = num_bins - 1 - position
        prefix = chosen - (num_bins >> 1) if round_index == 0 else (prefix << round_bits) | chosen
        count_bound = in_bin
        at_or_above += above
        above = at_or_above - in_bin
        if round_index + 1 < len(bits):
            keys = keys[(keys >> shift) == prefix]
    return prefix, shift, at_or_above


def histogram_kth_largest(
    values: torch.Tensor,
    k: int,
    reduce_counts: CountReducer | None = None,
    bits: tuple[int, ...] | None = None,
    count_bound: int | None = None,
) -> torch.Tensor:
    """Exact k-th largest of ``values`` over all ranks, by rounds of histograms (no sort, no top-k).

    Args:
        values: float16/bfloat16/float32/float64 values of this rank (any
            shape, may be empty). -inf and NaN are not counted.
        k: rank of the value wanted, >= 1.
        reduce_counts: sums a tensor of counts over ranks (the distributed
            form, e.g. ``Layout.sum_counts``); None for the local form. Every
            rank must call with the same k, dtype and bits.
        bits: bits of the ordered key resolved per round (default 11, 11, 10
            for 32-bit keys), 1 to 16 each; they must sum to the key width
            (32, or 64 for float64).
        count_bound: an upper bound of the global count of values, the same on
            every rank (int32 counts in the first round when below 2^31).

    Returns:
        A 0-d tensor of ``values``' dtype: the k-th largest value (ties
        counted with multiplicity, -0.0 returned as +0.0), or -inf when there
        are fewer than k values over all ranks. Traffic: one all-reduce of
        2^b counts per round.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    width = _key_width(values.dtype)
    bits = ROUND_BITS[width] if bits is None else tuple(bits)
    if sum(bits) != width or min(bits) < 1 or max(bits) > 16:
        raise ValueError(f"bits must be in 1..16 per round and sum to {width}, got {bits}")
    values = values.detach().reshape(-1)
    keys = order_keys(values[values > float("-inf")])
    prefix, _, _ = _select_key(keys, k, bits, width, reduce_counts, count_bound)
    value = float("-inf") if prefix is None else key_value(prefix, width)
    return torch.tensor(value, dtype=values.dtype, device=values.device)


def histogram_block(numel: int, k: int, world_size: int = 1) -> int:
    """Block size for :func:`histogram_candidates`: a power of two near ``sqrt(numel * world_size / k)``, at most 64.

    A rank reads ``numel / block`` maxima and about ``k * block / world_size``
    candidate entries; this balances the two, and keeps at least k blocks over
    all ranks (so that the bound on ``T_u`` is informative).
    """
    ideal = math.sqrt(max(numel, 1) * max(world_size, 1) / k)
    return max(1, min(DEFAULT_BLOCK, 1 << max(0, int(math.floor(math.log2(max(ideal, 1.0)))))))


def histogram_candidates(
    scores: torch.Tensor,
    excluded_columns: torch.Tensor | None,
    k: int,
    reduce_counts: CountReducer | None = None,
    block: int | None = None,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This rank's non-excluded entries that may be >= the k-th largest over all ranks, found without a top-k.

    Same strided blocks as :func:`top_candidates`, but chosen against a bound
    shared by all ranks: ``L``, a lower bound of the k-th largest block
    maximum over all ranks (maxima of the non-excluded entries; the entries
    past the last full slice are blocks of one). Those k blocks hold k
    distinct non-excluded entries >= L, so the global ``T_u >= L``, and every
    entry >= ``T_u`` lies in a block whose maximum is >= L. ``L`` is the lower
    edge of the bin found by :data:`FLOOR_BITS` histogram rounds over the
    maxima. Only the entries of the chosen blocks that are >= L (rounded to
    the scores' dtype, which keeps every entry >= ``T_u`` since rounding is
    monotone) are returned: about ``k`` per rank in all, over all ranks, not
    ``k`` on every rank.

    ``block`` (None: :func:`histogram_block` of this rank's size, k and
    ``world_size``) may differ between ranks; the result is exact for any.

    Returns ``(flat_index, values, count_bound)``: the candidates, and an upper
    bound (the same on every rank) of their global count.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = scores.detach()
    num_rows, num_cols = scores.shape
    flat = scores.reshape(-1)
    numel = flat.numel()
    block = histogram_block(numel, k, world_size) if block is None else block
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    stride = numel // block
    covered = stride * block
    width = _key_width(scores.dtype)
    device = flat.device
    blocks = flat[:covered].view(block, stride)  # block b = column b: entries b, b + stride, ...
    maxima = torch.cat([blocks.amax(dim=0) if stride else flat[:0], flat[covered:]])
    targets = None
    if excluded_columns is not None:
        rows = torch.nonzero(excluded_columns >= 0).reshape(-1)
        targets = rows * num_cols + excluded_columns[rows]
        # the maxima of the blocks that hold an excluded entry, taken without it
        touched = torch.unique(targets[targets < covered] % stride) if stride else targets[:0]
        members = touched.unsqueeze(1) + stride * torch.arange(block, device=device).unsqueeze(0)
        excluded = (members % num_cols) == excluded_columns[members // num_cols]
        maxima[touched] = flat[members].masked_fill(excluded, float("-inf")).amax(dim=1)
        maxima[targets[targets >= covered] - covered + stride] = float("-inf")
    valid = maxima > float("-inf")
    keys = order_keys(maxima)
    prefix, shift, at_or_above = _select_key(keys[valid], k, FLOOR_BITS, width, reduce_counts)
    if prefix is None:  # fewer than k blocks hold a non-excluded entry: take them all
        floor = float("-inf")
    else:
        valid &= keys >= (prefix << shift)
        floor = key_value(max(prefix << shift, int(order_keys(torch.tensor(-math.inf)).item())), width)
    chosen = torch.nonzero(valid).reshape(-1)
    in_blocks, in_tail = chosen[chosen < stride], chosen[chosen >= stride] - stride + covered
    candidates = blocks.index_select(1, in_blocks)  # [block, chosen blocks], a copy
    tail = flat[in_tail]
    if targets is not None:  # excluded entries of the chosen blocks -> -inf
        column = torch.full((stride + numel - covered,), -1, dtype=torch.int64, device=device)
        column[chosen] = torch.arange(chosen.numel(), device=device)
        safe_stride = max(stride, 1)
        at = column[torch.where(targets < covered, targets % safe_stride, targets - covered + stride)]
        hit = (at >= 0) & (targets < covered)
        candidates[targets[hit] // safe_stride, at[hit]] = float("-inf")
        tail_hit = (at >= 0) & (targets >= covered)
        tail[at[tail_hit] - in_blocks.numel()] = float("-inf")
    floor_t = torch.tensor(floor, dtype=torch.float64).to(scores.dtype).item()  # nearest: monotone
    keep = candidates > floor_t if floor_t == float("-inf") else candidates >= floor_t
    where = torch.nonzero(keep)
    index = in_blocks[where[:, 1]] + stride * where[:, 0]
    values = candidates[where[:, 0], where[:, 1]]
    keep_tail = tail > floor_t if floor_t == float("-inf") else tail >= floor_t
    index = torch.cat([index, in_tail[keep_tail]])
    values = torch.cat([values, tail[keep_tail]])
    return index, values, at_or_above * block


def resolve_method(method: str | None, k: int) -> str:
    """``"topk"`` or ``"histogram"`` for ``method`` (None: the module's :data:`METHOD`) at rank k."""
    method = METHOD if method is None else method
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection method must be one of {', '.join(map(repr, SELECTION_METHODS))}, got {method!r}")
    if method == "auto":
        return "histogram" if k >= HISTOGRAM_MIN_K else "topk"
    return method


class selection_method:
    """Context manager that sets :data:`METHOD` for the calls inside it (tests, benchmarks)."""

    def __init__(self, method: str) -> None:
        resolve_method(method, 1)
        self.method = method

    def __enter__(self) -> "selection_method":
        global METHOD
        self.previous, METHOD = METHOD, self.method
        return self

    def __exit__(self, *exc) -> None:
        global METHOD
        METHOD = self.previous


def mine_above_threshold(
    scores: torch.Tensor,
    excluded_columns: torch.Tensor | None,
    k: int,
    layout,
    method: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold ``T_u`` and the entries strictly above it (Algorithm 1, steps 2-3).

    ``T_u`` is the k-th largest non-excluded entry over all ranks of
    ``layout`` (a :class:`fpr_plugin.distributed.Layout`), -inf when there are
    fewer than k. Returns ``(threshold, rows, cols, values)`` of this rank's
    non-excluded entries with ``value > T_u``. No gradient.

    ``method``: "topk" (each rank's top k, all-gathered), "histogram"
    (:func:`histogram_kth_largest`, traffic independent of k) or "auto"
    (histogram from :data:`HISTOGRAM_MIN_K` on); None reads :data:`METHOD`.
    Both give the same threshold and mined set.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    with torch.no_grad():
        if resolve_method(method, k) == "histogram":
            reduce_counts, world_size = (layout.sum_counts, group_size(layout.group)) if layout.distributed else (None, 1)
            index, values, count_bound = histogram_candidates(
                scores, excluded_columns, k, reduce_counts, world_size=world_size
            )
            threshold = histogram_kth_largest(values, k, reduce_counts, count_bound=count_bound)
        else:
            index, values = top_candidates(scores, excluded_columns, k)
            threshold = kth_largest(layout.top_values(values, k), k)
        above = values > threshold
        index, values = index[above], values[above]
        num_cols = scores.shape[1]
        return threshold, index // num_cols, index % num_cols, values
