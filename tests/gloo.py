"""Run a test worker in several real gloo processes and collect what each rank saved."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(worker: Callable[..., None], out_dir: Path, nprocs: int = 2) -> list[dict]:
    """Spawn ``worker(rank, port, out_dir)`` on ``nprocs`` processes; load each ``rank{r}.pt`` it wrote.

    A worker that needs the world size can read it from ``torch.distributed``
    after it joins, or take it from a module constant.
    """
    mp.start_processes(worker, args=(free_port(), str(out_dir)), nprocs=nprocs, start_method="spawn", join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(nprocs)]


def run_two_ranks(worker: Callable[[int, int, str], None], out_dir: Path) -> list[dict]:
    """Spawn ``worker(rank, port, out_dir)`` on 2 processes; load each ``rank{r}.pt`` it wrote."""
    return run_ranks(worker, out_dir, nprocs=2)
