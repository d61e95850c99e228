"""Deterministic, resumable data order: one global batch per step, split across ranks.

Epoch ``e`` visits the images in the order ``permutation(seed, e)`` and draws
its flips from ``(seed, e)`` too, so the order and the augmentation depend on
nothing else: not on the world size, the number of loader workers, or on
whether the run was interrupted. Global batch ``t`` of an epoch is positions
``[t*B, (t+1)*B)`` of that order, and rank ``r`` of ``W`` takes the ``r``-th
contiguous ``B/W`` of it, so the ranks' batches concatenated in rank order
are exactly the one-process batch. :class:`FlippedSamples` reads those
``(index, flip)`` items from a dataset.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["GlobalBatchSampler", "RankBatches", "FlippedSamples"]


class GlobalBatchSampler:
    """Splits ``num_samples`` into ``steps_per_epoch`` global batches per epoch, drop-last."""

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        random_flip: bool = True,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"batch_size={global_batch} (global) does not divide by the world size {world_size}; "
                f"use a multiple of {world_size}"
            )
        if num_samples < global_batch:
            raise ValueError(
                f"batch_size={global_batch} exceeds the {num_samples} training images: not one full step"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.random_flip = random_flip
        self.steps_per_epoch = num_samples // global_batch

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of all sample indices."""
        return np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_samples)

    def flips(self, epoch: int) -> np.ndarray:
        """Per position of the epoch's order: flip the image horizontally?"""
        if not self.random_flip:
            return np.zeros(self.num_samples, dtype=bool)
        return np.random.default_rng([self.seed, epoch, 1]).random(self.num_samples) < 0.5

    def epoch(self, epoch: int, start_step: int = 0) -> "RankBatches":
        """This rank's batches of ``epoch`` from ``start_step`` on (a DataLoader batch_sampler)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
        return RankBatches(self, epoch, start_step)


class RankBatches:
    """Iterable of one rank's ``[(index, flip), ...]`` batches for one epoch, from a step on."""

    def __init__(self, sampler: GlobalBatchSampler, epoch: int, start_step: int) -> None:
        self.sampler = sampler
        self.epoch = epoch
        self.start_step = start_step

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        s = self.sampler
        order = s.order(self.epoch)
        flips = s.flips(self.epoch)
        for step in range(self.start_step, s.steps_per_epoch):
            lo = step * s.global_batch + s.rank * s.local_batch
            positions = range(lo, lo + s.local_batch)
            yield [(int(order[p]), bool(flips[p])) for p in positions]


class FlippedSamples(Dataset):
    """Reads the sampler's ``(index, flip)`` items from a dataset without its own random flip."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = item
        image, label = self.dataset[index]
        return (image.flip(-1) if flip else image), label
