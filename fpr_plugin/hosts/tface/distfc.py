"""FPR-penalty heads for TFace master's distfc mode (classes sharded over the ranks).

TFace's ``BaseTask.make_model`` builds every head as
``head(in_features=D, gpu_index=rank, weight_init=W [D, C], class_split=[...], scale=s, margin=m)``
and its training step calls ``outputs, part_labels, original_outputs = head(features, labels)``
on the all-gathered batch (every rank holds the same N rows and global
class ids). The three results mean what they mean for TFace's own distfc
CosFace:

- ``outputs`` ``[N, C_local]``: the scaled logits of this rank's columns, margin
  and penalty applied; TFace's ``DistCrossEntropy(outputs, part_labels)`` is the loss;
- ``part_labels`` ``[N, 1]`` int64: the sample's column on this rank, -1 elsewhere;
- ``original_outputs`` ``[N, C_local]``: ``scale * cos`` without margin or
  penalty, detached; TFace's ``accuracy_dist`` reads it.

The loss inside is class-sharded over ``class_split``: ``T_u`` and each row's
FPR sum are those of the global batch over all ``sum(class_split)`` classes.
The kernel is TFace's ``kernel`` parameter ``[D, C_local]``, the only entry of
the state dict, so TFace's ``CkptSaver`` / ``CkptLoader`` save and load these
heads like its own (and a CosFace head's checkpoint loads into them).
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any, ClassVar, Sequence

import torch

from fpr_plugin.distributed import group_rank, group_size
from fpr_plugin.hosts.tface.common import (
    build_head_loss,
    check_global_labels,
    kernel_cosines,
    resolve_scale_margin,
)

__all__ = ["DistFcHead", "FprPenalty", "FprPenaltyTface"]


def _check_split(in_features: int, gpu_index: int, weight_init: torch.Tensor, class_split: Sequence[int]) -> list[int]:
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"in_features must be a positive int, got {in_features!r}")
    split = list(class_split) if isinstance(class_split, (list, tuple)) else None
    if not split or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in split):
        raise ValueError(f"class_split must be a list of positive class counts, one per rank, got {class_split!r}")
    if isinstance(gpu_index, bool) or not isinstance(gpu_index, int) or not 0 <= gpu_index < len(split):
        raise ValueError(f"gpu_index must be a rank in [0, {len(split)}) (len(class_split)), got {gpu_index!r}")
    expected = (in_features, sum(split))
    if not isinstance(weight_init, torch.Tensor) or tuple(weight_init.shape) != expected:
        shape = tuple(weight_init.shape) if isinstance(weight_init, torch.Tensor) else type(weight_init).__name__
        raise ValueError(f"weight_init must have shape [in_features, sum(class_split)] = {list(expected)}, got {shape}")
    return split


class DistFcHead(torch.nn.Module):
    """A distfc head whose loss is ``fpr_plugin``'s ``loss_name``, class-sharded over ``class_split``.

    Args (TFace's distfc signature):
        in_features: D, the embedding width.
        gpu_index: this rank (its block of ``class_split``).
        weight_init: ``[D, C]`` initial centres of all classes; this rank keeps its columns.
        class_split: classes per rank (TFace's ``get_class_split``).
        scale, margin: the loss's ``s`` and ``m`` (default 64 and 0.35, TFace's Cifp).
        **loss_params: the loss's other parameters (``fpr_penalty``: gamma_u, p,
            alpha, base, penalty_grad; ``fpr_penalty_tface``: none).
    """

    head_name: ClassVar[str]
    # Set by fpr_plugin.hosts.tface.install(loss_params=...) on a bound subclass.
    loss_params: ClassVar[dict] = {}

    def __init__(
        self,
        in_features: int,
        gpu_index: int,
        weight_init: torch.Tensor,
        class_split: Sequence[int],
        scale: float | None = None,
        margin: float | None = None,
        **loss_params: Any,
    ) -> None:
        super().__init__()
        split = _check_split(in_features, gpu_index, weight_init, class_split)
        scale, margin, params = resolve_scale_margin(self.head_name, scale, margin, {**self.loss_params, **loss_params})
        self.in_features = in_features
        self.gpu_index = gpu_index
        self.class_split = split
        self.num_classes = sum(split)
        self.shard_start = [0, *accumulate(split)]
        self.out_features = split[gpu_index]
        start, end = self.shard_start[gpu_index], self.shard_start[gpu_index + 1]
        self.kernel = torch.nn.Parameter(weight_init.detach()[:, start:end].clone())
        self.scale = scale
        self.margin = margin
        self.loss = build_head_loss(self.head_name, scale, margin, params).shard_classes(self.num_classes)

    def _check_world(self) -> None:
        world, rank = group_size(), group_rank()
        if len(self.class_split) != world or self.gpu_index != rank:
            raise RuntimeError(
                f"{self.head_name}: class_split has {len(self.class_split)} shards and gpu_index is "
                f"{self.gpu_index}, but torch.distributed runs {world} rank(s) and this is rank {rank}; "
                "a class-sharded head needs one shard per rank (TFace: class_split = get_class_split(C, world_size), "
                "gpu_index = rank)"
            )

    def part_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N, 1]``: each global class id's column on this rank, -1 where another rank owns it."""
        start, end = self.shard_start[self.gpu_index], self.shard_start[self.gpu_index + 1]
        owned = (labels >= start) & (labels < end)
        return torch.where(owned, labels - start, torch.full_like(labels, -1)).view(-1, 1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(outputs, part_labels, original_outputs)`` for the gathered batch ``[N, D]`` and global ids ``[N]``."""
        self._check_world()
        labels = check_global_labels(embeddings, labels, self.in_features, self.num_classes)
        part_labels = self.part_labels(labels)
        cos, norm_embeddings, norm_weight = kernel_cosines(embeddings, self.kernel)
        outputs = self.loss(cos, part_labels.view(-1), norm_embeddings=norm_embeddings, norm_weight=norm_weight)
        return outputs, part_labels, cos.detach() * self.scale

    def extra_repr(self) -> str:
        start, end = self.shard_start[self.gpu_index], self.shard_start[self.gpu_index + 1]
        return f"in_features={self.in_features}, classes=[{start}, {end}) of {self.num_classes}, gpu_index={self.gpu_index}"


class FprPenalty(DistFcHead):
    """``HEAD_NAME: FprPenalty`` in distfc mode: the paper's FPR penalty (``fpr_penalty``)."""

    head_name = "FprPenalty"


class FprPenaltyTface(DistFcHead):
    """``HEAD_NAME: FprPenaltyTface`` in distfc mode: the released Cifp variant (``fpr_penalty_tface``)."""

    head_name = "FprPenaltyTface"
