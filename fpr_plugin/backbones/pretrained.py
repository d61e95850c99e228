"""Starting a backbone from a pretrained file: arcface_torch's ``backbone.pth`` or an fpr-train ``model.pt``.

``init_backbone`` in a recipe names such a file; the trainer calls
:func:`load_init_backbone` at the start of a fresh run (on resume the
checkpoint's weights win). The file's keys may be arcface_torch's or this
package's older ones, with or without a DDP ``module.`` prefix; a full fpr-train
checkpoint (a dict with a ``backbone`` entry) works too.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from fpr_plugin.backbones.iresnet import IRESNET_LAYERS
from fpr_plugin.backbones.state_dicts import (
    IResNetSpec,
    StateDictMismatch,
    check_state_dict,
    infer_iresnet,
    non_finite_tensor,
    normalize_state_dict,
)

__all__ = ["InitBackboneError", "read_backbone_state", "load_init_backbone"]


class InitBackboneError(ValueError):
    """``init_backbone`` is missing, unreadable or does not fit the recipe (one-line message)."""


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def read_backbone_state(path: str | os.PathLike, what: str = "init_backbone") -> dict[str, torch.Tensor]:
    """The normalised backbone state dict in ``path`` (``torch.load(weights_only=True)`` on the CPU).

    Raises InitBackboneError naming ``what`` and the file when it is missing or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InitBackboneError(
            f"{what} {str(path)!r} does not exist (expected an arcface_torch backbone.pth or an fpr-train model.pt)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InitBackboneError(f"{what} {path} could not be read as a state dict: {first}") from None
    if isinstance(obj, Mapping) and "backbone" in obj:
        obj = obj["backbone"]
    if not _is_state_dict(obj):
        found = f"keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise InitBackboneError(f"{what} {path} is not a backbone state dict (found {found})")
    bad = non_finite_tensor(obj)
    if bad is not None:
        raise InitBackboneError(f"{what} {path}: tensor {bad!r} holds non-finite values (NaN or inf); expected "
                                "the finite weights of a trained backbone")
    return normalize_state_dict(obj)


def _recipe_value(cfg: Mapping[str, Any], key: str) -> Any:
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def load_init_backbone(
    backbone: nn.Module, path: str | os.PathLike, cfg: Mapping[str, Any], what: str = "init_backbone"
) -> IResNetSpec | None:
    """Load the pretrained weights in ``path`` into ``backbone`` (strictly), after checking them against ``cfg``.

    For an IResNet ``cfg.network`` the file's depth, embedding size, width and stem
    stride must be the recipe's; returns what the keys describe (None for other networks).
    """
    state_dict = read_backbone_state(path, what)
    source = f"{what} {path}"
    network = _recipe_value(cfg, "network")
    spec = None
    if network in IRESNET_LAYERS:
        try:
            spec = infer_iresnet(state_dict, source)
        except StateDictMismatch as exc:
            raise InitBackboneError(str(exc)) from None
        if spec.network != network:
            raise InitBackboneError(
                f"{source} is an IResNet {spec.network} (blocks per stage {spec.layers}), "
                f"the recipe's network is {network!r}"
            )
        embedding_size = int(_recipe_value(cfg, "embedding_size"))
        if spec.embedding_size != embedding_size:
            raise InitBackboneError(
                f"{source} has embedding size {spec.embedding_size}, the recipe's embedding_size is {embedding_size}"
            )
        conv1 = getattr(backbone, "conv1", None)
        if isinstance(conv1, nn.Conv2d):
            for key, have, want in (("width", spec.width, conv1.out_channels),
                                    ("stem_stride", spec.stem_stride, conv1.stride[0])):
                if have != want:
                    raise InitBackboneError(
                        f"{source} has {key} {have}, the recipe's backbone_params.{key} is {want}"
                    )
    try:
        check_state_dict(backbone, state_dict)
    except ValueError as exc:
        raise InitBackboneError(f"{source}: {exc}") from None
    backbone.load_state_dict(state_dict)
    return spec
