"""IResNet state dicts: normalising their keys and reading the network off them.

arcface_torch saves ``backbone.pth`` as a bare state dict whose keys name the
network: blocks ``layer{1..4}.{j}.*`` (how many per stage gives the depth),
the stem ``conv1`` (its channels are the width), ``fc`` and ``features``
(their rows are the embedding size). :func:`infer_iresnet` turns those keys
into the ``network`` / ``embedding_size`` / ``backbone_params`` of a config,
and names the closest depth when the block counts fit none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from fpr_plugin.backbones.iresnet import IRESNET_LAYERS, output_resolution, rename_legacy_keys
from fpr_plugin.face_input import IMAGE_SIZE

__all__ = [
    "DDP_PREFIX",
    "IResNetSpec",
    "StateDictMismatch",
    "normalize_state_dict",
    "infer_iresnet",
    "closest_depth",
    "check_state_dict",
]

DDP_PREFIX = "module."
INPUT_SIZE = IMAGE_SIZE
DEFAULT_WIDTH = 64
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


class StateDictMismatch(ValueError):
    """A state dict that fits no IResNet, or not the one asked for (one-line message)."""


def normalize_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy with a DDP ``module.`` prefix (on every key) dropped and old ``shortcut`` keys renamed.

    The result uses arcface_torch's key names, which are also this package's.
    """
    keys = list(state_dict)
    if keys and all(k.startswith(DDP_PREFIX) for k in keys):
        result = {k[len(DDP_PREFIX):]: v for k, v in state_dict.items()}
    else:
        result = dict(state_dict)
    rename_legacy_keys(result)
    return result


def non_finite_tensor(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The first floating-point entry of ``state_dict`` holding a NaN or an infinity, or None."""
    for key, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return key
    return None


@dataclass(frozen=True)
class IResNetSpec:
    """The IResNet a state dict holds: depth name, blocks per stage, embedding size, width, stem stride."""

    network: str
    layers: tuple[int, int, int, int]
    embedding_size: int
    width: int = DEFAULT_WIDTH
    stem_stride: int = 1

    def backbone_params(self) -> dict[str, int]:
        """The ``backbone_params`` that differ from the factory defaults (arcface_torch's models: none)."""
        params: dict[str, int] = {}
        if self.width != DEFAULT_WIDTH:
            params["width"] = self.width
        if self.stem_stride != 1:
            params["stem_stride"] = self.stem_stride
        return params


def closest_depth(layers: Sequence[int]) -> str:
    """The registered depth whose blocks per stage are nearest to ``layers`` (sum of differences)."""
    return min(IRESNET_LAYERS, key=lambda name: sum(abs(a - b) for a, b in zip(IRESNET_LAYERS[name], layers)))


def _differences(layers: Sequence[int], name: str) -> str:
    target = IRESNET_LAYERS[name]
    return ", ".join(
        f"layer{i + 1} has {have} blocks where {name} has {want}"
        for i, (have, want) in enumerate(zip(layers, target))
        if have != want
    )


def _preview(keys: Sequence[str], limit: int = 5) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise StateDictMismatch(f"{source} is not an IResNet state dict: it has no {key!r}")
    return tuple(state_dict[key].shape)


def infer_iresnet(state_dict: Mapping[str, Any], source: str = "state dict") -> IResNetSpec:
    """The IResNet depth, embedding size, width and stem stride that ``state_dict``'s keys describe.

    Accepts arcface_torch's and this package's key names, with or without ``module.``.
    Raises StateDictMismatch naming ``source``: for block counts that fit no depth it
    names the closest depth and the stages that differ.
    """
    state_dict = normalize_state_dict(state_dict)
    blocks: list[set[int]] = [set(), set(), set(), set()]
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks[int(match.group(1)) - 1].add(int(match.group(2)))
    layers = tuple(len(b) for b in blocks)
    if not any(layers):
        raise StateDictMismatch(
            f"{source} is not an IResNet state dict: it has no layer1-layer4 blocks "
            f"(its keys begin {_preview(sorted(state_dict))})"
        )
    for stage, indices in enumerate(blocks):
        if indices and indices != set(range(len(indices))):
            raise StateDictMismatch(
                f"{source}: layer{stage + 1} block indices {sorted(indices)} are not 0..{len(indices) - 1}"
            )
    names = [name for name, counts in IRESNET_LAYERS.items() if counts == layers]
    if not names:
        near = closest_depth(layers)
        raise StateDictMismatch(
            f"{source}: blocks per stage {layers} fit no IResNet depth; closest is {near} "
            f"{IRESNET_LAYERS[near]} ({_differences(layers, near)})"
        )
    width = _shape(state_dict, "conv1.weight", source)[0]
    widths = tuple(_shape(state_dict, f"layer{i}.0.conv1.weight", source)[0] for i in range(1, 5))
    if widths != tuple(width * 2**i for i in range(4)):
        raise StateDictMismatch(
            f"{source}: stage widths {widths} are not an IResNet's (w, 2w, 4w, 8w) for stem width {width}"
        )
    fc = _shape(state_dict, "fc.weight", source)
    features = _shape(state_dict, "features.weight", source)
    if len(fc) != 2 or features != fc[:1]:
        raise StateDictMismatch(f"{source}: fc.weight {fc} and features.weight {features} disagree on the embedding size")
    strides = [s for s in (1, 2) if 8 * width * output_resolution(INPUT_SIZE, s) ** 2 == fc[1]]
    if not strides:
        raise StateDictMismatch(
            f"{source}: fc.weight takes {fc[1]} inputs, not 8 x {width} channels x 7 x 7 "
            f"(stem stride 1) or x 4 x 4 (stem stride 2) of a {INPUT_SIZE}x{INPUT_SIZE} input"
        )
    return IResNetSpec(names[0], layers, int(fc[0]), int(width), strides[0])  # type: ignore[arg-type]


def _summarise(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError (one line) listing missing, unexpected and mis-shaped keys.

    ``state_dict`` should be normalised (:func:`normalize_state_dict`). A missing
    BatchNorm ``num_batches_tracked`` counter is not a problem (BatchNorm fills it in).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_summarise(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_summarise(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint != network): {_summarise(mismatched)}")
    if problems:
        raise ValueError("state dict does not match the network: " + "; ".join(problems))
