"""What a training run reports: progress bar, log lines, metrics.jsonl, TensorBoard, per-group FPR.

Only rank 0 writes. Every ``frequent`` steps one record goes to
``metrics.jsonl`` (a JSON object per line), one line to ``training.log`` and
the console, and the scalars to TensorBoard when it is installed.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from fpr_plugin.atomic import atomic_write
from fpr_plugin.losses.stats import LOG_LABELS

__all__ = ["GroupFprMeter", "TrainingMonitor", "format_record", "get_logger", "truncate_metrics"]

LOGGER_NAME = "fpr_plugin.train"
METRICS_NAME = "metrics.jsonl"


def get_logger() -> logging.Logger:
    """The trainer's logger (handlers are attached by :class:`TrainingMonitor` on rank 0)."""
    return logging.getLogger(LOGGER_NAME)


class GroupFprMeter:
    """Accumulates the Eq. 9 instance FPR per demographic group over a logging window.

    ``class_to_group[c]`` is the group index of class ``c`` (-1: no group).
    Analysis only: the loss never sees the groups. Sums stay on the device
    until :meth:`summary`, so updating costs no synchronisation.
    """

    def __init__(self, class_to_group: torch.Tensor, names: Sequence[str],
                 source: str = "last_instance_fpr", prefix: str = "") -> None:
        self.class_to_group = class_to_group
        self.names = list(names)
        self.source = source  # the loss attribute holding the step's instance FPR
        self.prefix = prefix  # before every key of summary(): "pairs_" for last_pair_instance_fpr
        self._fpr_sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    @classmethod
    def from_groups(cls, groups: Mapping[int, str] | None, num_classes: int,
                    device: torch.device | str = "cpu", source: str = "last_instance_fpr",
                    prefix: str = "") -> "GroupFprMeter | None":
        """A meter for ``groups`` (class id -> group name, as in ``groups.tsv``) reading ``source``; None without groups."""
        if not groups:
            return None
        names = sorted(set(groups.values()))
        class_to_group = torch.full((num_classes,), -1, dtype=torch.long)
        for class_id, name in groups.items():
            if 0 <= class_id < num_classes:
                class_to_group[class_id] = names.index(name)
        return cls(class_to_group.to(device), names, source, prefix)

    def update(self, instance_fpr: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one step's per-row instance FPR ``[N]`` of samples with global class ``labels`` ``[N]``."""
        groups = self.class_to_group.to(labels.device)[labels]
        keep = groups >= 0
        groups = groups[keep]
        fpr = instance_fpr.detach().to(labels.device, torch.float64)[keep]
        size = len(self.names)
        fpr_sum = torch.zeros(size, dtype=torch.float64, device=labels.device).index_add_(0, groups, fpr)
        count = torch.zeros(size, dtype=torch.float64, device=labels.device).index_add_(
            0, groups, torch.ones_like(fpr)
        )
        self._fpr_sum = fpr_sum if self._fpr_sum is None else self._fpr_sum + fpr_sum
        self._count = count if self._count is None else self._count + count

    def update_from_loss(self, loss: torch.nn.Module, labels: torch.Tensor) -> None:
        """Add the instance FPR a loss kept of its last step (its ``source`` attribute), if it keeps one.

        A class-sharded FPR loss keeps the global batch's rows: the labels of every
        rank are gathered to match them.
        """
        fpr = getattr(loss, self.source, None)
        if fpr is None:
            return
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if fpr.shape[0] != labels.shape[0] and distributed:
            gathered = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, labels)
            labels = torch.cat(gathered)
        if fpr.shape[0] == labels.shape[0]:
            self.update(fpr, labels)

    def summary(self) -> dict[str, float]:
        """Per group: mean instance FPR, share of the above-threshold entries, share of the samples; then reset."""
        if self._fpr_sum is None:
            return {}
        fpr_sum = self._fpr_sum.cpu().tolist()
        count = self._count.cpu().tolist()
        self._fpr_sum = self._count = None
        total_fpr, total_count = sum(fpr_sum), sum(count)
        out: dict[str, float] = {}
        for name, s, n in zip(self.names, fpr_sum, count):
            if n == 0:
                continue
            out[f"{self.prefix}group_fpr_mean/{name}"] = s / n
            # instance FPR = above-threshold entries of the row / (c - 1): the sums give the share
            # (over pairs, the row's impostor count varies a little with the batch's class make-up)
            out[f"{self.prefix}group_above_share/{name}"] = s / total_fpr if total_fpr > 0 else 0.0
            out[f"{self.prefix}group_sample_share/{name}"] = n / total_count
        return out


def format_record(record: Mapping[str, Any]) -> str:
    """One human-readable log line for a metrics record."""
    parts = [
        f"epoch {record['epoch']}",
        f"step {record['global_step']}/{record['total_steps']}",
        f"loss {record['loss']:.4f} (avg {record['loss_avg']:.4f})",
        f"lr {record['lr']:.5g}",
        f"{record['samples_per_s']:.1f} samples/s",
        f"ETA {datetime.timedelta(seconds=round(record['eta_s']))}",
    ]
    for key, label in LOG_LABELS:
        if key in record:
            parts.append(f"{label} {record[key]:.4g}")
    groups = sorted({k.split("/", 1)[1] for k in record if k.startswith("group_fpr_mean/")})
    if groups:
        parts.append(
            "group FPR "
            + ", ".join(
                f"{g} {record['group_fpr_mean/' + g]:.3g} ({100 * record['group_above_share/' + g]:.0f}% above T_u)"
                for g in groups
            )
        )
    return " | ".join(parts)


def truncate_metrics(path: str | Path, global_step: int) -> None:
    """Drop the ``metrics.jsonl`` records after ``global_step`` (from the interrupted part of a run)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("global_step", 0) <= global_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in kept), encoding="utf-8"))


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


class TrainingMonitor:
    """Progress bar, log lines, metrics.jsonl and TensorBoard for rank 0 (a no-op elsewhere)."""

    def __init__(
        self,
        output: str | Path,
        *,
        is_main: bool,
        total_steps: int,
        start_step: int,
        global_batch: int,
        use_tensorboard: bool = True,
    ) -> None:
        self.is_main = is_main
        self.total_steps = total_steps
        self.global_batch = global_batch
        self.output = Path(output)
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._window_loss = 0.0
        self._handlers: list[logging.Handler] = []
        self._metrics = None
        self._bar = None
        self._writer = None
        self.logger = get_logger()
        if not is_main:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(self.output / "training.log", encoding="utf-8"), _TqdmHandler()):
            handler.setFormatter(fmt)
            self.logger.addHandler(handler)
            self._handlers.append(handler)
        self._metrics = open(self.output / METRICS_NAME, "a", encoding="utf-8")
        from tqdm import tqdm

        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=None)
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.logger.info("tensorboard is not installed: no event files (pip install tensorboard)")
            else:
                self._writer = SummaryWriter(str(self.output / "tensorboard"))

    def step(self, loss: float | None) -> None:
        """Count one finished step (``loss`` when it was read this step)."""
        self._window_steps += 1
        if loss is not None:
            self._window_loss += loss
        if self._bar is not None:
            self._bar.update(1)

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        """Complete ``record`` (throughput, ETA, window mean loss) and write it; returns it."""
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        steps = max(self._window_steps, 1)
        record["samples_per_s"] = steps * self.global_batch / elapsed
        record["eta_s"] = (self.total_steps - record["global_step"]) * elapsed / steps
        record["loss_avg"] = self._window_loss / steps if self._window_loss else record["loss"]
        record["total_steps"] = self.total_steps
        record["time"] = time.time()
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self._window_loss = 0.0
        if not self.is_main:
            return record
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        self.logger.info(format_record(record))
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.3g}")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "global_step", "total_steps"):
                    self._writer.add_scalar(f"train/{key}", value, record["global_step"])
        return record

    def close(self) -> None:
        """Flush and close every output."""
        if self._bar is not None:
            self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._writer is not None:
            self._writer.close()
        for handler in self._handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self._handlers = []
