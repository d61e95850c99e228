"""arcface_torch's ``margin_list`` <-> the registry's loss parameters, and the factory that replaces ``CombinedMarginLoss``.

``train_v2.py`` builds ``CombinedMarginLoss(64, m1, m2, m3, interclass_filtering_threshold)``
from ``cfg.margin_list``. :func:`margin_loss_factory` returns a callable with
that signature that builds a registered loss instead, class-sharded as
``PartialFC_V2`` needs it, and logging ``T_u`` and the instance FPR beside
the host's log every ``frequent`` steps.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import torch

from fpr_plugin.hosts.arcface_torch.checkout import HostError
from fpr_plugin.losses.stats import LOG_LABELS

__all__ = ["FEATURE_LOSSES", "loss_params_from_margins", "margin_list_from_loss", "margin_loss_factory", "needs_features"]

#: Losses whose gradient routing needs the normalised features (the host's PartialFC_V2 never passes them).
FEATURE_LOSSES = ("fpr_penalty_tface",)

# Loss parameters that the margin list carries; the rest of loss_params goes to the loss as it is.
MARGIN_KEYS = ("s", "m", "m1", "m2", "m3", "base")


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-12)


def loss_params_from_margins(loss: str, s: float, m1: float, m2: float, m3: float) -> dict[str, Any]:
    """The parameters of registered loss ``loss`` that ``margin_list = (m1, m2, m3)`` and scale ``s`` mean.

    (1, m, 0) is ArcFace and (1, 0, m) CosFace, as in arcface_torch. HostError
    when ``loss`` cannot have that margin.
    """
    cosface = _close(m1, 1.0) and _close(m2, 0.0) and m3 > 0
    arcface = _close(m1, 1.0) and _close(m3, 0.0)
    if loss == "combined":
        return {"s": s, "m1": m1, "m2": m2, "m3": m3}
    if loss in ("cosface", "fpr_penalty_tface") and cosface:
        return {"s": s, "m": m3}
    if loss == "arcface" and arcface:
        return {"s": s, "m": m2}
    if loss == "fpr_penalty" and (cosface or arcface):
        return {"s": s, "m": m3 if cosface else m2, "base": "cosface" if cosface else "arcface"}
    expected = {
        "cosface": "(1.0, 0.0, m) with m > 0",
        "fpr_penalty_tface": "(1.0, 0.0, m) with m > 0 (the released code is CosFace-based)",
        "arcface": "(1.0, m, 0.0)",
        "fpr_penalty": "(1.0, 0.0, m) for base cosface or (1.0, m, 0.0) for base arcface",
    }.get(loss)
    if expected is None:
        raise HostError(f"loss {loss!r} cannot run in arcface_torch's margin-loss slot (known: cosface, arcface, combined, fpr_penalty, fpr_penalty_tface)")
    raise HostError(f"margin_list ({m1}, {m2}, {m3}) does not fit --loss {loss}: expected {expected}")


def margin_list_from_loss(loss: str, params: Mapping[str, Any]) -> tuple[float, float, float]:
    """arcface_torch's ``margin_list`` for registered loss ``loss`` with resolved ``params``."""
    if loss == "combined":
        return (float(params.get("m1", 1.0)), float(params.get("m2", 0.5)), float(params.get("m3", 0.0)))
    m = float(params.get("m", 0.5 if loss == "arcface" else 0.35))
    arc = loss == "arcface" or (loss == "fpr_penalty" and params.get("base", "cosface") == "arcface")
    return (1.0, m, 0.0) if arc else (1.0, 0.0, m)


def needs_features(loss: str, params: Mapping[str, Any]) -> bool:
    """True when the loss needs ``norm_embeddings``/``norm_weight``, so the plugin's PartialFC must replace the host's."""
    return loss in FEATURE_LOSSES or params.get("penalty_grad") == "embeddings" or params.get("negatives") == "pairs"


class _FprLogger:
    """Forward hook: every ``frequent`` calls, rank 0 logs the loss's ``last_stats`` on the host's logger."""

    def __init__(self, frequent: int, name: str) -> None:
        self.frequent = max(1, int(frequent))
        self.name = name
        self.calls = 0

    def __call__(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self.calls += 1
        stats = getattr(module, "last_stats", None)
        if not stats or self.calls % self.frequent:
            return
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        parts = [f"{label} {stats[key]:.4g}" for key, label in LOG_LABELS if key in stats]
        logging.info("fpr_plugin %s | step %d | %s", self.name, self.calls, " | ".join(parts))


def margin_loss_factory(cfg: Mapping[str, Any]) -> Callable[..., torch.nn.Module]:
    """A stand-in for ``CombinedMarginLoss`` that builds ``cfg.loss`` (with ``cfg.loss_params``), sharded for PartialFC.

    Called as the host calls ``CombinedMarginLoss(s, m1, m2, m3,
    interclass_filtering_threshold)``. The loss gets the class-sharded layout
    over ``cfg.num_classes`` (or the sampled one when ``cfg.sample_rate < 1``).
    """
    from fpr_plugin.registry import build_loss

    loss_name = str(cfg.get("loss") or "combined")
    extra = {k: v for k, v in dict(cfg.get("loss_params") or {}).items() if k not in MARGIN_KEYS}

    def build(s: float, m1: float, m2: float, m3: float, interclass_filtering_threshold: float = 0) -> torch.nn.Module:
        if interclass_filtering_threshold and interclass_filtering_threshold > 0:
            raise HostError(
                f"interclass_filtering_threshold={interclass_filtering_threshold}: fpr_plugin's losses do not "
                "filter inter-class entries (it would change which negatives count as false positives); set it to 0"
            )
        params = {**loss_params_from_margins(loss_name, s, m1, m2, m3), **extra}
        loss = build_loss(loss_name, **params)
        if float(cfg.get("sample_rate", 1.0)) < 1:
            loss.shard_classes(sampled=True)
        else:
            loss.shard_classes(int(cfg["num_classes"]))
        loss.register_forward_hook(_FprLogger(cfg.get("frequent", 10), loss_name))
        return loss

    build.__name__ = f"{loss_name}_margin_loss"
    return build
