"""The trained model's files: ``model.pt`` (backbone weights) with ``config.json`` beside it, written and read.

The trainer writes them with :func:`write_model_and_config`; export (and anyone
holding a checkpoint) reads them back with :func:`load_checkpoint` and builds the
network with :func:`build_model`. Besides ``model.pt``, :func:`load_checkpoint`
reads fpr-train's full checkpoints and a bare arcface_torch ``backbone.pth``,
whose network and embedding size are read off its keys.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from fpr_plugin.atomic import atomic_write
from fpr_plugin.backbones import backbone_from_config
from fpr_plugin.backbones.iresnet import IRESNET_LAYERS
from fpr_plugin.backbones.state_dicts import (
    StateDictMismatch,
    check_state_dict,
    infer_iresnet,
    non_finite_tensor,
    normalize_state_dict,
)
from fpr_plugin.text_files import read_text

__all__ = [
    "MODEL_NAME",
    "CONFIG_NAME",
    "non_finite_entry",
    "write_model_and_config",
    "write_config",
    "load_checkpoint",
    "check_state_dict",
    "build_model",
]

MODEL_NAME = "model.pt"
CONFIG_NAME = "config.json"


# --------------------------------------------------------------------------- writing


def non_finite_entry(obj: Any, prefix: str = "") -> str | None:
    """The key of the first floating-point tensor (or float) in ``obj`` holding NaN/inf, else None."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(obj, float):
        return None if np.isfinite(obj) else (prefix or "<float>")
    if isinstance(obj, Mapping):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = non_finite_entry(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def write_model_and_config(output: str | os.PathLike, backbone_state: Mapping[str, torch.Tensor],
                           config: dict) -> None:
    """Write ``model.pt`` (backbone weights only) and ``config.json`` atomically; refuse NaN/inf weights."""
    output = Path(output)
    weights = {k: v.detach().cpu() for k, v in backbone_state.items()}
    bad = non_finite_entry(weights)
    if bad is not None:  # never write a model full of NaN
        raise FloatingPointError(f"refusing to write {output / MODEL_NAME}: backbone weight {bad!r} is not finite")
    atomic_write(output / MODEL_NAME, lambda tmp: torch.save(weights, tmp))
    write_config(output, config)


def write_config(output: str | os.PathLike, config: dict) -> None:
    """Write ``config.json`` (the resolved config) atomically."""
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    atomic_write(Path(output) / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


# --------------------------------------------------------------------------- reading


def _torch_load(path: Path, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` on CPU, with ``weights_only=True`` unless the file is trusted."""
    if trust_checkpoint:  # full unpickling: only for files from a trusted source
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        reason = _load_failure(exc)
        hint = ""
        if "easydict" in reason.lower():
            hint = (" The checkpoint stores an EasyDict config: pass --trust-checkpoint "
                    "(trust_checkpoint=True) if you trust the file, or export model.pt with config.json.")
        raise ValueError(
            f"{path} is not a model checkpoint: expected a backbone state_dict (model.pt) or a "
            f"checkpoint dict with 'backbone' and 'config', saved with torch.save "
            f"(torch.load(weights_only=True): {reason}).{hint}"
        ) from exc


def _load_failure(exc: BaseException) -> str:
    """The informative part of a ``torch.load`` error."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n|\. Please|$)", text, re.S)
    if match:
        reason = match.group(1).strip()
        if "torch.nn.modules" in reason:
            reason += " (a pickled nn.Module; save model.state_dict() instead)"
        return reason
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _load_json(path: Path) -> dict:
    try:
        return json.loads(read_text(path, "the JSON config that fpr-train wrote beside the model"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def _load_recipe(recipe: str | os.PathLike) -> dict:
    """A config from a recipe file (via fpr_plugin.train.config) or a resolved config.json."""
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist")
    if path.suffix == ".json":
        return _load_json(path)
    try:
        from fpr_plugin.train.config import load_config
    except ImportError as exc:
        raise RuntimeError(
            f"--recipe {path} needs fpr_plugin.train.config.load_config, which is not "
            f"available ({exc}); pass the training output's config.json instead"
        ) from exc
    try:
        cfg = dict(load_config(str(path)))
    except (KeyError, TypeError, ValueError, SyntaxError, ImportError) as exc:
        raise ValueError(f"recipe {path} could not be loaded: {exc}") from exc
    cfg.setdefault("recipe", path.stem)
    return cfg


def _backbone_entry(obj: Any, path: Path) -> tuple[Mapping[str, torch.Tensor], Any]:
    """``(state_dict, config or None)`` of a loaded file: a checkpoint dict or a bare state dict."""
    if isinstance(obj, Mapping) and "backbone" in obj:
        if not _is_state_dict(obj["backbone"]):
            raise ValueError(
                f"{path}: entry 'backbone' is not a state_dict of tensors (got {type(obj['backbone']).__name__})"
            )
        return obj["backbone"], obj.get("config")
    if _is_state_dict(obj):
        return obj, None
    found = f"keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{path} is not a model checkpoint: expected a backbone state_dict or a dict with "
        f"a 'backbone' state_dict, found {found}"
    )


def load_checkpoint(
    checkpoint_path: str | os.PathLike,
    recipe: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    network: str | None = None,
    embedding_size: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``(backbone state_dict, config)`` from ``model.pt``, a full checkpoint or a ``backbone.pth``.

    The config comes from ``recipe`` when given (a recipe ``.py`` or a ``config.json``),
    else from the checkpoint's ``config`` entry, else from ``config.json`` beside it,
    else (a bare state dict such as arcface_torch's ``backbone.pth``) from the keys.
    ``network`` and ``embedding_size`` override the config; given explicitly, they
    must agree with the keys (ValueError naming both). The state dict comes back
    with arcface_torch's key names and no ``module.`` prefix.
    ``trust_checkpoint`` allows arbitrary pickled objects (``weights_only=False``).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state_dict, config = _backbone_entry(_torch_load(path, trust_checkpoint), path)
    state_dict = normalize_state_dict(state_dict)
    bad = non_finite_tensor(state_dict)
    if bad is not None:
        raise ValueError(f"{path}: tensor {bad!r} holds non-finite values (NaN or inf); expected the finite "
                         "weights of a trained model (a diverged run keeps its last good checkpoint instead)")
    from_keys = False
    if recipe is not None:
        config = _load_recipe(recipe)
    elif config is None:
        beside = path.parent / CONFIG_NAME
        if beside.is_file():
            config = _load_json(beside)
        else:  # a bare state dict (arcface_torch's backbone.pth): the keys say what it is
            config, from_keys = {}, True
    config = dict(config)
    if network is not None:
        config["network"] = str(network)
    if embedding_size is not None:
        config["embedding_size"] = int(embedding_size)
    _fill_from_keys(config, state_dict, path, from_keys, network, embedding_size)
    for key in ("network", "embedding_size"):
        if config.get(key) is None:
            raise ValueError(f"config for {path} has no {key!r}")
    return state_dict, config


def _fill_from_keys(
    config: dict, state_dict: Mapping[str, torch.Tensor], path: Path, from_keys: bool,
    network: str | None, embedding_size: int | None,
) -> None:
    """Fill ``network``/``embedding_size``/``backbone_params`` from the keys and check explicit ones."""
    needed = config.get("network") is None or config.get("embedding_size") is None
    explicit = network is not None or embedding_size is not None
    known = config.get("network")
    if not (needed or from_keys or explicit) or (known is not None and known not in IRESNET_LAYERS):
        return  # nothing to fill or check, or not an IResNet: build_model checks the keys
    try:
        spec = infer_iresnet(state_dict, str(path))
    except StateDictMismatch as exc:
        raise ValueError(str(exc)) from None
    if config.get("network") is None:
        config["network"] = spec.network
    elif config["network"] != spec.network:
        given = f"--network {network}" if network is not None else f"config network {config['network']!r}"
        raise ValueError(
            f"{given} does not fit {path}: its keys are an IResNet {spec.network} "
            f"(blocks per stage {spec.layers}, {config['network']} has {IRESNET_LAYERS[config['network']]})"
        )
    if config.get("embedding_size") is None:
        config["embedding_size"] = spec.embedding_size
    elif embedding_size is not None and int(embedding_size) != spec.embedding_size:
        raise ValueError(
            f"--embedding-size {embedding_size} does not fit {path}: its fc/features give "
            f"embedding size {spec.embedding_size}"
        )
    if from_keys or config.get("backbone_params") is None:
        config["backbone_params"] = {**spec.backbone_params(), **dict(config.get("backbone_params") or {})}


def build_model(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> nn.Module:
    """The backbone described by ``config`` with ``state_dict`` loaded, in eval mode, fp32."""
    cfg = dict(config)
    params = dict(cfg.get("backbone_params") or {})
    params.pop("fp16", None)  # inference runs in float32
    cfg["backbone_params"] = params
    model = backbone_from_config(cfg)
    try:
        check_state_dict(model, state_dict)
    except ValueError as exc:
        raise ValueError(f"{exc} (network {cfg['network']!r}, params {params})") from None
    model.load_state_dict(state_dict)
    return model.float().eval()
