"""Training-step throughput with the FPR penalty vs CosFace: r34 backbone, BUPT-scale classifier.

One full optimisation step as the trainer runs it (backbone forward, head +
loss, backward, gradient clipping, SGD step), for ``cosface`` and
``fpr_penalty`` built from the same recipe, on the same inputs, interleaved
in one run; prints samples/s of each and the time ratio (median of repeats).
Target: fpr_penalty at most 1.05x the time of cosface.

    python bench/train_throughput.py                      # r34, 28,000 classes, batch 8, CPU
    python bench/train_throughput.py --batch 128 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fpr_plugin.train.config import load_config
from fpr_plugin.train.trainer import backward_and_step, build_model, forward_loss, make_optimizer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "bupt_balancedface_r34.py"
TARGET = 1.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(loss_name: str, args: argparse.Namespace, device: torch.device):
    """A closure running one training step of the recipe with ``loss_name``."""
    cfg = load_config(RECIPE, loss=loss_name, overrides=[f"num_classes={args.classes}", f"network={args.network}"])
    backbone, head, _ = build_model(cfg, device)
    optimizer = make_optimizer(cfg, backbone, head)
    amp_dtype = torch.float16 if (device.type == "cuda" and cfg.fp16 == "fp16") else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is not None)
    backbone.train(), head.train()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 112, 112, generator=gen).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)

    def step() -> float:
        loss = forward_loss(backbone, head, images, labels, amp_dtype)
        value = float(loss.detach())  # the trainer reads the loss every step too
        backward_and_step(loss, optimizer, scaler, backbone, cfg.grad_clip)
        return value

    return step


def main(argv: list[str] | None = None) -> None:
    """Measure and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="r34")
    parser.add_argument("--classes", type=int, default=28000, help="classifier size (BUPT-Balancedface: 28,000)")
    parser.add_argument("--batch", type=int, default=8, help="global batch of the step")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    steps = {name: make_step(name, args, device) for name in ("cosface", "fpr_penalty")}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():
        for _ in range(args.warmup):
            step()
    for _ in range(args.repeats):
        for name, step in steps.items():  # interleaved, so drift hits both alike
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)

    print(f"training step, {args.network} backbone, {args.classes} classes, batch {args.batch}, "
          f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in median.items():
        print(f"  {name:12s} {seconds * 1e3:9.1f} ms/step  {args.batch / seconds:8.1f} samples/s")
    ratio = median["fpr_penalty"] / median["cosface"]
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"  ratio fpr_penalty / cosface time: {ratio:.3f}x ({verdict} the target <= {TARGET}x)")


if __name__ == "__main__":
    main()
