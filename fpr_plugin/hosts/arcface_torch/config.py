"""The config that arcface_torch's ``train_v2.py`` receives from the launcher.

Two sources:

- a host config, ``configs/NAME`` inside the checkout, loaded by the host's
  own ``get_config``; ``--loss`` and ``--set`` then change it;
- one of fpr_plugin's recipes (``recipes/bupt_balancedface_r34.py`` ...),
  loaded and checked by :func:`fpr_plugin.train.config.load_config`, then
  translated key by key onto the host's ``configs/base.py``. A recipe key
  whose value arcface_torch cannot express is refused by name.

Either way the result carries the plugin's keys ``loss`` and ``loss_params``
(the loss's own parameters; the margin stays in ``margin_list``) and, for a
step schedule, ``lr_steps`` and ``lr_decay``.
"""

from __future__ import annotations

import copy
import importlib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from easydict import EasyDict

from fpr_plugin.hosts.arcface_torch.checkout import HostError, use_root
from fpr_plugin.hosts.arcface_torch.margins import MARGIN_KEYS, loss_params_from_margins, margin_list_from_loss
from fpr_plugin.registry import closest

__all__ = ["HOST_SCALE", "is_host_config", "resolve_config", "translate_recipe"]

#: train_v2.py builds its margin loss with this scale.
HOST_SCALE = 64.0

# Our recipe keys and the host key each becomes (same name unless given).
RENAMED = {"network": "network", "embedding_size": "embedding_size", "rec": "rec", "num_classes": "num_classes",
           "num_image": "num_image", "num_epoch": "num_epoch", "lr": "lr", "weight_decay": "weight_decay",
           "warmup_epoch": "warmup_epoch", "seed": "seed", "frequent": "frequent", "num_workers": "num_workers",
           "resume": "resume", "output": "output", "loss": "loss", "lr_steps": "lr_steps", "lr_decay": "lr_decay"}
# Recipe keys with one value in train_v2.py: any other value is refused.
FIXED = {"momentum": (0.9, "its SGD uses momentum 0.9"), "grad_clip": (5.0, "it clips the backbone's gradient norm at 5"),
         "head_init_std": (0.01, "PartialFC_V2 initialises the class centres with std 0.01"),
         "dropout": (0.0, "train_v2.py builds the backbone with dropout 0"),
         "random_flip": (True, "its MXFaceDataset always flips at random"),
         "backbone_params": ({}, "get_model takes only the network name, dropout, fp16 and num_features"),
         "max_steps": (None, "it always trains num_epoch epochs"),
         "init_backbone": (None, "train_v2.py has no pretrained-weights option (fine-tune with fpr-train)")}
# Recipe keys about our own trainer's bookkeeping and checks; the host keeps its own (dropped with a notice).
OWN_BOOKKEEPING = ("save_every", "keep_checkpoints", "tensorboard", "check_labels")
# Keys load_config adds that are not recipe keys.
DERIVED = ("recipe", "loss_params", "loss_params_skipped", "batch_size", "fp16")


def is_host_config(config: str) -> bool:
    """True for ``configs/NAME`` (the host's form), False for a recipe file path."""
    return config.replace(os.sep, "/").startswith("configs/")


def _host_base(root: Path) -> EasyDict:
    use_root(root)
    module = importlib.import_module("configs.base")
    return EasyDict(copy.deepcopy(dict(module.config)))


def _load_host_config(root: Path, config: str) -> EasyDict:
    stem = Path(config).stem
    if not (root / "configs" / f"{stem}.py").is_file():
        known = sorted(p.stem for p in (root / "configs").glob("*.py") if p.stem not in ("__init__", "base"))
        hint = closest(stem, known)
        raise HostError(f"config {config}: no file configs/{stem}.py in {root}" + (f"; did you mean configs/{hint}?" if hint else ""))
    use_root(root)
    from utils.utils_config import get_config  # the host's loader: configs.base, then configs.NAME

    try:
        cfg = get_config(f"configs/{stem}")
    except Exception as exc:  # the host's own checks and the config file's errors
        raise HostError(f"config configs/{stem}.py was rejected by arcface_torch: {type(exc).__name__}: {exc}") from exc
    return EasyDict(cfg)


def _require(key: str, value: Any, wanted: Any, why: str) -> None:
    if value != wanted and not (isinstance(value, (list, tuple, dict)) and not value and not wanted):
        raise HostError(f"recipe key {key}={value!r} cannot run in arcface_torch ({why}); it needs {key}={wanted!r}")


def translate_recipe(cfg: Mapping[str, Any], host_base: Mapping[str, Any], world_size: int) -> tuple[EasyDict, list[str]]:
    """fpr_plugin's resolved recipe ``cfg`` as an arcface_torch config on ``host_base``; also the keys dropped."""
    out = EasyDict(copy.deepcopy(dict(host_base)))
    dropped: list[str] = []
    for key, value in cfg.items():
        if key in RENAMED:
            out[RENAMED[key]] = copy.deepcopy(value)
        elif key in FIXED:
            _require(key, value, *FIXED[key])
        elif key in OWN_BOOKKEEPING:
            dropped.append(key)
        elif key not in DERIVED:
            raise HostError(f"recipe key {key}={value!r} has no arcface_torch equivalent (remove it to run in the host)")
    if cfg["fp16"] not in (False, "fp16"):
        raise HostError(f"recipe key fp16={cfg['fp16']!r} cannot run in arcface_torch (it has float16 AMP only); use fp16='fp16' or False")
    out.fp16 = cfg["fp16"] == "fp16"
    if cfg["batch_size"] % world_size:
        raise HostError(f"recipe key batch_size={cfg['batch_size']} (global) does not divide over {world_size} ranks")
    out.batch_size = cfg["batch_size"] // world_size  # the host's batch_size is per rank
    params = dict(cfg["loss_params"])
    scale = float(params.get("s", HOST_SCALE))
    if scale != HOST_SCALE:
        raise HostError(f"recipe key loss_params.s={scale} cannot run in arcface_torch (train_v2.py uses s=64)")
    out.margin_list = margin_list_from_loss(cfg["loss"], params)
    out.loss_params = {k: v for k, v in params.items() if k not in MARGIN_KEYS}
    out.output = str(Path(cfg["output"]).resolve())
    out.save_all_states = True  # per-epoch checkpoints, so a run can resume
    out.val_targets = []  # BUPT record sets carry no verification .bin files
    return out, dropped


def _coerce_like(key: str, value: Any, example: Any) -> Any:
    if example is None or isinstance(value, type(example)):
        return value
    if isinstance(example, bool):
        raise HostError(f"--set {key}={value!r}: expected True or False")
    if isinstance(example, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(example, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(example)(value)
    raise HostError(f"--set {key}={value!r}: expected a {type(example).__name__} like {example!r}")


def _apply_host_overrides(cfg: EasyDict, overrides: Iterable[tuple[list[str], Any]]) -> set[str]:
    explicit: set[str] = set()
    for path, value in overrides:
        key = ".".join(path)
        if path[0] == "loss_params":
            if len(path) != 2:
                raise HostError(f"--set {key}: loss_params takes one level, e.g. loss_params.gamma_u=1e-4")
            cfg.loss_params = {**dict(cfg.get("loss_params") or {}), path[1]: value}
            explicit.add(path[1])
            continue
        if len(path) != 1 or path[0] not in cfg:
            hint = closest(path[0], list(cfg))
            raise HostError(f"--set {key}: arcface_torch's config has no key {path[0]!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        cfg[path[0]] = _coerce_like(key, value, cfg[path[0]])
    return explicit


def _check(cfg: EasyDict, explicit: set[str]) -> None:
    from fpr_plugin.train.config import resolve_loss_params

    threshold = cfg.get("interclass_filtering_threshold", 0) or 0
    if threshold > 0:
        raise HostError(
            f"interclass_filtering_threshold={threshold}: fpr_plugin's losses do not filter inter-class entries "
            "(it changes which negatives count as false positives); set --set interclass_filtering_threshold=0"
        )
    for key in MARGIN_KEYS:
        if key in (cfg.loss_params or {}):
            raise HostError(
                f"loss_params.{key}: in arcface_torch the margin and scale come from margin_list and s=64; "
                "set --set margin_list=(1.0,0.0,0.35) (CosFace) or (1.0,0.5,0.0) (ArcFace) instead"
            )
    margin = tuple(cfg.margin_list)
    if len(margin) != 3:
        raise HostError(f"margin_list={margin!r}: expected three numbers (m1, m2, m3)")
    margins = loss_params_from_margins(cfg.loss, HOST_SCALE, *margin)
    try:
        resolved, _ = resolve_loss_params(cfg.loss, {**margins, **dict(cfg.loss_params or {})}, explicit)
    except (KeyError, ValueError) as exc:
        raise HostError(str(exc)) from exc
    cfg.loss_params = {k: v for k, v in resolved.items() if k not in MARGIN_KEYS}
    if not isinstance(cfg.get("num_classes"), int) or cfg.num_classes < 1:
        raise HostError(f"num_classes={cfg.get('num_classes')!r}: expected the number of identities (an int >= 1)")
    rate = cfg.get("sample_rate", 1.0)
    if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise HostError(f"sample_rate={rate!r}: expected a number in (0, 1]")
    rec = str(cfg.get("rec", ""))
    if rec != "synthetic" and not (Path(rec, "train.rec").is_file() and Path(rec, "train.idx").is_file()):
        raise HostError(f"rec={rec!r}: expected a record folder with train.rec and train.idx (or 'synthetic')")


def resolve_config(root: Path, config: str, loss: str | None, overrides: Iterable[str], world_size: int) -> tuple[EasyDict, list[str]]:
    """The host config for ``config`` (host ``configs/NAME`` or a recipe path) with ``--loss`` and ``--set`` applied.

    Returns ``(cfg, notices)``; HostError (one line) for anything the host cannot run.
    """
    from fpr_plugin.train.config import fill_from_records, load_config, parse_override

    try:
        parsed = [(text, *parse_override(text)) for text in overrides]
    except ValueError as exc:
        raise HostError(str(exc)) from exc
    notices: list[str] = []
    if is_host_config(config):
        cfg = _load_host_config(root, config)
        cfg.loss = loss or cfg.get("loss") or "combined"
        cfg.loss_params = dict(cfg.get("loss_params") or {})
        host_sets = [(path, value) for _, path, value in parsed]
    else:
        if not Path(config).is_file():
            raise HostError(f"config {config}: no such file (expected configs/NAME of the checkout or a recipe .py)")
        base = _host_base(root)
        recipe_sets = [text for text, path, _ in parsed if path[0] not in base or path[0] in RENAMED or path[0] in FIXED]
        host_sets = [(path, value) for text, path, value in parsed if text not in recipe_sets]
        try:
            resolved = load_config(config, loss=loss, overrides=recipe_sets)
        except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
            raise HostError(f"recipe {config}: {exc}") from exc
        cfg, dropped = translate_recipe(resolved, base, world_size)  # refuses what the host cannot express
        if resolved.num_classes is None or resolved.num_image is None:
            try:
                fill_from_records(resolved)
            except (FileNotFoundError, ValueError) as exc:
                raise HostError(f"recipe {config}: {exc}") from exc
            cfg.num_classes, cfg.num_image = resolved.num_classes, resolved.num_image
        if dropped:
            notices.append(f"recipe keys {', '.join(dropped)} are fpr-train's bookkeeping; arcface_torch keeps its own (per-epoch checkpoints)")
    explicit = _apply_host_overrides(cfg, host_sets)
    _check(cfg, explicit)
    return cfg, notices
