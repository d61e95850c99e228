"""FPR-penalty heads for TFace's localfc mode (every rank holds all classes), v0.1.0's ``Cifp`` set-up.

TFace v0.1.0's localfc task (``tasks/localfc/train_localfc.py``, which
``tasks/cifp/train_cifp.py`` runs) builds ``head(in_features=D, out_features=C)``,
wraps each head in DDP, calls ``outputs, original_outputs = head(features, labels)``
on this rank's own rows and applies a plain softmax cross-entropy to
``outputs``. As with ``Cifp``: ``outputs`` are the scaled logits with margin
and penalty, ``original_outputs = scale * cos`` (detached, for accuracy).

The loss inside is data-parallel: ``T_u`` is the threshold of the global
batch (all ranks' rows), each row's FPR is over all classes, and with equal
batches per rank DDP's averaging gives the gradient of the global mean loss.
The kernel is ``kernel`` ``[D, C]``, initialised with ``normal(0, 0.01)`` as ``Cifp``'s.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fpr_plugin.hosts.tface.common import (
    build_head_loss,
    check_global_labels,
    kernel_cosines,
    resolve_scale_margin,
)

__all__ = ["LocalFcHead", "FprPenalty", "FprPenaltyTface"]


class LocalFcHead(torch.nn.Module):
    """A localfc head whose loss is ``fpr_plugin``'s loss for ``head_name``, data-parallel over ranks.

    Args (TFace's localfc signature):
        in_features: D, the embedding width.
        out_features: C, the number of classes.
        scale, margin: the loss's ``s`` and ``m`` (default 64 and 0.35, as ``Cifp``).
        **loss_params: the loss's other parameters (see :mod:`fpr_plugin.hosts.tface.distfc`).
    """

    head_name: ClassVar[str]
    loss_params: ClassVar[dict] = {}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scale: float | None = None,
        margin: float | None = None,
        **loss_params: Any,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        scale, margin, params = resolve_scale_margin(self.head_name, scale, margin, {**self.loss_params, **loss_params})
        self.in_features = in_features
        self.out_features = out_features
        self.scale = scale
        self.margin = margin
        self.kernel = torch.nn.Parameter(torch.empty(in_features, out_features).normal_(0, 0.01))
        self.loss = build_head_loss(self.head_name, scale, margin, params).data_parallel()

    def forward(self, embeddings: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(outputs, original_outputs)`` ``[n, C]`` for this rank's rows ``[n, D]`` and class ids ``[n]``."""
        label = check_global_labels(embeddings, label, self.in_features, self.out_features)
        cos, norm_embeddings, norm_weight = kernel_cosines(embeddings, self.kernel)
        outputs = self.loss(cos, label, norm_embeddings=norm_embeddings, norm_weight=norm_weight)
        return outputs, cos.detach() * self.scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class FprPenalty(LocalFcHead):
    """``HEAD_NAME: FprPenalty`` in localfc mode: the paper's FPR penalty (``fpr_penalty``)."""

    head_name = "FprPenalty"


class FprPenaltyTface(LocalFcHead):
    """``HEAD_NAME: FprPenaltyTface`` in localfc mode: the released Cifp variant (``fpr_penalty_tface``)."""

    head_name = "FprPenaltyTface"
