"""IResNet backbones (r18 ... r200) as InsightFace defines the architecture.

Layout, for a 112x112 RGB input normalised to [-1, 1]:

* stem: 3x3 conv (stride ``stem_stride``) -> BN -> PReLU
* four stages of improved basic blocks, widths ``w, 2w, 4w, 8w``; the first
  block of each stage has stride 2 (112 -> 56 -> 28 -> 14 -> 7)
* block: BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus a
  shortcut (1x1 conv with the stride + BN when the shape changes)
* head: BN -> dropout -> flatten -> FC to ``embedding_size`` -> BN1d

Module names, and so state-dict keys, are arcface_torch's (``backbones/iresnet.py``):
a ``backbone.pth`` it saves loads here with ``strict=True`` and ours load there.
The projection shortcut is ``downsample``; state dicts saved before it had that
name (``...shortcut.0.weight``) still load (:func:`rename_legacy_keys`).

With ``fp16`` the convolutional body runs under autocast on CUDA only; the
FC layer and the output BN always run in float32.
"""

from __future__ import annotations

from typing import Any, MutableMapping, Sequence

import torch
from torch import nn

from fpr_plugin.face_input import IMAGE_SIZE
from fpr_plugin.registry import register_backbone

__all__ = [
    "IResNet",
    "IBasicBlock",
    "IRESNET_LAYERS",
    "LEGACY_KEY_NAMES",
    "output_resolution",
    "rename_legacy_keys",
]

#: Blocks per stage for each registered depth.
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}

BN_EPS = 1e-5

#: Module names of earlier fpr_plugin versions -> arcface_torch's names (used in state dicts).
LEGACY_KEY_NAMES: dict[str, str] = {"shortcut": "downsample"}


def rename_legacy_keys(state_dict: MutableMapping[str, Any], prefix: str = "") -> None:
    """Rename, in place, a block's old keys (``<prefix>shortcut.*``) to arcface_torch's (``<prefix>downsample.*``).

    With ``prefix=""`` every key is examined: ``layer1.0.shortcut.0.weight`` becomes
    ``layer1.0.downsample.0.weight``. A key whose new name is already present is left alone.
    """
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix):].split(".")
        renamed = [LEGACY_KEY_NAMES.get(part, part) for part in parts[:-1]] + parts[-1:]
        if renamed != parts:
            new_key = prefix + ".".join(renamed)
            if new_key not in state_dict:
                state_dict[new_key] = state_dict.pop(key)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def strided_size(size: int, stride: int) -> int:
    """Spatial size after a 3x3, padding-1 convolution with ``stride``."""
    return (size - 1) // stride + 1


def output_resolution(input_size: int = IMAGE_SIZE, stem_stride: int = 1) -> int:
    """Side of the final feature map: the stem stride, then four stride-2 stages."""
    size = strided_size(input_size, stem_stride)
    for _ in range(4):
        size = strided_size(size, 2)
    return size


class IBasicBlock(nn.Module):
    """Improved residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN + shortcut (``downsample``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = conv3x3(in_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, stride)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        # arcface_torch's name for the projection shortcut (state-dict keys "downsample.0/1.*")
        self.downsample: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=BN_EPS),
            )
        else:
            self.downsample = nn.Identity()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        # older fpr_plugin state dicts call the shortcut "shortcut": load them too
        rename_legacy_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.prelu(self.bn2(out))
        out = self.bn3(self.conv2(out))
        return out + self.downsample(x)


def _autocast_dtype(fp16: bool | str) -> torch.dtype | None:
    """Autocast dtype for the ``fp16`` option (False, True/"fp16", "bf16")."""
    if fp16 is False or fp16 is None:
        return None
    if fp16 is True or fp16 == "fp16":
        return torch.float16
    if fp16 == "bf16":
        return torch.bfloat16
    raise ValueError(f"fp16 must be False, True, 'fp16' or 'bf16', got {fp16!r}")


class IResNet(nn.Module):
    """IResNet face-embedding network: ``[N, 3, H, W]`` -> ``[N, embedding_size]``."""

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        fp16: bool | str = False,
        width: int = 64,
        stem_stride: int = 1,
        input_size: int = IMAGE_SIZE,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {list(layers)}")
        if width < 1 or embedding_size < 1:
            raise ValueError(
                f"width and embedding_size must be positive, got width={width}, "
                f"embedding_size={embedding_size}"
            )
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.autocast_dtype = _autocast_dtype(fp16)
        self.embedding_size = embedding_size
        self.input_size = input_size

        self.conv1 = conv3x3(3, width, stride=stem_stride)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.prelu = nn.PReLU(width)

        stages = []
        in_channels = width
        for index, num_blocks in enumerate(layers):
            out_channels = width * 2**index
            blocks = [IBasicBlock(in_channels, out_channels, stride=2)]
            blocks += [IBasicBlock(out_channels, out_channels) for _ in range(int(num_blocks) - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        side = output_resolution(input_size, stem_stride)
        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        # InsightFace keeps the embedding BN's scale fixed at 1 (shift only).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional part up to the flattened, dropped-out feature map."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_autocast = self.autocast_dtype is not None and x.device.type == "cuda"
        if use_autocast:
            with torch.autocast(device_type="cuda", dtype=self.autocast_dtype):
                x = self.body(x)
            x = x.float()
        else:
            x = self.body(x)
        return self.features(self.fc(x))


def _make_factory(name: str):
    layers = IRESNET_LAYERS[name]

    def factory(
        embedding_size: int = 512,
        dropout: float = 0.0,
        fp16: bool | str = False,
        width: int = 64,
        stem_stride: int = 1,
        input_size: int = IMAGE_SIZE,
    ) -> IResNet:
        return IResNet(
            layers,
            embedding_size=embedding_size,
            dropout=dropout,
            fp16=fp16,
            width=width,
            stem_stride=stem_stride,
            input_size=input_size,
        )

    factory.__name__ = f"iresnet_{name}"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"IResNet {name} (blocks per stage {layers})."
    return register_backbone(name)(factory)


iresnet_r18 = _make_factory("r18")
iresnet_r34 = _make_factory("r34")
iresnet_r50 = _make_factory("r50")
iresnet_r100 = _make_factory("r100")
iresnet_r200 = _make_factory("r200")
