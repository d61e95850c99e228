"""Input and parameter checks shared by the losses (errors name the argument)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["check_choice", "check_cosines", "check_embeddings", "check_features", "check_in_open_interval", "check_positive", "check_real"]


def check_real(name: str, value: float) -> float:
    """``value`` as a finite float, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    """``value`` as a finite float > 0, else ValueError naming ``name``."""
    value = check_real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_in_open_interval(name: str, value: float, low: float, high: float) -> float:
    """``value`` as a float in the open interval (low, high), else ValueError naming ``name``."""
    value = check_real(name, value)
    if not low < value < high:
        raise ValueError(f"{name} must be in the open interval ({low:g}, {high:g}), got {value!r}")
    return value


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else ValueError naming ``name``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_cosines(cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate the margin-loss call ``(cos [N, C], labels [N] or [N, 1])``.

    Labels are this rank's column of the sample's class, or -1 when the class
    is not among the columns. Returns the labels as an int64 ``[N]`` tensor.
    Raises ValueError naming ``cos`` or ``labels`` on a wrong type, shape,
    dtype, an out-of-range label, or a NaN/Inf cosine.
    """
    if not isinstance(cos, torch.Tensor) or not cos.is_floating_point():
        got = cos.dtype if isinstance(cos, torch.Tensor) else type(cos).__name__
        raise ValueError(f"cos must be a floating-point tensor, got {got}")
    if cos.dim() != 2 or cos.shape[0] < 1 or cos.shape[1] < 1:
        raise ValueError(f"cos must have shape [N, C] with N, C >= 1, got {tuple(cos.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor, got {got}")
    n, c = cos.shape
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] or [{n}, 1] to match cos {tuple(cos.shape)}, got {tuple(labels.shape)}")
    if labels.device != cos.device:
        raise ValueError(f"labels are on {labels.device} but cos is on {cos.device}")
    labels = labels.long()
    low, high = (int(v) for v in torch.stack(torch.aminmax(labels)).tolist())
    if low < -1 or high >= c:
        bad = labels[(labels < -1) | (labels >= c)][0].item()
        raise ValueError(f"labels must be -1 or in [0, {c}) (the columns of cos), got {bad}")
    # One cheap reduction catches NaN and Inf (|cos| <= 1 cannot overflow a sum);
    # only when it fires is the exact elementwise check run.
    if not torch.isfinite(cos.detach().sum(dtype=torch.float32)).item():
        bad = ~torch.isfinite(cos.detach())
        if bool(bad.any()):
            row, col = (int(v) for v in bad.nonzero()[0].tolist())
            raise ValueError(f"cos must be finite, got {cos[row, col].item()} at row {row}, column {col}")
    return labels


def check_features(
    norm_embeddings: torch.Tensor | None, norm_weight: torch.Tensor | None, cos: torch.Tensor, needed_by: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the normalised embeddings ``[N, D]`` and class weights ``[C, D]`` behind ``cos``.

    Losses whose gradient routing needs the weight-detached cosine (computed
    only at the few entries that need it) take these from the head.
    """
    if norm_embeddings is None or norm_weight is None:
        raise ValueError(
            f"{needed_by} needs norm_embeddings [N, D] and norm_weight [C, D] (the L2-normalised "
            "inputs of cos) to route the penalty's gradient; pass them, e.g. through ClassifierHead"
        )
    n, c = cos.shape
    if norm_embeddings.dim() != 2 or norm_embeddings.shape[0] != n:
        raise ValueError(f"norm_embeddings must have shape [{n}, D], got {tuple(norm_embeddings.shape)}")
    if norm_weight.dim() != 2 or norm_weight.shape != (c, norm_embeddings.shape[1]):
        raise ValueError(
            f"norm_weight must have shape [{c}, {norm_embeddings.shape[1]}], got {tuple(norm_weight.shape)}"
        )
    return norm_embeddings, norm_weight


def check_embeddings(norm_embeddings: torch.Tensor | None, cos: torch.Tensor, needed_by: str) -> torch.Tensor:
    """Check the normalised embeddings ``[N, D]`` behind the rows of ``cos`` (pair losses need only these)."""
    if not isinstance(norm_embeddings, torch.Tensor):
        raise ValueError(
            f"{needed_by} needs norm_embeddings [N, D] (the L2-normalised rows of cos) for the pair "
            "cosines; pass them, e.g. through ClassifierHead"
        )
    if norm_embeddings.dim() != 2 or norm_embeddings.shape[0] != cos.shape[0] or not norm_embeddings.is_floating_point():
        raise ValueError(
            f"norm_embeddings must be a floating-point tensor of shape [{cos.shape[0]}, D], got "
            f"{norm_embeddings.dtype} {tuple(norm_embeddings.shape)}"
        )
    return norm_embeddings
