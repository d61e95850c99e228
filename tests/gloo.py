"""Run a test worker in two real gloo processes and collect what each rank saved."""

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


def run_two_ranks(worker: Callable[[int, int, str], None], out_dir: Path) -> list[dict]:
    """Spawn ``worker(rank, port, out_dir)`` on 2 processes; load each ``rank{r}.pt`` it wrote."""
    mp.start_processes(worker, args=(free_port(), str(out_dir)), nprocs=2, start_method="spawn", join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(2)]
