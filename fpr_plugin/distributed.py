"""The few torch.distributed collectives the losses and the head need.

Everything here is device-agnostic (gloo on CPU, NCCL on GPUs) and does
nothing at import time. Two collectives are differentiable:

- :func:`all_gather_rows` concatenates every rank's rows (uneven counts are
  fine); its backward sums the incoming gradients over ranks and hands each
  rank the slice of its own rows.
- :func:`all_reduce_sum` sums partial results over ranks; its backward sums
  the gradients too. This is the right rule when every rank's autograd graph
  only holds its own share of d(global loss)/d(output), as in class-sharded
  training where each rank back-propagates through its own logit columns.

:class:`Layout` says how one training step is split over processes and
answers the questions the FPR losses ask about the *global* batch: how many
rows and classes, the per-row sums over class shards, and the k largest
values over all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Layout",
    "all_gather_rows",
    "all_reduce_sum",
    "group_rank",
    "group_size",
    "is_distributed",
    "merge_top_values",
    "shard_bounds",
]

ProcessGroup = Any  # torch.distributed.ProcessGroup, or None for the default group

MODES = ("local", "classes", "batch", "sampled", "per_rank")


def is_distributed(group: ProcessGroup = None) -> bool:
    """True when torch.distributed is initialised and ``group`` has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def group_size(group: ProcessGroup = None) -> int:
    """Number of ranks in ``group`` (1 when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def group_rank(group: ProcessGroup = None) -> int:
    """This process's rank within ``group`` (0 when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def shard_bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, end)`` of the contiguous class block owned by ``rank``.

    The first ``num_classes % world_size`` ranks own one class more than the
    others, so the blocks differ in size by at most one.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if num_classes < world_size:
        raise ValueError(
            f"num_classes={num_classes} is smaller than the world size {world_size}: "
            "every rank must own at least one class"
        )
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _all_gather_sizes(n: int, device: torch.device, group: ProcessGroup) -> list[int]:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(group_size(group))]
    dist.all_gather(sizes, size, group=group)
    return [int(s.item()) for s in sizes]


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        sizes = _all_gather_sizes(x.shape[0], x.device, group)
        rank = group_rank(group)
        ctx.group = group
        ctx.offset = sum(sizes[:rank])
        ctx.count = sizes[rank]
        longest = max(sizes)
        padded = x
        if x.shape[0] < longest:
            padded = x.new_zeros((longest, *x.shape[1:]))
            padded[: x.shape[0]] = x
        chunks = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(chunks, padded, group=group)
        return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[ctx.offset : ctx.offset + ctx.count], None


def all_gather_rows(x: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """Rows of ``x`` from every rank, concatenated in rank order (differentiable).

    Ranks may hold different numbers of rows. The gradient returned to ``x``
    is the sum over ranks of the gradient of the gathered tensor, restricted
    to this rank's rows. Without an initialised process group this returns ``x``.
    """
    if not is_distributed(group):
        return x
    return _AllGatherRows.apply(x, group)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def all_reduce_sum(x: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """Sum of ``x`` over ranks, differentiable (backward also sums over ranks).

    Without an initialised process group this returns ``x``.
    """
    if not is_distributed(group):
        return x
    if not x.requires_grad:
        out = x.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out
    return _AllReduceSum.apply(x, group)


def merge_top_values(values: torch.Tensor, k: int, group: ProcessGroup = None) -> torch.Tensor:
    """The ``k`` largest of all ranks' ``values`` (descending, no gradient).

    Each rank passes at most ``k`` values (its own k largest: the global k
    largest are always among the union of the per-rank k largest). The result
    holds ``min(k, total count)`` values.
    """
    values = values.detach()
    if values.numel() > k:
        values = values.topk(k).values
    if not is_distributed(group):
        return values.sort(descending=True).values
    padded = values.new_full((k,), float("-inf"))
    padded[: values.numel()] = values
    chunks = [torch.empty_like(padded) for _ in range(group_size(group))]
    dist.all_gather(chunks, padded, group=group)
    merged = torch.cat(chunks)
    merged = merged[merged > float("-inf")]
    return merged.topk(min(k, merged.numel())).values


@dataclass(frozen=True)
class Layout:
    """How one step's batch and classes are split over processes.

    - ``local``: one process sees the whole batch and all classes.
    - ``classes``: class-sharded (model parallel). Every rank holds the same
      (gathered) rows and its own block of ``num_classes`` columns.
    - ``batch``: data parallel only. Every rank holds all classes and its own
      rows of the batch.
    - ``sampled``: class-sharded with PartialFC sampling. Every rank holds the
      gathered rows and the columns it sampled this step; the global class
      count is the sum of the ranks' column counts, found each step.
    - ``per_rank``: every rank on its own, on purpose: the threshold and each
      row's FPR are those of this rank's columns and rows only.

    The FPR losses ask the layout for global counts and sums so that the
    threshold ``T_u`` and each row's FPR are those of the global batch.
    """

    mode: str = "local"
    group: ProcessGroup = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Layout mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}")
        if self.mode == "classes" and (self.num_classes is None or self.num_classes < 1):
            raise ValueError(f"a class-sharded Layout needs num_classes >= 1, got {self.num_classes!r}")

    @classmethod
    def local(cls) -> "Layout":
        """Everything on one process."""
        return cls("local")

    @classmethod
    def class_sharded(cls, num_classes: int, group: ProcessGroup = None) -> "Layout":
        """Classes split into contiguous blocks over the ranks of ``group``."""
        return cls("classes", group, num_classes)

    @classmethod
    def data_parallel(cls, group: ProcessGroup = None) -> "Layout":
        """Full classifier on every rank, the batch split over the ranks of ``group``."""
        return cls("batch", group)

    @classmethod
    def class_sampled(cls, group: ProcessGroup = None) -> "Layout":
        """Class-sharded with sampled columns (PartialFC ``sample_rate < 1``): ``c`` is summed each step."""
        return cls("sampled", group)

    @classmethod
    def per_rank(cls) -> "Layout":
        """Each rank alone, on purpose (a per-rank threshold), even under several ranks."""
        return cls("per_rank")

    @property
    def distributed(self) -> bool:
        """True when this layout talks to other ranks."""
        return self.mode not in ("local", "per_rank") and is_distributed(self.group)

    @property
    def class_split(self) -> bool:
        """True when every rank holds the same rows and its own columns."""
        return self.mode in ("classes", "sampled")

    def check_not_silently_local(self, loss_name: str) -> None:
        """Refuse a local layout while torch.distributed runs several ranks (a per-shard threshold).

        Raises RuntimeError that names the fix; ``per_rank`` is the explicit opt-out.
        """
        if self.mode != "local" or not is_distributed():
            return
        raise RuntimeError(
            f"{loss_name} has a local layout but torch.distributed runs {group_size()} ranks, so T_u and "
            "each row's FPR would be those of one rank's shard. Give the loss its layout: "
            "loss.shard_classes(num_classes) inside a class-sharded head such as arcface_torch's "
            "PartialFC_V2 (loss.shard_classes(sampled=True) with sample_rate < 1), "
            "loss.data_parallel() when every rank holds all classes, or loss.per_rank() to ask for a "
            "per-rank threshold; ClassifierHead sets it for you"
        )

    def global_rows(self, local_rows: int, device: torch.device | None = None) -> int:
        """Number of samples in the global batch."""
        if self.mode != "batch" or not self.distributed:
            return local_rows
        count = torch.tensor([local_rows], dtype=torch.int64, device=device)
        dist.all_reduce(count, op=dist.ReduceOp.SUM, group=self.group)
        return int(count.item())

    def global_classes(self, local_classes: int, device: torch.device | None = None) -> int:
        """Number of classes over all shards (the sampled columns of all ranks when ``sampled``)."""
        if self.mode == "classes":
            return int(self.num_classes)  # type: ignore[arg-type]
        if self.mode == "sampled" and self.distributed:
            count = torch.tensor([local_classes], dtype=torch.int64, device=device)
            dist.all_reduce(count, op=dist.ReduceOp.SUM, group=self.group)
            return int(count.item())
        return local_classes

    def sum_over_classes(self, per_row: torch.Tensor) -> torch.Tensor:
        """Per-row partial sums over this rank's classes -> sums over all classes.

        Differentiable (see :func:`all_reduce_sum`); the identity unless class-sharded.
        """
        if not self.class_split:
            return per_row
        return all_reduce_sum(per_row, self.group)

    def sum_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Sum of per-rank counts (no gradient); the identity on one process."""
        if not self.distributed:
            return counts
        out = counts.detach().contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def top_values(self, values: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k`` largest values over all ranks, descending (see :func:`merge_top_values`)."""
        if not self.distributed:
            values = values.detach()
            return values.topk(min(k, values.numel())).values
        return merge_top_values(values, k, self.group)
