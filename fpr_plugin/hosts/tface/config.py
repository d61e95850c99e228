"""What the launcher reads from a TFace yaml before TFace does: the head, our loss parameters, the data.

TFace loads its yaml with ``yaml.safe_load`` into a dict and ignores keys it
does not know, so fpr_plugin's extra loss parameters live in one extra key
of the same file::

    HEAD_NAME: FprPenalty
    FPR_PENALTY:          # read by fpr_plugin's launcher, ignored by TFace
      gamma_u: 1.0e-4
      alpha: 1.0
      p: 2.0
      base: cosface       # or arcface
      penalty_grad: both  # or embeddings

The scale and margin stay where TFace keeps them: master passes each
``DATASETS`` entry's ``scale`` and ``margin`` to the head (64 and 0.5 when
the entry has none); v0.1.0 passes none, so there ``FPR_PENALTY`` may hold
``s`` and ``m`` (default 64 and 0.35). ``FprPenaltyTface`` takes no extra
parameters. Every check raises :class:`ConfigError` naming the file and key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpr_plugin.hosts.tface.checkout import MASTER, Checkout
from fpr_plugin.hosts.tface.common import DEFAULT_MARGIN, HEAD_LOSSES, build_head_loss, resolve_scale_margin
from fpr_plugin.hosts.tface.factory import closest_head

__all__ = ["ConfigError", "FPR_KEY", "TfaceConfig", "check_config", "read_config"]

FPR_KEY = "FPR_PENALTY"
# TFace master's BranchMetaInfo defaults for a DATASETS entry without scale / margin.
MASTER_BRANCH_SCALE = 64.0
MASTER_BRANCH_MARGIN = 0.5


class ConfigError(ValueError):
    """A TFace config that fpr_plugin or TFace cannot use; one line naming the file and key."""


@dataclass
class TfaceConfig:
    """A TFace yaml as the launcher needs it."""

    path: Path
    data: dict
    head_name: str
    dist_fc: bool | None
    loss_params: dict
    dataset_names: list[str]
    needs_dareblopy: bool
    notes: list[str] = field(default_factory=list)

    @property
    def ours(self) -> bool:
        """True when HEAD_NAME is one of fpr_plugin's heads."""
        return self.head_name in HEAD_LOSSES


def _load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: TFace reads its config with PyYAML, which is not installed (pip install pyyaml)") from None
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML: {problem}{where}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc.reason})") from None


def _datasets(path: Path, data: dict) -> list[dict]:
    datasets = data.get("DATASETS")
    if not isinstance(datasets, list) or not datasets:
        raise ConfigError(f"{path}: DATASETS must be a list of datasets ({{name, batch_size, ...}}), got {datasets!r}")
    for i, entry in enumerate(datasets):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{path}: DATASETS[{i}] must be a mapping with a name (the index file's stem), got {entry!r}")
    return datasets


def _check_loss_params(path: Path, checkout: Checkout, head_name: str, params: Any, datasets: list[dict]) -> tuple[dict, list[str]]:
    notes: list[str] = []
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: {FPR_KEY} must be a mapping of loss parameters (gamma_u, alpha, ...), got {params!r}")
    if checkout.version == MASTER:
        for key, host_key in (("s", "scale"), ("m", "margin")):
            if key in params:
                raise ConfigError(
                    f"{path}: {FPR_KEY}.{key}: TFace master passes each DATASETS entry's {host_key} to the head; "
                    f"set DATASETS[i].{host_key} instead"
                )
    try:  # the parameters alone, with the default scale and margin
        scale, margin, rest = resolve_scale_margin(head_name, None, None, params)
        build_head_loss(head_name, scale, margin, rest)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {FPR_KEY}: {exc}") from None
    if checkout.version != MASTER:
        return params, notes
    for i, entry in enumerate(datasets):
        scale = entry.get("scale", MASTER_BRANCH_SCALE)
        margin = entry.get("margin", MASTER_BRANCH_MARGIN)
        if "margin" not in entry:
            notes.append(
                f"DATASETS[{i}] ({entry['name']}) has no margin: TFace master passes margin={MASTER_BRANCH_MARGIN} "
                f"(the FPR penalty's usual CosFace margin is {DEFAULT_MARGIN})"
            )
        try:
            build_head_loss(head_name, scale, margin, params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: DATASETS[{i}] scale={scale!r} margin={margin!r}: {exc}") from None
    return params, notes


def _check_index_files(path: Path, data: dict, datasets: list[dict]) -> None:
    index_root = data.get("INDEX_ROOT")
    if not isinstance(index_root, str):
        raise ConfigError(f"{path}: INDEX_ROOT must be the folder of the index files <name>.txt, got {index_root!r}")
    for i, entry in enumerate(datasets):
        index_file = os.path.join(index_root, entry["name"] + ".txt")
        if not os.path.isfile(index_file):
            raise ConfigError(
                f"{path}: DATASETS[{i}].name {entry['name']!r}: index file {index_file} not found "
                "(TFace reads INDEX_ROOT/<name>.txt)"
            )


def read_config(config: str | os.PathLike, checkout: Checkout, check_data: bool = True) -> TfaceConfig:
    """Read and check the TFace yaml ``config`` for ``checkout``; ConfigError names what is wrong."""
    path = Path(config).expanduser()
    if not path.is_file():
        raise ConfigError(f"{config}: no such config file (a TFace yaml such as train.yaml)")
    return check_config(_load_yaml(path), path.resolve(), checkout, check_data)


def check_config(data: Any, path: Path, checkout: Checkout, check_data: bool = True) -> TfaceConfig:
    """Check a parsed TFace config (``yaml.safe_load`` of ``path``) for ``checkout``.

    ``check_data`` also checks that every dataset's index file exists.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a TFace config is a mapping of keys (HEAD_NAME, DATASETS, ...), got {type(data).__name__}")
    head_name = data.get("HEAD_NAME")
    if not isinstance(head_name, str) or not head_name:
        raise ConfigError(f"{path}: HEAD_NAME must name a head (e.g. FprPenalty, FprPenaltyTface, CosFace), got {head_name!r}")
    if head_name not in HEAD_LOSSES:
        hint = closest_head(head_name)
        if hint is not None:
            raise ConfigError(f"{path}: HEAD_NAME {head_name!r} is not a head; did you mean {hint!r}?")
    dist_fc = data.get("DIST_FC", True if checkout.version == MASTER else None)
    if dist_fc is not None and not isinstance(dist_fc, bool):
        raise ConfigError(f"{path}: DIST_FC must be true or false, got {dist_fc!r}")
    if checkout.version == MASTER and dist_fc is False and head_name in HEAD_LOSSES:
        raise ConfigError(
            f"{path}: DIST_FC: false: TFace master's train.py builds every head with the distfc signature; "
            "use DIST_FC: true (class-sharded), or the localfc task of TFace v0.1.0"
        )
    datasets = _datasets(path, data)
    notes: list[str] = []
    params: dict = {}
    if head_name in HEAD_LOSSES:
        params, notes = _check_loss_params(path, checkout, head_name, data.get(FPR_KEY), datasets)
    elif FPR_KEY in data:
        notes.append(f"{FPR_KEY} is ignored: HEAD_NAME {head_name!r} is not one of fpr_plugin's heads ({', '.join(HEAD_LOSSES)})")
    if check_data:
        _check_index_files(path, data, datasets)
    names = [entry["name"] for entry in datasets]
    # master's MultiDataset picks its TFRecord parser (dareblopy) by the first name; v0.1.0 reads TFRecords itself.
    needs_dareblopy = checkout.version == MASTER and "TFR" in names[0]
    return TfaceConfig(Path(path), data, head_name, dist_fc, params, names, needs_dareblopy, notes)
