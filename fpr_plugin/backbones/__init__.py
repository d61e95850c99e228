"""Face-embedding backbones, registered by name (``build_backbone("r50")``).

IResNet state dicts use arcface_torch's key names; :mod:`.state_dicts` reads the
depth off a state dict's keys and :mod:`.pretrained` loads a ``backbone.pth``.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from fpr_plugin.backbones import iresnet  # noqa: F401  (registers r18 ... r200)
from fpr_plugin.backbones.iresnet import IRESNET_LAYERS, IResNet, rename_legacy_keys
from fpr_plugin.backbones.pretrained import InitBackboneError, load_init_backbone, read_backbone_state
from fpr_plugin.backbones.state_dicts import (
    IResNetSpec,
    StateDictMismatch,
    check_state_dict,
    infer_iresnet,
    normalize_state_dict,
)
from fpr_plugin.registry import build_backbone

__all__ = [
    "IResNet",
    "IRESNET_LAYERS",
    "IResNetSpec",
    "InitBackboneError",
    "StateDictMismatch",
    "backbone_from_config",
    "check_state_dict",
    "infer_iresnet",
    "load_init_backbone",
    "normalize_state_dict",
    "read_backbone_state",
    "rename_legacy_keys",
]


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def backbone_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    """Build the backbone a (recipe) config describes.

    Uses ``cfg.network``, ``cfg.embedding_size``, ``cfg.dropout`` (default 0) and
    the keyword overrides in ``cfg.backbone_params`` (e.g. ``width``, ``stem_stride``).
    """
    for key in ("network", "embedding_size"):
        if _get(cfg, key) is None:
            raise KeyError(f"config has no {key!r}: cannot build the backbone")
    params = dict(_get(cfg, "backbone_params", {}) or {})
    return build_backbone(
        _get(cfg, "network"),
        embedding_size=int(_get(cfg, "embedding_size")),
        dropout=float(_get(cfg, "dropout", 0.0)),
        **params,
    )
