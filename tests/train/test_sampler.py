"""Data order: global batches split across ranks, deterministic in (seed, epoch), resumable."""

import numpy as np
import pytest
import torch

from fpr_plugin.train.sampler import FlippedSamples, GlobalBatchSampler


def _batches(sampler, epoch, start=0):
    return list(sampler.epoch(epoch, start))


def test_one_epoch_visits_distinct_samples_drop_last():
    sampler = GlobalBatchSampler(103, 10, seed=3)
    batches = _batches(sampler, 0)
    assert len(batches) == sampler.steps_per_epoch == 10
    indices = [i for b in batches for i, _ in b]
    assert len(indices) == 100 and len(set(indices)) == 100
    assert set(indices) <= set(range(103))


def test_ranks_concatenate_to_the_one_process_batch():
    single = _batches(GlobalBatchSampler(64, 16, seed=5), 2)
    ranks = [_batches(GlobalBatchSampler(64, 16, rank=r, world_size=4, seed=5), 2) for r in range(4)]
    for step, batch in enumerate(single):
        assert sum((ranks[r][step] for r in range(4)), []) == batch
        assert all(len(ranks[r][step]) == 4 for r in range(4))


def test_order_depends_on_seed_and_epoch_only():
    a = GlobalBatchSampler(50, 5, seed=1)
    b = GlobalBatchSampler(50, 5, seed=1)
    assert _batches(a, 3) == _batches(b, 3)
    assert _batches(a, 3) != _batches(a, 4)
    assert _batches(a, 3) != _batches(GlobalBatchSampler(50, 5, seed=2), 3)


def test_resume_mid_epoch_continues_the_same_sequence():
    sampler = GlobalBatchSampler(60, 6, rank=1, world_size=2, seed=9)
    full = _batches(sampler, 1)
    assert _batches(sampler, 1, start=4) == full[4:]
    assert len(sampler.epoch(1, 4)) == len(full) - 4


def test_flips_are_random_per_position_and_can_be_disabled():
    sampler = GlobalBatchSampler(2000, 100, seed=0)
    flips = [f for b in _batches(sampler, 0) for _, f in b]
    assert 0.45 < np.mean(flips) < 0.55
    no_flip = GlobalBatchSampler(2000, 100, seed=0, random_flip=False)
    assert not any(f for b in _batches(no_flip, 0) for _, f in b)


def test_batch_must_divide_by_world_size():
    with pytest.raises(ValueError, match=r"batch_size=10 .*world size 4"):
        GlobalBatchSampler(100, 10, rank=0, world_size=4)


def test_batch_larger_than_dataset():
    with pytest.raises(ValueError, match="exceeds the 8 training images"):
        GlobalBatchSampler(8, 16)


def test_flipped_samples_mirror_exactly_the_flagged_items():
    images = [torch.arange(6.0).reshape(1, 2, 3) + 10 * i for i in range(3)]
    samples = FlippedSamples([(image, i) for i, image in enumerate(images)])
    assert len(samples) == 3
    image, label = samples[(1, True)]
    assert label == 1 and image[0].tolist() == [[12.0, 11.0, 10.0], [15.0, 14.0, 13.0]]
    image, label = samples[(2, False)]
    assert label == 2 and torch.equal(image, images[2])
