"""What both kinds of TFace head share: the head names, the loss behind each, and the cosines.

TFace keeps a head's class centres as ``kernel`` ``[D, C]`` (columns are
classes); fpr_plugin's losses take ``norm_weight`` ``[C, D]``, so the
normalised kernel is handed over transposed (a view, no copy).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from fpr_plugin.losses.margin import MarginLoss
from fpr_plugin.registry import build_loss

__all__ = ["HEAD_LOSSES", "DEFAULT_SCALE", "DEFAULT_MARGIN", "build_head_loss", "check_global_labels",
           "kernel_cosines", "resolve_scale_margin"]

# HEAD_NAME in a TFace yaml -> the fpr_plugin loss inside that head.
HEAD_LOSSES = {"FprPenalty": "fpr_penalty", "FprPenaltyTface": "fpr_penalty_tface"}

# The defaults of TFace's released Cifp head (and of fpr_plugin's FPR losses).
DEFAULT_SCALE = 64.0
DEFAULT_MARGIN = 0.35


def resolve_scale_margin(
    head_name: str, scale: float | None, margin: float | None, loss_params: Mapping[str, Any]
) -> tuple[float, float, dict]:
    """``(scale, margin, other loss params)`` from TFace's arguments and the bound loss parameters.

    ``s`` / ``m`` among the bound parameters stand in for scale / margin where
    the host passes none (TFace v0.1.0 builds heads without them); where the
    host passes a different value, that is a conflict and raises ValueError.
    """
    params = dict(loss_params)
    resolved = []
    for host_name, loss_name, value, default in (("scale", "s", scale, DEFAULT_SCALE), ("margin", "m", margin, DEFAULT_MARGIN)):
        bound = params.pop(loss_name, None)
        if value is not None and bound is not None and float(value) != float(bound):
            raise ValueError(
                f"{head_name}: TFace passes {host_name}={value!r} but the loss parameters set "
                f"{loss_name}={bound!r}; give the {host_name} in one place"
            )
        resolved.append(value if value is not None else bound if bound is not None else default)
    return resolved[0], resolved[1], params


def build_head_loss(head_name: str, scale: float, margin: float, loss_params: Mapping[str, Any]) -> MarginLoss:
    """The fpr_plugin loss behind ``head_name`` (``s=scale, m=margin`` plus the other parameters)."""
    return build_loss(HEAD_LOSSES[head_name], s=scale, m=margin, **dict(loss_params))


def kernel_cosines(embeddings: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(cos [N, C], norm_embeddings [N, D], norm_weight [C, D])`` for a TFace kernel ``[D, C]``.

    Embeddings are brought to the kernel's dtype (TFace casts AMP features to
    float32 before its heads), and half-precision cosines (under autocast)
    are promoted to float32: the margin and the penalty run in float32
    (``s * penalty`` overflows fp16).
    """
    if embeddings.dtype != kernel.dtype and embeddings.is_floating_point():
        embeddings = embeddings.to(kernel.dtype)
    norm_embeddings = F.normalize(embeddings, dim=1)
    norm_kernel = F.normalize(kernel, dim=0)
    cos = norm_embeddings.mm(norm_kernel)
    if cos.dtype in (torch.float16, torch.bfloat16):
        cos = cos.float()
    return cos, norm_embeddings, norm_kernel.t()


def check_global_labels(embeddings: torch.Tensor, labels: torch.Tensor, in_features: int, num_classes: int) -> torch.Tensor:
    """Validate a head call: embeddings ``[N, in_features]``, class ids in ``[0, num_classes)``; returns labels ``[N]`` int64."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[1] != in_features:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must have shape [N, {in_features}] (in_features), got {shape}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids, got {getattr(labels, 'dtype', type(labels).__name__)}")
    labels = labels.reshape(-1).long()
    if labels.numel() != embeddings.shape[0]:
        raise ValueError(f"labels must hold {embeddings.shape[0]} class ids (one per embedding), got {labels.numel()}")
    if labels.numel():
        low, high = (int(v) for v in torch.stack(torch.aminmax(labels)).tolist())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"labels must be class ids in [0, {num_classes}), got {bad}")
    return labels
