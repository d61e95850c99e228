"""Where a training process runs: rank, world size, device and process group (set up on demand)."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["RunEnvironment", "setup_environment", "teardown_environment", "all_ranks", "allreduce_sum_hook"]


@dataclass
class RunEnvironment:
    """One training process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    owns_process_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, ``model.pt`` and ``config.json``."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup_environment() -> RunEnvironment:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK and start the process group when needed.

    The backend is NCCL when CUDA is available, gloo otherwise; each process
    uses GPU ``LOCAL_RANK``. An already initialised process group is reused
    (and left running by :func:`teardown_environment`).
    """
    cuda = torch.cuda.is_available()
    local_rank = _env_int("LOCAL_RANK", 0)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_available() and dist.is_initialized():
        return RunEnvironment(
            dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend(), False
        )
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world_size <= 1:
        return RunEnvironment(0, 1, local_rank, device, None, False)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return RunEnvironment(rank, world_size, local_rank, device, backend, True)


def teardown_environment(env: RunEnvironment) -> None:
    """Destroy the process group if :func:`setup_environment` created it."""
    if env.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on every rank (one all-reduce when distributed), so all ranks agree."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


# No `from __future__ import annotations` here: DDP checks this hook's annotations at run time.
def allreduce_sum_hook(
    process_group: dist.ProcessGroup | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook that SUMS gradients over ranks (DDP's default averages them).

    The class-sharded head sends back d(global-mean loss)/d(local embeddings),
    so each rank's backbone gradient is its share of the global gradient, and
    the shares add up to the one-process gradient.
    """
    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
