"""Recipe loading: ``recipes/base.py`` + a recipe file + ``--loss`` + ``--set key=value``.

A recipe is a Python file defining ``config`` (an EasyDict or dict) with the
keys it changes; :func:`load_config` merges it on top of ``base.py``, checks
every key and value against the base recipe's types, and resolves the loss
parameters for the chosen loss. Reading the record set (``num_classes``,
``num_image``) is left to :func:`fill_from_records`, so a recipe can be
checked without its data.
"""

from __future__ import annotations

import ast
import copy
import difflib
import inspect
import math
import numbers
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping

from easydict import EasyDict

from fpr_plugin.cli_errors import UserError

__all__ = [
    "load_config",
    "load_recipe",
    "find_base_recipe",
    "parse_override",
    "apply_override",
    "resolve_loss_params",
    "validate_config",
    "check_buildable",
    "repository_base_recipe",
    "fill_from_records",
    "default_output",
    "to_plain",
]

# Keys that may be None, and the type a value must have when it is set.
OPTIONAL_TYPES: dict[str, type] = {
    "num_classes": int,
    "num_image": int,
    "output": str,
    "max_steps": int,
    "grad_clip": float,
    "init_backbone": str,
}
# Dict-valued keys merged one level deep (recipe entries update base entries).
MERGED_DICT_KEYS = ("backbone_params", "loss_params")
FP16_CHOICES = (False, "fp16", "bf16")
# Keys a recipe never sets; load_config fills them in.
DERIVED_KEYS = ("recipe", "loss_params_skipped")


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.4)
    return matches[0] if matches else None


def _unknown_key_message(key: str, known: Iterable[str], where: str) -> str:
    hint = _closest(key, known)
    suggestion = f"; did you mean {hint!r}?" if hint else ""
    return f"unknown key {key!r} in {where}{suggestion}"


def repository_base_recipe() -> Path:
    """``recipes/base.py`` of this checkout (beside the ``fpr_plugin`` package)."""
    return Path(__file__).resolve().parents[2] / "recipes" / "base.py"


def find_base_recipe(recipe_path: str | Path) -> Path:
    """The ``base.py`` a recipe builds on: the repository's ``recipes/base.py``.

    A ``base.py`` that happens to lie beside a recipe elsewhere is *not* run (it
    would run as code); it is used only where the repository has no
    ``recipes/base.py`` (an installed package without the recipes folder).
    """
    repository = repository_base_recipe()
    if repository.is_file():
        return repository
    beside = Path(recipe_path).resolve().parent / "base.py"
    if beside.is_file():
        return beside
    raise FileNotFoundError(
        f"no base recipe for {recipe_path}: expected {repository} (or base.py beside the recipe)"
    )


def _recipe_failure(path: Path, exc: BaseException) -> UserError:
    """A one-line error for a recipe that does not run: its file, line and the exception."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename or path}, line {exc.lineno}"
        return UserError(f"recipe {where}: syntax error: {exc.msg}; expected a Python file defining `config`")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).suffix == ".py"
              and not f.filename.startswith(sys.prefix) and "runpy" not in Path(f.filename).name]
    recipe_frames = [f for f in frames if Path(f.filename).resolve().parent == path.resolve().parent] or frames
    where = f"{recipe_frames[-1].filename}, line {recipe_frames[-1].lineno}" if recipe_frames else str(path)
    message = " ".join(str(exc).split())
    return UserError(f"recipe {path} failed while running ({where}): {type(exc).__name__}: {message}")


def load_recipe(path: str | Path) -> dict:
    """Run a recipe file and return a deep copy of its ``config`` as a plain dict.

    A recipe is Python and runs as code (as arcface_torch's configs do): only run
    recipes you trust. Its errors (syntax, exceptions) become one-line UserErrors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
    try:
        namespace = runpy.run_path(str(path), run_name=f"fpr_recipe_{path.stem}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the recipe is user code: its failure is a user error
        raise _recipe_failure(path, exc) from exc
    if "config" not in namespace:
        raise ValueError(f"recipe {str(path)!r} does not define `config` (an EasyDict of settings)")
    config = namespace["config"]
    if not isinstance(config, Mapping):
        raise ValueError(
            f"recipe {str(path)!r}: `config` must be a dict/EasyDict, got {type(config).__name__}"
        )
    return to_plain(config)


def to_plain(value: Any) -> Any:
    """A deep copy with EasyDicts turned into dicts and tuples into lists (JSON-friendly)."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return copy.deepcopy(value)


def _merge(base: dict, recipe: dict, recipe_path: Path) -> dict:
    merged = copy.deepcopy(base)
    for key, value in recipe.items():
        if key not in base:
            raise ValueError(_unknown_key_message(key, base, f"recipe {str(recipe_path)!r}"))
        if key in MERGED_DICT_KEYS and isinstance(value, dict) and isinstance(base[key], dict):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    return merged


# ---- value parsing and type checks --------------------------------------------------------
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _parse_literal(text: str) -> Any:
    """A Python literal when ``text`` is one (``0.1``, ``[20, 32]``, ``None``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _type_name(expected: Any) -> str:
    if isinstance(expected, type):
        return expected.__name__
    return type(expected).__name__


def _coerce(value: Any, example: Any, key: str, optional_type: type | None = None) -> Any:
    """``value`` converted to the type of ``example`` (the base value) or ValueError naming ``key``."""
    if key == "fp16":
        if value is True or (isinstance(value, str) and value.lower() in _TRUE | {"fp16", "float16"}):
            return "fp16"
        if value is False or value is None or (isinstance(value, str) and value.lower() in _FALSE):
            return False
        if isinstance(value, str) and value.lower() in ("bf16", "bfloat16"):
            return "bf16"
        raise ValueError(f"key 'fp16' must be one of {FP16_CHOICES}, got {value!r}")
    if optional_type is not None:
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(value, optional_type(), key)
    if example is None:
        return value
    if isinstance(example, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"key {key!r} expects true/false, got {value!r}")
    if isinstance(example, numbers.Integral):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"key {key!r} expects an integer, got {value!r}")
    if isinstance(example, numbers.Real):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ValueError(f"key {key!r} expects a finite number, got {value!r}")
            return float(value)
        raise ValueError(f"key {key!r} expects a number, got {value!r}")
    if isinstance(example, str):
        if isinstance(value, str):
            return value
        raise ValueError(f"key {key!r} expects a string, got {value!r}")
    if isinstance(example, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ValueError(f"key {key!r} expects a list such as [20, 32], got {value!r}")
    if isinstance(example, dict):
        if isinstance(value, Mapping):
            return to_plain(value)
        raise ValueError(f"key {key!r} expects a dict such as {{'s': 64.0}}, got {value!r}")
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into the key path ``["a", "b"]`` and the parsed value."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. lr=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key")
    return key.split("."), _parse_literal(raw.strip())


def apply_override(cfg: dict, path: list[str], value: Any, base: dict) -> None:
    """Set ``cfg[path]`` to ``value`` after checking the key exists and the type matches ``base``."""
    top = path[0]
    if top not in base or top in DERIVED_KEYS:
        raise ValueError(_unknown_key_message(top, [k for k in base if k not in DERIVED_KEYS], "--set"))
    if len(path) == 1:
        cfg[top] = _coerce(value, base[top], top, OPTIONAL_TYPES.get(top))
        return
    container = cfg[top]
    if not isinstance(container, dict):
        raise ValueError(f"--set {'.'.join(path)}: key {top!r} is not a dict, set it as {top}=value")
    for part in path[1:-1]:
        container = container.setdefault(part, {})
        if not isinstance(container, dict):
            raise ValueError(f"--set {'.'.join(path)}: {part!r} is not a dict")
    leaf = path[-1]
    if leaf in container and container[leaf] is not None:
        container[leaf] = _coerce(value, container[leaf], ".".join(path))
    else:
        container[leaf] = value


# ---- loss parameters ----------------------------------------------------------------------
def _accepted_params(factory: Any) -> list[str]:
    sig = inspect.signature(factory)
    return [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def resolve_loss_params(
    loss: str, loss_params: Mapping[str, Any], explicit: Iterable[str] = ()
) -> tuple[dict, list[str]]:
    """The parameters the registered loss ``loss`` receives, and the shared ones it skips.

    Flat entries of ``loss_params`` go to the loss when its constructor takes
    them; a nested dict under a loss name (``{"arcface": {"m": 0.5}}``)
    overrides entries for that loss only. A flat entry that no registered loss
    takes is a typo (ValueError naming the closest parameter); so is an entry
    named in ``explicit`` (set on the command line) that ``loss`` does not take.
    """
    from fpr_plugin.registry import LOSSES

    factory = LOSSES.get(loss)  # unknown loss: UnknownNameError listing the known ones
    accepted = _accepted_params(factory)
    loss_names = LOSSES.names()
    every_param = sorted({p for name in loss_names for p in _accepted_params(LOSSES.get(name))})
    resolved: dict[str, Any] = {}
    skipped: list[str] = []
    for key, value in loss_params.items():
        if isinstance(value, Mapping):
            if key not in loss_names:
                raise ValueError(
                    _unknown_key_message(key, loss_names, "loss_params (a nested dict must be keyed by a loss name)")
                )
            continue
        if key not in every_param:
            raise ValueError(_unknown_key_message(key, every_param, "loss_params (no registered loss takes it)"))
        if key in accepted:
            resolved[key] = value
        elif key in explicit:
            raise ValueError(
                f"loss_params.{key} was set on the command line but loss {loss!r} does not take it "
                f"(it takes: {', '.join(accepted) or 'nothing'})"
            )
        else:
            skipped.append(key)
    for key, value in dict(loss_params.get(loss) or {}).items():
        if key not in accepted:
            raise ValueError(_unknown_key_message(key, accepted, f"loss_params.{loss} (parameters of {loss!r})"))
        resolved[key] = value
    return resolved, skipped


# ---- validation -----------------------------------------------------------------------------
def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check value ranges the types alone do not (ValueError naming the key)."""

    def need(condition: bool, key: str, expected: str) -> None:
        if not condition:
            raise ValueError(f"config key {key!r} must be {expected}, got {cfg.get(key)!r}")

    need(isinstance(cfg["network"], str) and bool(cfg["network"]), "network", "a backbone name")
    need(cfg["embedding_size"] > 0, "embedding_size", "positive")
    need(0.0 <= cfg["dropout"] < 1.0, "dropout", "in [0, 1)")
    need(cfg["num_epoch"] > 0, "num_epoch", "a positive integer")
    need(cfg["batch_size"] > 0, "batch_size", "a positive integer (the global batch)")
    need(cfg["lr"] > 0, "lr", "positive")
    need(
        all(isinstance(e, numbers.Real) and not isinstance(e, bool) for e in cfg["lr_steps"])
        and list(cfg["lr_steps"]) == sorted(cfg["lr_steps"]),
        "lr_steps",
        "an increasing list of epochs",
    )
    need(0.0 < cfg["lr_decay"] <= 1.0, "lr_decay", "in (0, 1]")
    need(cfg["warmup_epoch"] >= 0, "warmup_epoch", ">= 0")
    need(0.0 <= cfg["momentum"] < 1.0, "momentum", "in [0, 1)")
    need(cfg["weight_decay"] >= 0, "weight_decay", ">= 0")
    need(cfg["fp16"] in FP16_CHOICES, "fp16", f"one of {FP16_CHOICES}")
    need(cfg["grad_clip"] is None or cfg["grad_clip"] > 0, "grad_clip", "positive or None")
    need(cfg["head_init_std"] > 0, "head_init_std", "positive")
    need(cfg["max_steps"] is None or cfg["max_steps"] > 0, "max_steps", "a positive integer or None")
    need(cfg["num_workers"] >= 0, "num_workers", ">= 0")
    need(cfg["frequent"] > 0, "frequent", "a positive integer")
    need(cfg["save_every"] >= 0, "save_every", ">= 0 (0: save at epoch ends only)")
    need(cfg["keep_checkpoints"] >= 1, "keep_checkpoints", ">= 1")
    need(cfg["num_classes"] is None or cfg["num_classes"] > 1, "num_classes", "at least 2 or None")
    need(cfg["num_image"] is None or cfg["num_image"] > 0, "num_image", "positive or None")
    for key, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ValueError(f"config key {key!r} must be a finite number, got {value!r}")


def _numbers(value: Any, key: str = "") -> Iterable[tuple[str, float]]:
    """Every float/int in a config, with its dotted key."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{key}[{i}]")
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        yield key, float(value)


def check_buildable(cfg: Mapping[str, Any]) -> None:
    """The backbone name is registered and the loss accepts its parameters (UserError naming the key)."""
    from fpr_plugin.registry import BACKBONES, build_loss

    if cfg["network"] not in BACKBONES.names():
        hint = _closest(cfg["network"], BACKBONES.names())
        raise UserError(f"config key 'network': unknown backbone {cfg['network']!r}; expected one of "
                        f"{', '.join(sorted(BACKBONES.names()))}" + (f" (did you mean {hint!r}?)" if hint else ""))
    try:
        build_loss(cfg["loss"], **cfg["loss_params"])
    except (ValueError, TypeError) as exc:
        raise UserError(f"config key 'loss_params' for loss {cfg['loss']!r}: {' '.join(str(exc).split())}") from None


def default_output(recipe: str, loss: str) -> str:
    """Default output folder of a run: ``work_dirs/<recipe>_<loss>``."""
    return str(Path("work_dirs") / f"{recipe}_{loss}")


def load_config(
    recipe_path: str | Path,
    loss: str | None = None,
    overrides: Iterable[str] = (),
    *,
    base_path: str | Path | None = None,
) -> EasyDict:
    """Load a recipe on top of base.py, apply ``--loss`` and ``--set`` overrides, check and resolve it.

    Returns the resolved config; ``recipe`` is the recipe file's stem,
    ``loss_params`` holds only the chosen loss's parameters, ``output``
    defaults to ``work_dirs/<recipe>_<loss>``. ``num_classes``/``num_image``
    stay None until :func:`fill_from_records`.
    """
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    base_file = Path(base_path) if base_path is not None else find_base_recipe(recipe_path)
    base = load_recipe(base_file)
    base["recipe"] = ""
    cfg = _merge(base, recipe, recipe_path) if recipe_path.resolve() != base_file.resolve() else base
    for key, value in list(cfg.items()):
        if key not in DERIVED_KEYS:
            cfg[key] = _coerce(value, base[key], key, OPTIONAL_TYPES.get(key))
    explicit: set[str] = set()
    for text in overrides:
        path, value = parse_override(text)
        apply_override(cfg, path, value, base)
        if path[0] == "loss_params" and len(path) == 2:
            explicit.add(path[1])
    if loss is not None:
        cfg["loss"] = loss
    cfg["recipe"] = recipe_path.stem
    cfg["loss_params"], skipped = resolve_loss_params(cfg["loss"], cfg["loss_params"], explicit)
    cfg["loss_params_skipped"] = skipped
    if cfg["output"] is None:
        cfg["output"] = default_output(cfg["recipe"], cfg["loss"])
    validate_config(cfg)
    check_buildable(cfg)
    return EasyDict(cfg)


def fill_from_records(cfg: EasyDict) -> EasyDict:
    """Set ``num_classes``/``num_image`` from the record folder ``cfg.rec`` where they are None.

    Raises FileNotFoundError naming the folder and the files expected in it;
    ValueError when a set value contradicts the record set.
    """
    rec = Path(cfg.rec) if cfg.rec else None
    needed = ("train.rec", "train.idx", "property")
    if rec is None or not rec.is_dir():
        raise FileNotFoundError(
            f"record folder rec={cfg.rec!r} does not exist; expected a folder with {', '.join(needed)} "
            "(set it with --set rec=/path/to/folder)"
        )
    missing = [name for name in needed if not (rec / name).is_file()]
    if missing:
        raise FileNotFoundError(f"record folder {str(rec)!r} lacks {', '.join(missing)}")
    from fpr_plugin.data.dataset import RecordDataset

    dataset = RecordDataset(str(rec), random_flip=False)
    if cfg.num_classes is None:
        cfg.num_classes = int(dataset.num_classes)
    elif cfg.num_classes < dataset.num_classes:
        raise ValueError(
            f"num_classes={cfg.num_classes} is smaller than the {dataset.num_classes} classes of {str(rec)!r}"
        )
    if cfg.num_image is None:
        cfg.num_image = int(len(dataset))
    elif cfg.num_image > len(dataset):
        raise ValueError(f"num_image={cfg.num_image} exceeds the {len(dataset)} images of {str(rec)!r}")
    return cfg
