"""Training datasets: InsightFace record sets and image folders, as torch ``Dataset``s.

:meth:`RecordSet.open` opens a record set for training once: its dataset,
``num_classes``, ``num_image`` and the groups of ``groups.tsv``. Each sample is ``(image, label)``: ``image`` a float32 ``[3, H, W]`` RGB tensor normalised to
``(x / 255 - 0.5) / 0.5`` (randomly flipped left-right when ``random_flip``), ``label`` an int.
"""
from __future__ import annotations

import math
import numbers
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from fpr_plugin.data.image_folder import scan_image_folder
from fpr_plugin.data.record_set import (GROUPS_NAME, IDX_NAME, PROPERTY_NAME, REC_NAME, read_groups, read_record_set,
                                        record_paths)
from fpr_plugin.data.recordio import IndexedRecordReader, unpack
from fpr_plugin.face_input import INPUT_MEAN, INPUT_STD

Transform = Callable[[np.ndarray], torch.Tensor]

__all__ = ["RecordDataset", "RecordSet", "ImageFolderDataset", "decode_image", "to_tensor"]


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 ``[H, W, 3]`` array; ``source`` names it in errors."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{source}: {len(data)} bytes that OpenCV cannot decode as an image "
                         "(expected JPEG/PNG/BMP data)")
    return img[:, :, ::-1]  # BGR -> RGB (a view)


def to_tensor(rgb: np.ndarray, flip: bool = False) -> torch.Tensor:
    """RGB uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in [-1, 1], mirrored left-right if ``flip``."""
    if flip:
        rgb = rgb[:, ::-1]
    # a contiguous uint8 CHW copy first: the float maths then runs on contiguous memory, about
    # twice as fast as on the strided (transposed, mirrored) view. insightface's (x - 127.5) / 127.5
    # (fpr_plugin.face_input) as x / 127.5 - 1, the arithmetic training has always used (within 1 ulp of to_blob)
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32)
    chw *= np.float32(1 / INPUT_STD)
    chw -= np.float32(INPUT_MEAN / INPUT_STD)
    return torch.from_numpy(chw)


class _FaceDataset(Dataset):
    """Shared sample path: decode, then ``transform`` (given RGB uint8 HWC) or flip + normalise."""

    def __init__(self, transform: Transform | None, random_flip: bool):
        self.transform = transform
        self.random_flip = random_flip

    def _sample(self, data: bytes, source: str) -> torch.Tensor:
        rgb = decode_image(data, source)
        if self.transform is not None:
            return self.transform(np.ascontiguousarray(rgb))
        # python's `random` is reseeded per DataLoader worker by torch (numpy's is not)
        return to_tensor(rgb, flip=self.random_flip and random.random() < 0.5)


class RecordDataset(_FaceDataset):
    """Images of an InsightFace record set (a folder with ``train.rec``/``train.idx``/``property``).

    ``transform``, when given, replaces flip + normalise: it receives the RGB uint8 ``[H, W, 3]``
    array and returns the tensor. Files are opened lazily in each DataLoader worker.
    """

    def __init__(self, path: str | os.PathLike, transform: Transform | None = None,
                 random_flip: bool = True, check_labels: bool = True):
        super().__init__(transform, random_flip)
        rec, idx = record_paths(path)
        self.reader = IndexedRecordReader(idx, rec)
        info = read_record_set(path, self.reader)
        self.num_classes = info.num_classes
        self.num_image = info.num_image
        self.image_size = info.image_size
        self.image_keys = info.image_keys
        self._check_labels(self.image_keys if check_labels else self.image_keys[:1])
        if self.num_image:
            self._check_first_image()
        self.reader.close()  # reopened on first read, in whichever process reads

    def _check_labels(self, keys: np.ndarray) -> None:
        """The labels of the image records ``keys`` (from their headers) must be integers in ``[0, num_classes)``."""
        values = self.reader.header_labels(keys)
        whole = np.isfinite(values) & (values == np.round(values))
        inside = whole & (values >= 0) & (values < self.num_classes)
        bad = np.flatnonzero(~inside)
        if bad.size:
            i = int(bad[0])
            raise ValueError(self._label_error(int(keys[i]), float(values[i]))
                             + f"; {bad.size} bad label(s) in all, checked before training")

    def _label_error(self, key: int, value: float) -> str:
        """The message for the bad label ``value`` of record ``key``."""
        what = (f"label {value!r}; expected an integer class id in [0, {self.num_classes})"
                if not (math.isfinite(value) and value.is_integer())
                else f"label {int(value)} is outside [0, num_classes={self.num_classes})")
        return f"{self.reader.rec_path}, key {key}: {what} (num_classes from the record set's property)"

    def _check_first_image(self) -> None:
        """The first image must decode to the ``property`` size (checked once, at the boundary)."""
        _, payload, key = self._read(0)
        shape = decode_image(payload, f"{self.reader.rec_path}, key {key}").shape[:2]
        if tuple(shape) != tuple(self.image_size):
            raise ValueError(
                f"{self.reader.rec_path}, key {key}: image is {shape[0]}x{shape[1]} (height x width), but "
                f"{self.reader.rec_path.parent / 'property'} says {self.image_size[0]}x{self.image_size[1]}; "
                "expected the images to have the size the property file gives")

    def __len__(self) -> int:
        return self.num_image

    def _read(self, index: int) -> tuple[int, bytes, int]:
        key = int(self.image_keys[index])
        header, payload = unpack(self.reader.read_idx(key))
        value = header.label if isinstance(header.label, numbers.Number) else header.label[0]
        value = float(value)
        if not (math.isfinite(value) and value.is_integer() and 0 <= value < self.num_classes):
            raise ValueError(self._label_error(key, value))
        return int(value), payload, key

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label, payload, key = self._read(index)
        image = self._sample(payload, f"{self.reader.rec_path}, key {key}")
        if self.transform is None and tuple(image.shape[1:]) != tuple(self.image_size):
            raise ValueError(
                f"{self.reader.rec_path}, key {key}: image is {image.shape[1]}x{image.shape[2]}, expected "
                f"{self.image_size[0]}x{self.image_size[1]} (the record set's property)")
        return image, label


@dataclass(frozen=True)
class RecordSet:
    """A record-set folder opened for training: its dataset (no random flip of its own) and groups."""

    path: Path
    dataset: RecordDataset
    groups: dict[int, str] | None  # class id -> group name, from groups.tsv

    @property
    def num_classes(self) -> int:
        """Classes of the set (from ``property``, else the identity records)."""
        return self.dataset.num_classes

    @property
    def num_image(self) -> int:
        """Images of the set."""
        return self.dataset.num_image

    @classmethod
    def open(cls, path: str | os.PathLike | None, check_labels: bool = True) -> "RecordSet":
        """Open the folder ``path`` (``train.rec``, ``train.idx``, ``property``, optional ``groups.tsv``).

        FileNotFoundError naming the folder and the files expected in it; the
        record header, the property file, the first image and (``check_labels``) every
        record's label and framing are checked once here.
        """
        needed = (REC_NAME, IDX_NAME, PROPERTY_NAME)
        folder = Path(path) if path else None
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(
                f"record folder rec={None if path is None else str(path)!r} does not exist; expected a folder "
                f"with {', '.join(needed)} (set it with --set rec=/path/to/folder)")
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"record folder {str(folder)!r} lacks {', '.join(missing)}")
        dataset = RecordDataset(folder, random_flip=False, check_labels=check_labels)
        groups = read_groups(folder)
        outside = sorted(c for c in (groups or {}) if c >= dataset.num_classes)
        if outside:
            raise ValueError(f"{folder / GROUPS_NAME}: class id {outside[0]} is outside [0, num_classes="
                             f"{dataset.num_classes}) of the record set ({len(outside)} such line(s)); expected "
                             "'class_id<TAB>identity<TAB>group' lines for the set's classes")
        return cls(folder, dataset, groups)

    def resolve_counts(self, num_classes: int | None, num_image: int | None) -> tuple[int, int]:
        """``(num_classes, num_image)`` of a config: the set's where None; ValueError when they contradict it.

        A larger ``num_classes`` than the set holds is allowed (classes without
        images); ``num_image`` may use fewer images than the set holds, not more.
        """
        if num_classes is None:
            num_classes = self.num_classes
        elif num_classes < self.num_classes:
            raise ValueError(
                f"num_classes={num_classes} is smaller than the {self.num_classes} classes of {str(self.path)!r}")
        if num_image is None:
            num_image = self.num_image
        elif num_image > self.num_image:
            raise ValueError(f"num_image={num_image} exceeds the {self.num_image} images of {str(self.path)!r}")
        return int(num_classes), int(num_image)


class ImageFolderDataset(_FaceDataset):
    """Aligned face images in ``<group>/<identity>/<image>`` or ``<identity>/<image>`` folders.

    Class ids follow :func:`fpr_plugin.data.image_folder.scan_image_folder` (the same ids
    ``fpr-build-rec`` gives the same tree).
    """

    def __init__(self, root: str | os.PathLike, transform: Transform | None = None,
                 random_flip: bool = True):
        super().__init__(transform, random_flip)
        folder = scan_image_folder(root)
        self.root = Path(root)
        self.samples = folder.images
        self.identities = folder.identities
        self.num_classes = folder.num_classes
        self.num_image = len(self.samples)

    def __len__(self) -> int:
        return self.num_image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self._sample(path.read_bytes(), str(path)), label
