"""Checkpoints: the training state of a rank (:class:`TrainState`), its files, resume and re-sharding.

Layout under the run's output folder::

    checkpoints/step_00001234/rank_0_of_8.pt ... rank_7_of_8.pt
    model.pt      backbone state_dict only (for export; see fpr_plugin.model_file)
    config.json   the resolved config

A save is *complete* when every rank's file exists. Every file is written to
a temporary name and renamed, so a crash never leaves a half-written file
under a final name. Everything stored is tensors and plain containers, so
``torch.load(path, weights_only=True)`` loads it.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fpr_plugin.atomic import atomic_write
from fpr_plugin.cli_errors import UserError
from fpr_plugin.model_file import non_finite_entry, write_model_and_config
from fpr_plugin.train.environment import RunEnvironment, all_ranks
from fpr_plugin.train.monitor import get_logger
from fpr_plugin.train.schema import RESUMABLE_KEYS  # keys a resume may change: the schema's ``resumable`` ones

__all__ = [
    "CHECKPOINT_DIR",
    "RESUMABLE_KEYS",
    "TrainState",
    "NonFiniteStateError",
    "class_range",
    "CompleteCheckpoint",
    "atomic_write",
    "CheckpointError",
    "save_file",
    "load_file",
    "checkpoint_path",
    "complete_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "rng_state",
    "set_rng_state",
    "check_compatible",
    "slice_class_rows",
    "reshard_state",
]

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_RANK_FILE = re.compile(r"^rank_(\d+)_of_(\d+)\.pt$")



class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded (damaged, truncated, or holding objects); names the file."""


def save_file(obj: Any, path: str | Path) -> None:
    """``torch.save`` under a temporary name, fsync, then rename."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_file(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` onto the CPU; CheckpointError naming the file."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); expected a torch.save file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} refused: it holds objects other than tensors and plain containers, "
            f"which are not loaded ({' '.join(first.split())[:200]})") from None
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is damaged or truncated ({type(exc).__name__}: {' '.join(first.split())[:200]}); "
            "expected a complete torch.save file") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}; expected a dict of training state")
    return state


def checkpoint_path(output: str | Path, global_step: int, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` saves after ``global_step`` steps."""
    return Path(output) / CHECKPOINT_DIR / f"step_{global_step:08d}" / f"rank_{rank}_of_{world_size}.pt"


@dataclass(frozen=True)
class CompleteCheckpoint:
    """A save with every rank's file present."""

    global_step: int
    world_size: int
    folder: Path

    def rank_file(self, rank: int) -> Path:
        """The file of ``rank`` in this save."""
        return self.folder / f"rank_{rank}_of_{self.world_size}.pt"


def complete_checkpoints(output: str | Path) -> list[CompleteCheckpoint]:
    """Every complete save under ``output``, oldest first."""
    root = Path(output) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _STEP_DIR.match(folder.name)
        if not match or not folder.is_dir():
            continue
        by_world: dict[int, set[int]] = {}
        for file in folder.iterdir():
            rank_match = _RANK_FILE.match(file.name)
            if rank_match:
                by_world.setdefault(int(rank_match.group(2)), set()).add(int(rank_match.group(1)))
        for world, ranks in by_world.items():
            if ranks == set(range(world)):
                found.append(CompleteCheckpoint(int(match.group(1)), world, folder))
    return sorted(found, key=lambda c: c.global_step)


def latest_checkpoint(output: str | Path) -> CompleteCheckpoint | None:
    """The most recent complete save, or None."""
    found = complete_checkpoints(output)
    return found[-1] if found else None


def prune_checkpoints(output: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete saves, and incomplete saves older than them."""
    found = complete_checkpoints(output)
    if not found:
        return
    kept = {c.folder for c in found[-keep:]}
    newest = found[-1].global_step
    for folder in (Path(output) / CHECKPOINT_DIR).iterdir():
        match = _STEP_DIR.match(folder.name)
        # a newer incomplete save may still be being written by other ranks: leave it
        if match and folder not in kept and int(match.group(1)) < newest:
            shutil.rmtree(folder, ignore_errors=True)


# ---- random number generators -------------------------------------------------------------
def rng_state(device: torch.device | None = None) -> dict:
    """The torch, CUDA, numpy and Python generators' states as tensors and plain values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# ---- resume checks and class re-sharding ----------------------------------------------------
def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """ValueError naming the first config key (other than RESUMABLE_KEYS) that differs."""
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_KEYS:
            continue
        if key not in saved or key not in current or saved[key] != current[key]:
            raise ValueError(
                f"checkpoint {where} does not match this run: key {key!r} was "
                f"{saved.get(key, '<absent>')!r} there and is {current.get(key, '<absent>')!r} now "
                "(resume with the same recipe and settings, or use another output folder)"
            )


def slice_class_rows(shards: Sequence[tuple[int, int, torch.Tensor]], start: int, end: int) -> torch.Tensor:
    """Rows ``[start, end)`` of a class-indexed tensor stored as ``(shard_start, shard_end, rows)`` pieces."""
    pieces = []
    for lo, hi, rows in sorted(shards, key=lambda s: s[0]):
        if rows.shape[0] != hi - lo:
            raise ValueError(f"shard [{lo}, {hi}) holds {rows.shape[0]} rows")
        a, b = max(lo, start), min(hi, end)
        if a < b:
            pieces.append(rows[a - lo : b - lo])
    result = torch.cat(pieces) if pieces else None
    if result is None or result.shape[0] != end - start:
        raise ValueError(f"the shards do not cover classes [{start}, {end})")
    return result


def _is_class_rows(value: Any, shard_rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == shard_rows


def reshard_state(states: Sequence[Mapping[str, Any]], class_start: int, class_end: int) -> dict:
    """The checkpoint of a rank owning classes ``[class_start, class_end)``, from all ranks of another world size.

    Backbone, schedule and counters come from rank 0 (they are the same on
    every rank); the head's class-indexed tensors and their optimizer state
    (momentum) are cut from the saved shards. RNG states are not carried over.
    """
    first = states[0]
    shards = [(int(s["head_shard"]["class_start"]), int(s["head_shard"]["class_end"]), s) for s in states]

    def rows(get: Callable[[Mapping[str, Any]], Any]) -> Any:
        values = [(lo, hi, get(s)) for lo, hi, s in shards]
        if all(_is_class_rows(v, hi - lo) for lo, hi, v in values):
            return slice_class_rows(values, class_start, class_end)
        return get(first)

    state = dict(first)
    state["head"] = {key: rows(lambda s, k=key: s["head"][k]) for key in first["head"]}
    optimizer = {"param_groups": first["optimizer"]["param_groups"], "state": dict(first["optimizer"]["state"])}
    for pid in first["head_param_ids"]:
        if pid in first["optimizer"]["state"]:
            optimizer["state"][pid] = {
                key: rows(lambda s, k=key, p=pid: s["optimizer"]["state"][p][k])
                for key in first["optimizer"]["state"][pid]
            }
    state["optimizer"] = optimizer
    state["head_shard"] = {"class_start": class_start, "class_end": class_end,
                           "num_classes": first["head_shard"]["num_classes"]}
    state.pop("rng", None)
    return state


# ---- the training state of one rank --------------------------------------------------------
class NonFiniteStateError(FloatingPointError):
    """The state to save holds NaN/inf; the message names the entry (or says it is on another rank)."""


def class_range(head: nn.Module) -> tuple[int, int]:
    """``[class_start, class_end)`` of the classes a (possibly class-sharded) head holds."""
    return int(getattr(head, "class_start", 0)), int(getattr(head, "class_end", head.weight.shape[0]))


class TrainState:
    """What one rank's checkpoint holds: weights, optimizer, grad scaler, counters, RNG states and the config.

    :meth:`state_dict` is the checkpoint's content and :meth:`load` restores it;
    :meth:`save` writes every rank's file and then (rank 0) ``model.pt``;
    :meth:`resume` loads the newest intact complete save, cutting this rank's
    classes out of the saved shards when the world size changed. The optimizer's
    parameter groups are the backbone's, then the head's.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, config: dict, *, env: RunEnvironment, steps_per_epoch: int) -> None:
        self.backbone, self.head, self.optimizer, self.scaler = backbone, head, optimizer, scaler
        self.config = config  # the plain resolved config
        self.env = env
        self.steps_per_epoch = steps_per_epoch
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.last_saved: Path | None = None  # this rank's file of the last save (or of the one resumed)
        self.last_saved_step = -1

    def state_dict(self) -> dict:
        """The checkpoint of this rank (a finished epoch is stored as the start of the next one)."""
        done = self.step_in_epoch
        epoch, step = (self.epoch + 1, 0) if done >= self.steps_per_epoch else (self.epoch, done)
        class_start, class_end = class_range(self.head)
        num_backbone = len(self.optimizer.param_groups[0]["params"])
        return {
            "backbone": self.backbone.state_dict(),
            "head": self.head.state_dict(),
            "head_shard": {"class_start": class_start, "class_end": class_end,
                           "num_classes": self.config["num_classes"]},
            "head_param_ids": list(range(num_backbone, num_backbone + len(self.optimizer.param_groups[1]["params"]))),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "rank": self.env.rank,
            "world_size": self.env.world_size,
            "rng": rng_state(self.env.device),
            "config": self.config,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (RNG states only when it has them; entries of older versions are ignored)."""
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step"])
        self.global_step = int(state["global_step"])
        if "rng" in state:
            set_rng_state(state["rng"], self.env.device)

    def save(self, output: str | Path, keep: int) -> Path:
        """Save every rank's checkpoint, then (rank 0) ``model.pt``, ``config.json`` and pruning to ``keep``.

        NonFiniteStateError, on every rank and before anything is written, when any
        rank's weights or optimizer state hold NaN/inf. Saving a step twice is a no-op.
        """
        if self.last_saved_step == self.global_step:
            return self.last_saved
        state = self.state_dict()
        bad = non_finite_entry({k: state[k] for k in ("backbone", "head", "optimizer")})
        if not all_ranks(bad is None, self.env.device):
            raise NonFiniteStateError(bad or "on another rank")
        path = checkpoint_path(output, self.global_step, self.env.rank, self.env.world_size)
        save_file(state, path)
        if self.env.distributed:
            dist.barrier()
        if self.env.is_main:
            write_model_and_config(output, self.backbone.state_dict(), self.config)
            prune_checkpoints(output, keep)
        self.last_saved, self.last_saved_step = path, self.global_step
        return path

    def resume(self, output: str | Path) -> CompleteCheckpoint | None:
        """Load the newest complete save of ``output`` that loads (and is finite) on every rank; None without one.

        Damaged newer saves are skipped with a warning. ValueError naming the key
        when the save's config does not match this run's (other than RESUMABLE_KEYS).
        """
        found, state = self._last_intact(output)
        if found is None:
            return None
        check_compatible(state["config"], self.config, str(found.folder))
        self.load(state)
        self.last_saved_step = self.global_step
        self.last_saved = found.rank_file(min(self.env.rank, found.world_size - 1))
        return found

    def _last_intact(self, output: str | Path) -> tuple[CompleteCheckpoint | None, dict | None]:
        """The newest complete save that loads (and is finite) on every rank, with this rank's state."""
        candidates = complete_checkpoints(output)
        for found in reversed(candidates):
            state, problem = None, None
            try:
                state = self._load_for_this_rank(found)
                bad = non_finite_entry({k: state.get(k) for k in ("backbone", "head")})
                if bad is not None:
                    problem = f"weight {bad!r} is not finite"
            except CheckpointError as exc:
                problem = str(exc)
            except (KeyError, TypeError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if all_ranks(problem is None, self.env.device):
                return found, state
            older = [c for c in candidates if c.global_step < found.global_step]
            get_logger().warning(
                "resume: skipping the damaged checkpoint %s (%s); %s", found.folder,
                problem or "damaged on another rank",
                f"trying the previous one, {older[-1].folder}" if older else "no older checkpoint is left")
        return None, None

    def _load_for_this_rank(self, found: CompleteCheckpoint) -> dict:
        if found.world_size == self.env.world_size:
            return load_file(found.rank_file(self.env.rank))
        # another world size: cut this rank's classes out of the saved shards
        get_logger().info("re-sharding the classifier from %d to %d ranks", found.world_size, self.env.world_size)
        states = [load_file(found.rank_file(r)) for r in range(found.world_size)]
        return reshard_state(states, *class_range(self.head))
