"""Shared fixtures for the trainer tests: a small, easy record set and tiny-model recipes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

GROUPS = ("A", "B")


def easy_samples(num_classes: int, per_class: int, seed: int = 0):
    """JPEG faces-that-are-not-faces: each class a fixed 4x4 colour pattern, each image it + noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(num_classes, 4, 4, 3))
    for label in range(num_classes):
        for _ in range(per_class):
            img = np.kron(patterns[label], np.ones((28, 28, 1))).astype(np.float64)
            img += rng.normal(0, 20, size=img.shape)
            ok, jpeg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            yield label, jpeg.tobytes()


def make_record_set(folder: Path, num_classes: int = 8, per_class: int = 8, seed: int = 0) -> Path:
    """Write an easy record set (with groups.tsv: even classes group A, odd B) to ``folder``."""
    from fpr_plugin.data.record_set import write_record_set

    groups = {c: (f"id{c}", GROUPS[c % 2]) for c in range(num_classes)}
    write_record_set(folder, easy_samples(num_classes, per_class, seed), groups=groups)
    return folder


TINY_RECIPE = """
from easydict import EasyDict as edict
config = edict()
config.network = "r18"
config.backbone_params = {{"width": 4, "stem_stride": 2}}
config.embedding_size = 16
config.rec = {rec!r}
config.num_epoch = 4
config.batch_size = 16
config.lr = 0.1
config.lr_steps = [3]
config.num_workers = 0
config.frequent = 1
config.tensorboard = False
config.loss = "cosface"
config.loss_params = {{"s": 16.0, "m": 0.2, "gamma_u": 1e-2, "p": 2.0, "alpha": 1.0}}
"""


@pytest.fixture(scope="session")
def easy_records(tmp_path_factory) -> Path:
    """An 8-class, 64-image record set with groups.tsv."""
    return make_record_set(tmp_path_factory.mktemp("records") / "easy")


@pytest.fixture
def tiny_recipe(tmp_path, easy_records) -> Path:
    """A recipe file for a width-4 IResNet-18 on ``easy_records``."""
    path = tmp_path / "tiny.py"
    path.write_text(TINY_RECIPE.format(rec=str(easy_records)))
    return path


@pytest.fixture
def one_thread():
    """Run the in-process reference with one intra-op thread, like the torchrun workers.

    A different thread count changes float summation order; over a few steps the
    threshold's hard indicator turns such rounding into visibly different losses.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
