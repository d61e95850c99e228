"""The config schema: every key fpr-train reads, with its type, default, range, resume rule and meaning.

:data:`KEYS` is the one definition of the training config. It gives the
defaults a recipe changes (:func:`defaults`), the ``--set``/recipe value
parsing and checks (:func:`parse_value`, :func:`check_value`), the keys a
``--resume`` may change (:data:`RESUMABLE_KEYS`), the key list of
``fpr-train --help`` (:func:`keys_help`) and ``recipes/base.py``, which is this
table written out as a recipe (:func:`render_base_recipe`; a test keeps the
two equal). Key names follow InsightFace arcface_torch where it has them.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import numbers
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "Key",
    "KEYS",
    "KEYS_BY_NAME",
    "SECTIONS",
    "RESUMABLE_KEYS",
    "SETTABLE_KEYS",
    "FP16_CHOICES",
    "defaults",
    "parse_text",
    "to_plain",
    "coerce_like",
    "parse_value",
    "check_value",
    "describe",
    "keys_help",
    "render_base_recipe",
]

FP16_CHOICES = (False, "fp16", "bf16")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _parse_precision(value: Any, key: str) -> Any:
    """``fp16``: True/"fp16"/"float16" -> "fp16", "bf16"/"bfloat16" -> "bf16", False/None/"false" -> False."""
    text = value.lower() if isinstance(value, str) else None
    if value is True or text in _TRUE | {"fp16", "float16"}:
        return "fp16"
    if value is False or value is None or text in _FALSE | {"none"}:
        return False
    if text in ("bf16", "bfloat16"):
        return "bf16"
    raise ValueError(f"key {key!r} must be one of {FP16_CHOICES}, got {value!r}")


@dataclass(frozen=True)
class Key:
    """One config key: its type, default, allowed values, resume rule and doc line.

    ``interval`` is written as in maths, e.g. ``"(0, 1]"``; ``nullable`` keys
    also take None; a ``merged`` dict is updated one level deep by a recipe
    (its entries are the factory's own parameters, checked against it);
    ``resumable`` keys may differ between a checkpoint and the run resuming it;
    ``derived`` keys are filled in by the loader, never set by a recipe.
    """

    name: str
    type: type
    default: Any
    doc: str
    section: str
    interval: str | None = None
    nullable: bool = False
    nonempty: bool = False
    increasing: bool = False
    merged: bool = False
    resumable: bool = False
    derived: bool = False
    parse: Callable[[Any, str], Any] | None = None
    choices: tuple | None = None


SECTIONS = ("model", "data", "optimisation", "loss", "output, logging, checkpoints", "filled in by fpr-train")

KEYS: tuple[Key, ...] = (
    # ---- model
    Key("network", str, "r50", "Backbone name in the backbone registry: r18, r34, r50, r100, r200 (IResNet), "
        "or a plugin's.", "model", nonempty=True),
    Key("backbone_params", dict, {}, "Extra keyword arguments of the backbone factory, e.g. "
        '{"width": 16, "stem_stride": 2} for a small CPU model, {"fp16": True} for half-precision '
        "convolutions inside the backbone.", "model", merged=True),
    Key("embedding_size", int, 512, "Size of the face embedding (the backbone's output and the classifier's "
        "input).", "model", interval="(0, inf)"),
    Key("dropout", float, 0.0, "Dropout before the backbone's final FC layer (0 disables it).", "model",
        interval="[0, 1)"),
    Key("init_backbone", str, None, 'Pretrained backbone a fresh run starts from (fine-tuning): an arcface_torch '
        'backbone.pth or an fpr-train model.pt, keys with or without "module.". Its depth and embedding size '
        "must be the recipe's. None: random initialisation. Not read on resume, where the checkpoint's "
        "weights win.", "model", nullable=True, resumable=True),
    # ---- data
    Key("rec", str, "", "Record folder holding train.rec, train.idx and property (InsightFace layout); an "
        "optional groups.tsv beside them enables per-group FPR logging.", "data", resumable=True),
    Key("num_classes", int, None, "Number of identities; None reads it from the record set's property file.",
        "data", interval="[2, inf)", nullable=True),
    Key("num_image", int, None, "Number of training images; None reads it from the record set's index.",
        "data", interval="(0, inf)", nullable=True),
    Key("random_flip", bool, True, "Horizontal flip augmentation (decided per sample from seed, epoch and "
        "position, so data order and flips are reproducible and resumable).", "data"),
    Key("num_workers", int, 2, "DataLoader worker processes per rank (0 loads in the training process).",
        "data", interval="[0, inf)", resumable=True),
    Key("check_labels", bool, True, "Before training, read every image record's header and check its label "
        "(a finite integer in [0, num_classes)) and framing, so a bad record stops the run before it writes "
        "anything. One pass over the file's pages (about a read of the .rec); False checks the first record "
        "only, for sets of WebFace42M size on slow storage.", "data", resumable=True),
    # ---- optimisation
    Key("num_epoch", int, 20, "Number of passes over the data.", "optimisation", interval="(0, inf)"),
    Key("batch_size", int, 128, "GLOBAL batch size (all ranks together); each rank gets batch_size / "
        "world_size.", "optimisation", interval="(0, inf)"),
    Key("lr", float, 0.1, "Base learning rate of SGD (before warmup and step decay).", "optimisation",
        interval="(0, inf)"),
    Key("lr_steps", list, [], "Epochs at which the learning rate is multiplied by lr_decay.", "optimisation", increasing=True),
    Key("lr_decay", float, 0.1, "Factor applied to the learning rate at each entry of lr_steps.",
        "optimisation", interval="(0, 1]"),
    Key("warmup_epoch", float, 0.0, "Linear warmup from lr / warmup_steps to lr over this many epochs "
        "(0 = none).", "optimisation", interval="[0, inf)"),
    Key("momentum", float, 0.9, "SGD momentum.", "optimisation", interval="[0, 1)"),
    Key("weight_decay", float, 5e-4, "SGD weight decay, applied to backbone and classifier weights.",
        "optimisation", interval="[0, inf)"),
    Key("fp16", object, False, 'Mixed precision on CUDA: False (float32), "fp16" (with a gradient scaler) or '
        '"bf16". Ignored with a warning on CPU, which trains in float32.', "optimisation",
        parse=_parse_precision, choices=FP16_CHOICES),
    Key("grad_clip", float, 5.0, "Clip the backbone's gradient norm to this value (None disables clipping).",
        "optimisation", interval="(0, inf)", nullable=True),
    Key("head_init_std", float, 0.01, "Standard deviation of the normal initialisation of the classifier "
        "weights.", "optimisation", interval="(0, inf)"),
    Key("max_steps", int, None, "Stop after this many optimisation steps in total (None = train all epochs).",
        "optimisation", interval="(0, inf)", nullable=True, resumable=True),
    Key("seed", int, 2048, "Seed of everything random: initialisation, data order, flips.", "optimisation"),
    # ---- loss
    Key("loss", str, "cosface", "Margin loss from the loss registry: cosface, arcface, combined, fpr_penalty, "
        "fpr_penalty_tface (or a plugin's). --loss NAME on the command line.", "loss", nonempty=True),
    Key("loss_params", dict, {"s": 64.0, "m": 0.35}, "Parameters of the loss. Flat entries are shared: each is "
        "passed to the chosen loss when its constructor takes it and skipped otherwise (so gamma_u does not "
        "reach cosface). A nested dict keyed by a loss name overrides entries for that loss only, e.g. "
        '{"s": 64.0, "m": 0.35, "arcface": {"m": 0.5}}.', "loss", merged=True),
    # ---- output, logging, checkpoints
    Key("output", str, None, "Output folder; None means work_dirs/<recipe>_<loss>.",
        "output, logging, checkpoints", nullable=True, resumable=True),
    Key("frequent", int, 10, "Log a line (and a metrics.jsonl record) every this many steps.",
        "output, logging, checkpoints", interval="(0, inf)", resumable=True),
    Key("save_every", int, 0, "Also checkpoint every this many steps (0: only at the end of each epoch).",
        "output, logging, checkpoints", interval="[0, inf)", resumable=True),
    Key("keep_checkpoints", int, 2, "Number of most recent complete checkpoints kept on disk (older are "
        "deleted).", "output, logging, checkpoints", interval="[1, inf)", resumable=True),
    Key("resume", bool, False, "Continue from the last complete checkpoint in output (--resume).",
        "output, logging, checkpoints", resumable=True),
    Key("tensorboard", bool, True, "Write TensorBoard event files when tensorboard is installed.",
        "output, logging, checkpoints", resumable=True),
    # ---- derived
    Key("recipe", str, "", "The recipe file's name without .py.", "filled in by fpr-train", derived=True),
    Key("loss_params_skipped", list, [], "The shared loss_params entries the chosen loss does not take.",
        "filled in by fpr-train", derived=True, resumable=True),
)

KEYS_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}
#: Keys that may differ between a checkpoint and the run resuming it: they do not
#: change the trajectory (paths, logging, how often to save, where to stop).
RESUMABLE_KEYS: frozenset[str] = frozenset(key.name for key in KEYS if key.resumable)
#: Keys a recipe or ``--set`` may set.
SETTABLE_KEYS: tuple[str, ...] = tuple(key.name for key in KEYS if not key.derived)


def defaults() -> dict[str, Any]:
    """A fresh dict of every key's default value."""
    return {key.name: copy.deepcopy(key.default) for key in KEYS}


def parse_text(text: str) -> Any:
    """A Python literal when ``text`` is one (``0.1``, ``[20, 32]``, ``None``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def to_plain(value: Any) -> Any:
    """A deep copy with EasyDicts turned into dicts and tuples into lists (JSON-friendly)."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return copy.deepcopy(value)


def coerce_like(value: Any, type_: type, key: str) -> Any:
    """``value`` as a ``type_`` (bool, int, float, str, list, dict), or ValueError naming ``key``."""
    if type_ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"key {key!r} expects true/false, got {value!r}")
    if type_ is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"key {key!r} expects an integer, got {value!r}")
    if type_ is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise ValueError(f"key {key!r} expects a finite number, got {value!r}")
            return float(value)
        raise ValueError(f"key {key!r} expects a number, got {value!r}")
    if type_ is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"key {key!r} expects a string, got {value!r}")
    if type_ is list:
        if isinstance(value, (list, tuple)):
            return to_plain(value)
        raise ValueError(f"key {key!r} expects a list such as [20, 32], got {value!r}")
    if type_ is dict:
        if isinstance(value, Mapping):
            return to_plain(value)
        raise ValueError(f"key {key!r} expects a dict such as {{'s': 64.0}}, got {value!r}")
    return to_plain(value)


def parse_value(key: Key, value: Any) -> Any:
    """``value`` (from a recipe or a parsed ``--set``) converted to ``key``'s type; ValueError naming the key."""
    if key.parse is not None:
        return key.parse(value, key.name)
    if key.nullable and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    return coerce_like(value, key.type, key.name)


def _interval(text: str) -> tuple[float, float, bool, bool]:
    low, high = (float(part) for part in text[1:-1].split(","))
    return low, high, text[0] == "[", text[-1] == "]"


def _range_words(key: Key) -> str:
    """What ``key`` expects, in words: ``positive``, ``>= 0``, ``in (0, 1]``, ``an increasing list``."""
    if key.interval is None:
        words = ("an increasing list of epochs" if key.increasing else
                 f"one of {key.choices}" if key.choices else "a non-empty name" if key.nonempty else "")
    else:
        low, high, low_closed, high_closed = _interval(key.interval)
        if math.isinf(high):
            words = "positive" if (low == 0 and not low_closed) else f">= {low:g}" if low_closed else f"> {low:g}"
        else:
            words = f"in {key.interval}"
    return f"{words} or None" if key.nullable and words else words


def check_value(key: Key, value: Any) -> None:
    """ValueError naming ``key`` when ``value`` (already parsed) is outside the key's range or choices."""
    if value is None and key.nullable:
        return
    ok = True
    if key.interval is not None:
        low, high, low_closed, high_closed = _interval(key.interval)
        ok = (value >= low if low_closed else value > low) and (value <= high if high_closed else value < high)
    if key.nonempty:
        ok = ok and bool(value)
    if key.choices is not None:
        ok = ok and any(value is c or (type(value) is type(c) and value == c) for c in key.choices)
    if key.increasing:
        ok = ok and all(isinstance(e, numbers.Real) and not isinstance(e, bool) for e in value) \
            and list(value) == sorted(value)
    if not ok:
        raise ValueError(f"config key {key.name!r} must be {_range_words(key)}, got {value!r}")


def _type_words(key: Key) -> str:
    if key.choices is not None:
        return "|".join(str(c) for c in key.choices)
    name = key.type.__name__
    return f"{name}|None" if key.nullable else name


def describe(key: Key) -> str:
    """One line of ``fpr-train --help``: name, type, default, range, resume rule, doc."""
    facts = [_type_words(key), f"default {key.default!r}"]
    if key.interval or key.increasing:
        facts.append(_range_words(key).replace(" or None", ""))
    if key.resumable:
        facts.append("may change on --resume")
    return f"{key.name} ({', '.join(facts)}): {key.doc}"


def keys_help(width: int = 100) -> str:
    """The key list of ``fpr-train --help``, by section."""
    lines = ["config keys (set in a recipe, or with --set KEY=VALUE):"]
    for section in SECTIONS:
        lines.append(f"  {section}:")
        for key in (k for k in KEYS if k.section == section):
            lines.extend(textwrap.wrap(describe(key), width, initial_indent="    ", subsequent_indent="        "))
    return "\n".join(lines)


_BASE_HEADER = '''"""Default recipe: every key the trainer reads, with its meaning.

Generated from fpr_plugin/train/schema.py, the one definition of the config
keys (the values fpr-train starts from are the schema's; a test checks this
file against it). Regenerate with ``python -m fpr_plugin.train.schema``.

A recipe file (``recipes/<name>.py``) defines ``config = EasyDict(...)`` with
only the keys it changes; ``fpr_plugin.train.config.load_config`` merges it on
top of these defaults (dict-valued keys such as ``loss_params`` are merged one
level deep) and then applies ``--loss NAME`` and ``--set key=value`` from the
command line. A recipe is Python and runs as code, as arcface_torch's configs
do: run only recipes you trust. A key that is not defined here is rejected,
with the closest known key in the message.
"""

from easydict import EasyDict as edict

config = edict()
'''


def _literal(value: Any) -> str:
    """Python source of a default, strings in double quotes (the recipes' style)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def render_base_recipe() -> str:
    """``recipes/base.py``: the schema's settable keys and defaults, written as a documented recipe."""
    parts = [_BASE_HEADER]
    for section in SECTIONS:
        keys = [k for k in KEYS if k.section == section and not k.derived]
        if not keys:
            continue
        parts.append(f"\n# ---- {section} " + "-" * max(3, 70 - len(section)) + "\n")
        for key in keys:
            parts.append("".join(f"{line}\n" for line in textwrap.wrap(key.doc, 80, initial_indent="# ",
                                                                       subsequent_indent="# ")))
            parts.append(f"config.{key.name} = {_literal(key.default)}\n")
    return "".join(parts)


if __name__ == "__main__":  # python -m fpr_plugin.train.schema > recipes/base.py
    print(render_base_recipe(), end="")
