"""Run arcface_torch's ``train_v2.py`` on CPUs under gloo, without editing it (``--device cpu``).

The script asks for CUDA in a few fixed places: NCCL at import,
``torch.cuda.set_device``, ``.cuda()`` on modules and tensors, DDP with
``device_ids=[local_rank]``, a data loader (``dataset.DataLoaderX``)
that copies batches on a CUDA stream, and a seed broadcast through a CUDA
tensor (``utils.utils_distributed_sampler.sync_random_seed``). :func:`enable_cpu` replaces exactly
those for the life of the process; nothing else changes. It is meant for
the launcher process only (tests, laptops); GPUs need none of it.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

__all__ = ["CpuDataLoader", "enable_cpu"]


class CpuDataLoader(DataLoader):
    """``DataLoaderX(local_rank, **kwargs)`` without the CUDA stream: a plain DataLoader on CPU."""

    def __init__(self, local_rank: int, **kwargs) -> None:
        kwargs["pin_memory"] = False
        super().__init__(**kwargs)
        self.local_rank = local_rank


class _CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    """DDP that drops ``device_ids``/``output_device`` for a CPU module (DDP refuses them there)."""

    def __init__(self, module, *args, device_ids=None, output_device=None, **kwargs) -> None:
        super().__init__(module, *args, **kwargs)


def _gloo_init_process_group(original):
    def init_process_group(backend=None, *args, **kwargs):
        if backend == "nccl" or kwargs.get("backend") == "nccl":
            kwargs.pop("backend", None)
            backend = "gloo"
        return original(backend, *args, **kwargs)

    return init_process_group


def enable_cpu(dataset_module=None, sampler_module=None) -> None:
    """Stand in for the host's CUDA-only calls with CPU ones (gloo, identity ``.cuda()``, plain loader).

    ``dataset_module``: the host's ``dataset`` (its CUDA-stream loader); ``sampler_module``: its
    ``utils.utils_distributed_sampler`` (it broadcasts the seed through a CUDA tensor).
    """
    dist.init_process_group = _gloo_init_process_group(dist.init_process_group)
    torch.cuda.set_device = lambda device: None
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.nn.parallel.DistributedDataParallel = _CpuDistributedDataParallel
    if dataset_module is not None:
        dataset_module.DataLoaderX = CpuDataLoader
    if sampler_module is not None:
        sampler_module.sync_random_seed = functools.partial(sampler_module.sync_random_seed, device="cpu")
