"""Classifier head: normalised FC + a registered margin loss, local or over torch.distributed.

``logits, raw = head(embeddings, labels)`` (TFace's head contract) and
``head.training_loss(embeddings, labels)`` (mean cross-entropy over the
global batch). Three layouts:

- one process (torch.distributed not initialised, or a world of 1);
- ``parallel="classes"`` (default with several ranks): rank r owns the
  contiguous class block ``class_start:class_end``; the embeddings and labels
  are all-gathered, so every rank computes cosines of the *global* batch
  against its classes; cross-entropy, the FPR threshold and each row's FPR
  sum are computed across ranks;
- ``parallel="data"``: every rank holds all classes (weights broadcast from
  the group's first rank at construction) and its own rows; the FPR
  threshold is still that of the global batch.

PartialFC sampling (``sample_rate < 1``, training only): each step, every
rank keeps the columns of the classes in the global batch that it owns plus
random other columns of its block, ``int(sample_rate * block size)`` in all
(all positives when they are more), in ascending class order, and labels
point into the kept columns. The loss then sees only the sampled columns:
the FPR losses define ``T_u`` and ``g_i`` over the sampled columns of the
global batch, with ``c`` the number of sampled columns over all ranks
(method.md, "With sampled classes"). Only the sampled rows of the weight
receive gradient.

Gradient convention: the local embeddings receive d(global mean loss)/d(local
embeddings), so a trainer must SUM (not average) backbone gradients over
ranks to match one process on the same global batch; with
``parallel="data"`` the same holds for the head's replicated weight.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fpr_plugin.distributed import Layout, all_gather_rows, group_rank, group_size, is_distributed, shard_bounds
from fpr_plugin.losses.cross_entropy import cross_entropy

__all__ = ["ClassifierHead"]


def _accepts_features(loss: torch.nn.Module) -> bool:
    try:
        parameters = inspect.signature(loss.forward).parameters
    except (TypeError, ValueError):
        return False
    return "norm_embeddings" in parameters and "norm_weight" in parameters


class ClassifierHead(torch.nn.Module):
    """Normalised fully connected classifier with a margin loss, optionally class-sharded.

    Args:
        embedding_size: D, the embedding width.
        num_classes: C, the number of identities over all ranks.
        loss: a margin loss (``fpr_plugin.build_loss(...)`` or any module with
            the ``logits = loss(cos, labels)`` contract).
        process_group: the torch.distributed group (None: the default group).
        parallel: ``"classes"`` (shard the classes) or ``"data"`` (replicate
            the classifier, split the batch); ignored on one process.
        sample_rate: PartialFC's share of each rank's columns used per
            training step, in (0, 1] (1: all; needs ``parallel="classes"``).
        weight_init: fills this rank's rows of the classifier in place, given
            them and the class of the first row (None: normal(0, 0.01)).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        loss: torch.nn.Module,
        process_group=None,
        parallel: str = "classes",
        sample_rate: float = 1.0,
        weight_init: Callable[[torch.Tensor, int], None] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or embedding_size < 1:
            raise ValueError(f"embedding_size must be a positive int, got {embedding_size!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if parallel not in ("classes", "data"):
            raise ValueError(f"parallel must be 'classes' or 'data', got {parallel!r}")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if sample_rate < 1 and parallel != "classes":
            raise ValueError("sample_rate < 1 (PartialFC sampling) needs parallel='classes'")
        self.sample_rate = float(sample_rate)
        self.weight_index: torch.Tensor | None = None  # the columns kept by the last sampled step
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.process_group = process_group
        if is_distributed(process_group) and parallel == "classes":
            sampled = self.sample_rate < 1
            self.layout = Layout.class_sampled(process_group) if sampled else Layout.class_sharded(num_classes, process_group)
            self.class_start, self.class_end = shard_bounds(
                num_classes, group_size(process_group), group_rank(process_group)
            )
        elif is_distributed(process_group):
            self.layout = Layout.data_parallel(process_group)
            self.class_start, self.class_end = 0, num_classes
        else:  # one process, or a one-rank group under a larger world: this group alone
            self.layout = Layout.per_rank() if is_distributed() else Layout.local()
            self.class_start, self.class_end = 0, num_classes
        self.weight = torch.nn.Parameter(torch.empty(self.class_end - self.class_start, embedding_size))
        with torch.no_grad():
            if weight_init is None:  # insightface initialises the class centres with normal(0, 0.01)
                self.weight.normal_(0, 0.01)
            else:
                weight_init(self.weight, self.class_start)
        if self.layout.mode == "batch":
            source = dist.get_global_rank(process_group, 0) if process_group is not None else 0
            dist.broadcast(self.weight.data, src=source, group=process_group)
        self.loss = loss
        if hasattr(loss, "set_layout"):
            loss.set_layout(self.layout)
        elif hasattr(loss, "layout"):
            loss.layout = self.layout
        self._loss_takes_features = _accepts_features(loss)

    @property
    def sharded(self) -> bool:
        """True when the classes are split over ranks."""
        return self.layout.class_split

    def sample_columns(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PartialFC sampling: ``(index, labels)``, the kept columns of this rank's block (ascending) and
        the labels remapped into them (-1 stays -1). See the module docstring."""
        num_local = self.weight.shape[0]
        num_sample = int(self.sample_rate * num_local)
        with torch.no_grad():
            owned = local_labels >= 0
            positive = torch.unique(local_labels[owned], sorted=True)
            if num_sample >= positive.numel():
                score = torch.rand(num_local, device=self.weight.device)
                score[positive] = 2.0  # positives first, then random others
                index = score.topk(num_sample).indices.sort().values
            else:
                index = positive
            remapped = local_labels.clone()
            remapped[owned] = torch.searchsorted(index, local_labels[owned])
        return index, remapped

    def _check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must have shape [N, {self.embedding_size}], got {shape}")
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of class ids, got {getattr(labels, 'dtype', type(labels))}")
        labels = labels.reshape(-1).long()
        if labels.numel() != embeddings.shape[0]:
            raise ValueError(f"labels must hold {embeddings.shape[0]} class ids (one per embedding), got {labels.numel()}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0].item()
            raise ValueError(f"labels must be class ids in [0, {self.num_classes}), got {bad}")
        return labels

    def _logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = self._check_batch(embeddings, labels)
        if self.sharded:
            embeddings = all_gather_rows(embeddings, self.process_group)
            labels = all_gather_rows(labels, self.process_group)
        owned = (labels >= self.class_start) & (labels < self.class_end)
        local_labels = torch.where(owned, labels - self.class_start, torch.full_like(labels, -1))
        weight = self.weight
        if self.sample_rate < 1 and self.training:
            self.weight_index, local_labels = self.sample_columns(local_labels)
            weight = weight[self.weight_index]
        norm_embeddings = F.normalize(embeddings, dim=1)
        norm_weight = F.normalize(weight, dim=1)
        cos = F.linear(norm_embeddings, norm_weight)
        if cos.dtype in (torch.float16, torch.bfloat16):
            # as arcface_torch: the margin and penalty run in float32 (s * penalty overflows fp16)
            cos = cos.float()
        if self._loss_takes_features:
            logits = self.loss(cos, local_labels, norm_embeddings=norm_embeddings, norm_weight=norm_weight)
        else:
            logits = self.loss(cos, local_labels)
        return logits, cos, local_labels

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, raw)`` for local embeddings ``[n, D]`` and global class ids ``[n]``.

        Both are ``[N, C_local]``: N is the global batch when class-sharded
        (rows in rank order), the local batch otherwise. ``raw`` is the
        scaled cosine without margin or penalty (detached), for accuracy logging.
        """
        logits, cos, _ = self._logits(embeddings, labels)
        return logits, cos.detach() * float(getattr(self.loss, "s", 1.0))

    def training_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean softmax cross-entropy over the global batch (same value on every rank)."""
        logits, _, local_labels = self._logits(embeddings, labels)
        return cross_entropy(logits, local_labels, self.layout)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"classes=[{self.class_start}, {self.class_end}), layout={self.layout.mode!r}"
        )
