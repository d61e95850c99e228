"""Recipe loading: the schema's defaults + a recipe file + ``--loss`` + ``--set key=value``.

A recipe is a Python file defining ``config`` (an EasyDict or dict) with the
keys it changes, as in arcface_torch. It runs as code: run only recipes you
trust. :func:`load_config` merges it on top of the defaults of
:mod:`fpr_plugin.train.schema` (never a ``base.py`` beside the recipe), parses
and checks every key and value against the schema, and resolves the loss
parameters for the chosen loss. A bad value names the recipe file and line (or
the ``--set``) it came from. Reading the record set (``num_classes``,
``num_image``) is left to :func:`fill_from_records`, so a recipe can be
checked without its data.
"""

from __future__ import annotations

import ast
import inspect
import math
import numbers
import runpy
import sys
import traceback
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from easydict import EasyDict

from fpr_plugin.cli_errors import UserError
from fpr_plugin.registry import closest
from fpr_plugin.train.schema import (
    KEYS,
    KEYS_BY_NAME,
    SETTABLE_KEYS,
    check_value,
    coerce_like,
    defaults,
    parse_text,
    parse_value,
    to_plain,
)

__all__ = [
    "ConfigError",
    "load_config",
    "load_recipe",
    "recipes_dir",
    "shipped_recipes",
    "find_recipe",
    "parse_override",
    "apply_override",
    "resolve_loss_params",
    "validate_config",
    "check_buildable",
    "fill_from_records",
    "default_output",
    "to_plain",
]


class ConfigError(UserError):
    """A bad config value; ``key`` is the top-level key it belongs to."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def _unknown_key_message(key: str, known: Iterable[str], where: str) -> str:
    hint = closest(key, list(known))
    suggestion = f"; did you mean {hint!r}?" if hint else ""
    return f"unknown key {key!r} in {where}{suggestion}"


# ---- shipped recipes (package data: recipes/ is installed as fpr_plugin.recipes) ------------
def recipes_dir() -> Path:
    """The folder of the recipes shipped with the package (``recipes/`` of the source tree)."""
    try:
        return Path(str(resources.files("fpr_plugin.recipes")))
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the shipped recipes (package fpr_plugin.recipes) are not installed; reinstall fpr-plugin "
            "(pip install . or pip install -e .)"
        ) from None


def shipped_recipes() -> list[str]:
    """Names of the shipped recipes that can be trained (``bupt_balancedface_r34``, ...)."""
    return sorted(p.stem for p in recipes_dir().glob("*.py") if not p.stem.startswith("_") and p.stem != "base")


def find_recipe(recipe: str | Path) -> Path:
    """``recipe`` as a file: a path, or the name of a shipped recipe (``synthetic_demo``); else FileNotFoundError."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.name[:-3] if path.name.endswith(".py") else path.name
    if len(path.parts) == 1 and name in shipped_recipes():
        return recipes_dir() / f"{name}.py"
    hint = closest(name, shipped_recipes())
    raise FileNotFoundError(
        f"recipe file {str(recipe)!r} does not exist; expected a recipe .py or a shipped recipe name "
        f"({', '.join(shipped_recipes())})" + (f"; did you mean {hint!r}?" if hint else "")
    )


# ---- running a recipe -----------------------------------------------------------------------
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


def _key_lines(path: Path) -> dict[str, int]:
    """The line where a recipe last sets each top-level key (``config.k =``, ``config["k"] =``, ``k=...``)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, ValueError):
        return {}
    stores: dict[str, int] = {}
    mentions: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            stores[node.attr] = max(stores.get(node.attr, 0), node.lineno)
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
              and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            stores[node.slice.value] = max(stores.get(node.slice.value, 0), node.lineno)
        elif isinstance(node, ast.keyword) and node.arg:
            mentions[node.arg] = max(mentions.get(node.arg, 0), node.lineno)
        elif isinstance(node, ast.Dict):
            for k in node.keys:
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    mentions[k.value] = max(mentions.get(k.value, 0), k.lineno)
    return {**mentions, **stores}


def _recipe_origins(path: Path, keys: Iterable[str]) -> dict[str, str]:
    """For each key a recipe sets: ``recipe PATH, line N`` (or ``recipe PATH`` when set indirectly)."""
    lines = _key_lines(path)
    return {key: f"recipe {path}, line {lines[key]}" if key in lines else f"recipe {path}" for key in keys}


def _merge(cfg: dict, recipe: dict, origins: Mapping[str, str]) -> None:
    """Parse each recipe key against the schema into ``cfg`` (merged dicts update one level deep)."""
    for key, value in recipe.items():
        if key not in SETTABLE_KEYS:
            where = origins[key]
            if key in KEYS_BY_NAME:
                raise ValueError(f"{where}: key {key!r} is filled in by fpr-train; a recipe does not set it")
            raise ValueError(_unknown_key_message(key, SETTABLE_KEYS, where))
        spec = KEYS_BY_NAME[key]
        try:
            parsed = parse_value(spec, value)
        except ValueError as exc:
            raise ConfigError(f"{origins[key]}: {exc}", key) from None
        cfg[key] = {**cfg[key], **parsed} if spec.merged else parsed


# ---- --set ----------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b=value"`` into the key path ``["a", "b"]`` and the parsed value."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. lr=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key")
    return key.split("."), parse_text(raw.strip())


def _type_of(example: Any) -> type | None:
    """The schema type a nested entry keeps (the type of its current value), None when free."""
    for kind in (bool, numbers.Integral, numbers.Real, str, (list, tuple), Mapping):
        if isinstance(example, kind):
            return {numbers.Integral: int, numbers.Real: float, (list, tuple): list, Mapping: dict}.get(kind, kind)
    return None


def apply_override(cfg: dict, path: list[str], value: Any) -> None:
    """Set ``cfg[path]`` to ``value`` parsed by the schema (a nested entry keeps its current type)."""
    top = path[0]
    if top not in SETTABLE_KEYS:
        raise ValueError(_unknown_key_message(top, SETTABLE_KEYS, "--set"))
    if len(path) == 1:
        cfg[top] = parse_value(KEYS_BY_NAME[top], value)
        return
    container = cfg[top]
    if not isinstance(container, dict):
        raise ValueError(f"--set {'.'.join(path)}: key {top!r} is not a dict, set it as {top}=value")
    for part in path[1:-1]:
        container = container.setdefault(part, {})
        if not isinstance(container, dict):
            raise ValueError(f"--set {'.'.join(path)}: {part!r} is not a dict")
    leaf = path[-1]
    kind = _type_of(container.get(leaf))
    container[leaf] = coerce_like(value, kind, ".".join(path)) if kind is not None else value


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
    """Check every settable key against the schema's range/choices and every number for finiteness.

    Raises :class:`ConfigError` (a ValueError) naming the key.
    """
    for spec in KEYS:
        if spec.derived:
            continue
        try:
            check_value(spec, cfg[spec.name])
        except ValueError as exc:
            raise ConfigError(str(exc), spec.name) from None
    for key, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}", key.split(".")[0])


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
    """The backbone name is registered and the loss accepts its parameters (ConfigError naming the key)."""
    from fpr_plugin.registry import BACKBONES, build_loss

    if cfg["network"] not in BACKBONES.names():
        hint = closest(cfg["network"], BACKBONES.names())
        raise ConfigError(f"config key 'network': unknown backbone {cfg['network']!r}; expected one of "
                          f"{', '.join(sorted(BACKBONES.names()))}" + (f" (did you mean {hint!r}?)" if hint else ""),
                          "network")
    try:
        build_loss(cfg["loss"], **cfg["loss_params"])
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key 'loss_params' for loss {cfg['loss']!r}: {' '.join(str(exc).split())}",
                          "loss_params") from None


def default_output(recipe: str, loss: str) -> str:
    """Default output folder of a run: ``work_dirs/<recipe>_<loss>``."""
    return str(Path("work_dirs") / f"{recipe}_{loss}")


def _located(exc: ValueError, key: str, origins: Mapping[str, str]) -> ValueError:
    """``exc`` with the recipe line or ``--set`` that gave ``key`` in front (when not a default)."""
    where = origins.get(key)
    return ConfigError(f"{where}: {exc}", key) if where else exc


def load_config(recipe_path: str | Path, loss: str | None = None, overrides: Iterable[str] = ()) -> EasyDict:
    """Load a recipe over the schema's defaults, apply ``--loss`` and ``--set`` overrides, check and resolve it.

    ``recipe_path`` is a recipe file or the name of a shipped recipe. Returns the
    resolved config: ``recipe`` is the recipe file's stem, ``loss_params`` holds
    only the chosen loss's parameters, ``output`` defaults to
    ``work_dirs/<recipe>_<loss>``; ``num_classes``/``num_image`` stay None until
    :func:`fill_from_records`.
    """
    path = find_recipe(recipe_path)
    recipe = load_recipe(path)
    origins = _recipe_origins(path, recipe)
    cfg = defaults()
    _merge(cfg, recipe, origins)
    explicit: set[str] = set()
    for text in overrides:
        keys, value = parse_override(text)
        try:
            apply_override(cfg, keys, value)
        except ValueError as exc:
            if keys[0] not in SETTABLE_KEYS or str(exc).startswith("--set"):
                raise
            raise ConfigError(f"--set {text}: {exc}", keys[0]) from None
        origins[keys[0]] = f"--set {text}"
        if keys[0] == "loss_params" and len(keys) == 2:
            explicit.add(keys[1])
    if loss is not None:
        cfg["loss"] = loss
        origins["loss"] = f"--loss {loss}"
    cfg["recipe"] = path.stem
    from fpr_plugin.registry import LOSSES

    try:
        LOSSES.get(cfg["loss"])  # an unknown name: UnknownNameError listing the known ones, located below
    except KeyError as exc:
        raise _located(ValueError(str(exc)), "loss", origins) from None
    try:
        cfg["loss_params"], cfg["loss_params_skipped"] = resolve_loss_params(cfg["loss"], cfg["loss_params"], explicit)
    except ValueError as exc:
        raise _located(exc, "loss_params", origins) from None
    if cfg["output"] is None:
        cfg["output"] = default_output(cfg["recipe"], cfg["loss"])
    try:
        validate_config(cfg)
        check_buildable(cfg)
    except ConfigError as exc:
        raise _located(exc, exc.key, origins) from None
    return EasyDict(cfg)


def fill_from_records(cfg: EasyDict) -> EasyDict:
    """Set ``num_classes``/``num_image`` from the record folder ``cfg.rec`` where they are None.

    Raises FileNotFoundError naming the folder and the files expected in it;
    ValueError when a set value contradicts the record set.
    """
    from fpr_plugin.data.dataset import RecordSet

    cfg.num_classes, cfg.num_image = RecordSet.open(cfg.rec, check_labels=False).resolve_counts(cfg.num_classes, cfg.num_image)
    return cfg
