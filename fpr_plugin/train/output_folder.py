"""A training run's output folder: its lock, and the rule for which run owns it.

Rank 0 holds ``<output>/.fpr.lock`` while the run writes. A fresh run (no
``--resume``) may only write into a folder that holds no other run's files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist

from fpr_plugin.atomic import clean_stale_temporaries
from fpr_plugin.cli_errors import UserError
from fpr_plugin.model_file import CONFIG_NAME, MODEL_NAME, write_config
from fpr_plugin.run_lock import OutputLock
from fpr_plugin.train.checkpoint import CHECKPOINT_DIR, check_compatible, latest_checkpoint
from fpr_plugin.train.environment import RunEnvironment, all_ranks
from fpr_plugin.train.monitor import METRICS_NAME, get_logger, truncate_metrics

__all__ = ["OutputFolderError", "lock_output", "claim_output"]


class OutputFolderError(UserError):
    """The output folder holds another run (or cannot be used); the message says what to pass."""


def lock_output(output: Path, env: RunEnvironment) -> OutputLock | None:
    """Rank 0 takes ``<output>/.fpr.lock`` and removes stale temporaries; every rank fails together when it cannot."""
    lock, error = None, None
    if env.is_main:
        try:
            lock = OutputLock(output, "fpr-train").acquire()
            for folder in (output, *output.glob(f"{CHECKPOINT_DIR}/step_*")):
                for left in clean_stale_temporaries(folder):
                    get_logger().info("removed %s, left by an interrupted run", left)
        except UserError as exc:
            error = exc
    if not all_ranks(error is None, env.device):
        raise error or OutputFolderError(f"output {output}: rank 0 could not take its lock")
    return lock


def _conflict(output: Path, config: dict) -> str | None:
    """What of another run ``output`` holds, as the refusal's message; None when a fresh run may use it."""
    found = latest_checkpoint(output)
    if found is not None:
        return (f"output {str(output)!r} already holds checkpoints (last at step {found.global_step}); "
                "pass --resume to continue that run, --overwrite to replace it, or choose another output "
                "with --set output=DIR")
    config_file = output / CONFIG_NAME
    if config_file.is_file():
        try:
            check_compatible(json.loads(config_file.read_text(encoding="utf-8")), config, str(config_file))
        except (ValueError, OSError) as exc:
            return (f"output {str(output)!r} holds another run ({' '.join(str(exc).split())}); "
                    "pass --overwrite to replace it or choose another output with --set output=DIR")
    return None


def claim_output(output: Path, config: dict, *, overwrite: bool, env: RunEnvironment) -> None:
    """Make ``output`` this fresh run's, or raise OutputFolderError naming what to pass.

    Checkpoints: refused unless ``overwrite`` (then the old run's files are removed).
    A ``config.json`` without checkpoints (a run stopped before its first save):
    continued from scratch when the settings match, refused unless ``overwrite``
    when they do not. Leftover ``metrics.jsonl`` lines of such a run are dropped.
    """
    conflict = _conflict(output, config)
    if conflict is not None and not overwrite:
        raise OutputFolderError(conflict)
    if env.is_main:
        logger = get_logger()
        if conflict is not None:
            logger.warning("--overwrite: removing the previous run's files in %s", output)
            shutil.rmtree(output / CHECKPOINT_DIR, ignore_errors=True)
            for name in (MODEL_NAME, CONFIG_NAME, METRICS_NAME):
                (output / name).unlink(missing_ok=True)
            shutil.rmtree(output / "tensorboard", ignore_errors=True)
        elif (output / METRICS_NAME).is_file():
            logger.warning("dropping metrics.jsonl lines of an earlier run of these settings in %s "
                           "that stopped before its first checkpoint", output)
        truncate_metrics(output / METRICS_NAME, 0)
        write_config(output, config)
    if env.distributed:
        dist.barrier()
