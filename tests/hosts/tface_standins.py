"""Stand-ins for two of TFace's top-level imports that a CPU test machine may lack.

TFace's ``torchkit/task/base_task.py`` imports ``torchvision.transforms`` for
its data pipeline (``Compose([ToPILImage(), RandomHorizontalFlip(),
ToTensor(), Normalize(mean, std)])`` on an RGB uint8 array) and its hooks
import ``torch.utils.tensorboard``'s ``SummaryWriter``. torchvision's PyPI
wheels need a CUDA build of torch, so on a CPU-only torch the host tests put
small working stand-ins in ``sys.modules`` instead: the five transforms on
numpy arrays and tensors, and a writer that discards what it is given. Real
modules are always preferred.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import torch

__all__ = ["install_missing"]


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image


class ToPILImage:
    """Keeps the HWC uint8 array (the next transforms take arrays)."""

    def __call__(self, image):
        return np.asarray(image)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image):
        return np.ascontiguousarray(image[:, ::-1]) if torch.rand(()) < self.p else image


class ToTensor:
    """HWC uint8 -> CHW float in [0, 1]."""

    def __call__(self, image):
        return torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1).copy()).float().div_(255.0)


class Normalize:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor):
        return (tensor - self.mean) / self.std


class SummaryWriter:
    """Discards every summary."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name, f"test stand-in for {name}")
    module.__fpr_plugin_test_standin__ = True
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def _drop(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def install_missing() -> list[str]:
    """Put stand-ins in ``sys.modules`` for torchvision / tensorboard where the real ones fail; returns their names."""
    added = []
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:  # not installed, or a wheel built for another torch
        _drop("torchvision")
        transforms = _module("torchvision.transforms", Compose=Compose, ToPILImage=ToPILImage,
                             RandomHorizontalFlip=RandomHorizontalFlip, ToTensor=ToTensor, Normalize=Normalize)
        sys.modules.update({"torchvision": _module("torchvision", transforms=transforms), "torchvision.transforms": transforms})
        added.append("torchvision")
    # Found, not imported: importing tensorboard imports protobuf, whose implementation the launcher picks first.
    if importlib.util.find_spec("tensorboard") is None:
        _drop("torch.utils.tensorboard")
        writer = _module("torch.utils.tensorboard.writer", SummaryWriter=SummaryWriter)
        sys.modules.update({"torch.utils.tensorboard": _module("torch.utils.tensorboard", SummaryWriter=SummaryWriter, writer=writer),
                            "torch.utils.tensorboard.writer": writer})
        added.append("tensorboard")
    return added
