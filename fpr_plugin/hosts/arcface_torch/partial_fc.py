"""A ``PartialFC_V2``-compatible module that passes the normalised features to the loss.

arcface_torch's ``PartialFC_V2(margin_loss, embedding_size, num_classes,
sample_rate, fp16)`` calls ``margin_loss(logits, labels)`` only, so losses
that route gradients through the weight-detached cosine
(``fpr_penalty_tface``, ``penalty_grad="embeddings"``) cannot run inside it.
:class:`PartialFC` has the same constructor, call, class split, ``weight``
parameter and sampling rule, and is :class:`fpr_plugin.heads.ClassifierHead`
underneath: it also runs without CUDA.

Gradient convention: like the host's module, it hands each rank
``world_size * d(loss)/d(local embeddings)``, because arcface_torch's DDP
averages the backbone's gradients over ranks.
"""

from __future__ import annotations

from typing import Callable

import torch

from fpr_plugin.distributed import group_size
from fpr_plugin.heads import ClassifierHead

__all__ = ["PartialFC"]


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


class PartialFC(ClassifierHead):
    """``PartialFC_V2``'s interface over :class:`~fpr_plugin.heads.ClassifierHead`: returns the mean loss."""

    def __init__(
        self,
        margin_loss: Callable,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        fp16: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, margin_loss, sample_rate=sample_rate)
        self.fp16 = bool(fp16)

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Mean margin-softmax cross-entropy of the global batch (the host's ``module_partial_fc(emb, labels)``)."""
        world = group_size(self.process_group)
        embeddings = _ScaleGradient.apply(local_embeddings, float(world)) if world > 1 else local_embeddings
        device = local_embeddings.device.type
        with torch.autocast(device, dtype=torch.float16, enabled=self.fp16 and device == "cuda"):
            return self.training_loss(embeddings, local_labels.reshape(-1))
