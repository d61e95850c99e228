"""Overhead of the FPR-penalty losses over CosFace on the same normalised FC head.

For each loss: ``ClassifierHead(D, C, loss).training_loss(x, y).backward()``
(forward + backward of FC, margin/penalty and cross-entropy), same process,
same weights and inputs, losses interleaved within every repeat so that load
on a shared machine hits them alike. Prints the median time and the peak
memory of one step, and both as ratios to CosFace (median over repeats of
the per-repeat ratio).

Peak memory of a step is measured as:
- CUDA: ``torch.cuda.max_memory_allocated()`` during the step minus the bytes
  allocated before it (tensors only);
- CPU (Linux): the process's peak resident set size during the step
  (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident size
  before it. Large tensors are mmap-ed by the allocator and returned on free,
  so this follows live tensor memory closely, at page granularity.

Usage: ``python bench/head_overhead.py [--batch 512 --classes 28000 --dim 512 --repeats 7 --device cpu]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import torch

from fpr_plugin.heads import ClassifierHead
from fpr_plugin.registry import build_loss

# name in the table -> (registered loss, parameters)
LOSSES = {
    "cosface": ("cosface", {}),
    "fpr_penalty": ("fpr_penalty", {}),
    "fpr_penalty_pairs": ("fpr_penalty", {"negatives": "pairs"}),
    "fpr_penalty_tface": ("fpr_penalty_tface", {}),
}


def _read_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak bytes above the level at ``start()``, on CUDA or from the process RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _read_status("VmRSS")

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        return _read_status("VmHWM") - self.base


def step(head: ClassifierHead, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward + backward; gradients are dropped first so every step allocates alike."""
    head.weight.grad = None
    x.grad = None
    head.training_loss(x, y).backward()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--classes", type=int, default=28000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    weight = torch.empty(args.classes, args.dim).normal_(0, 0.01)
    heads = {}
    for name, (loss, params) in LOSSES.items():
        head = ClassifierHead(args.dim, args.classes, build_loss(loss, **params)).to(device)
        with torch.no_grad():
            head.weight.copy_(weight)
        heads[name] = head
    x = torch.randn(args.batch, args.dim, device=device, requires_grad=True)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    meter = PeakMemory(device)

    times: dict[str, list[float]] = {name: [] for name in LOSSES}
    peaks: dict[str, list[int]] = {name: [] for name in LOSSES}
    for name in LOSSES:  # warm-up
        step(heads[name], x, y)
    for _ in range(args.repeats):
        for name in LOSSES:
            meter.start()
            begin = time.perf_counter()
            step(heads[name], x, y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - begin)
            peaks[name].append(meter.stop())

    print(
        f"FC + loss, forward + backward: N={args.batch} C={args.classes} D={args.dim} on {device} "
        f"({torch.get_num_threads()} threads), median of {args.repeats}"
    )
    print(f"peak memory: {'CUDA max_memory_allocated' if device.type == 'cuda' else 'peak RSS (VmHWM)'} above the level before the step")
    # Ratios are taken per repeat (the losses ran back to back) and then the
    # median over repeats, which cancels slow drifts in the machine's load.
    def ratio(name: str, series: dict) -> float:
        return statistics.median(a / b for a, b in zip(series[name], series["cosface"]))

    print(f"{'loss':<20}{'time ms':>10}{'x cosface':>11}{'peak MiB':>10}{'x cosface':>11}")
    for name in LOSSES:
        t = statistics.median(times[name])
        m = statistics.median(peaks[name])
        print(f"{name:<20}{t * 1e3:>10.1f}{ratio(name, times):>11.3f}{m / 2**20:>10.1f}{ratio(name, peaks):>11.3f}")
    fpr_time, fpr_peak = ratio("fpr_penalty", times), ratio("fpr_penalty", peaks)
    verdict = "met" if fpr_time <= 1.10 and fpr_peak <= 1.3 else "MISSED"
    print(f"target fpr_penalty <= 1.10x time and <= 1.3x memory: {verdict} ({fpr_time:.3f}x, {fpr_peak:.3f}x)")


if __name__ == "__main__":
    main()
