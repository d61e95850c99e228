"""The training loop: backbone (DDP) + class-sharded classifier head + margin loss, SGD, checkpoints.

``train(cfg)`` runs in one process or in each of ``torchrun``'s processes.
Rank ``r`` of ``W`` trains on its ``batch_size / W`` slice of every global
batch; the head all-gathers the embeddings and owns a contiguous block of the
classes; backbone gradients are summed over ranks, so ``W`` processes follow
the same trajectory as one process with the same global batch (up to
floating-point summation order, and BatchNorm statistics that DDP computes
per rank as arcface_torch does).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from easydict import EasyDict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fpr_plugin.cli_errors import UserError
from fpr_plugin.train import checkpoint as ckpt
from fpr_plugin.train.config import fill_from_records, to_plain
from fpr_plugin.train.environment import (
    RunEnvironment,
    allreduce_sum_hook,
    setup_environment,
    teardown_environment,
)
from fpr_plugin.train.monitor import GroupFprMeter, TrainingMonitor, get_logger
from fpr_plugin.train.sampler import GlobalBatchSampler
from fpr_plugin.train.schedule import StepDecaySchedule

__all__ = [
    "train",
    "build_model",
    "make_optimizer",
    "forward_loss",
    "backward_and_step",
    "init_head_rows",
    "derive_seed",
    "NonFiniteLossError",
    "OutputFolderError",
    "all_finite",
]

HEAD_INIT_BLOCK = 4096  # rows of the classifier initialised from one seed


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: a NaN/inf loss, embedding, gradient or weight; names the step and the last good checkpoint.

    Nothing is saved from the diverged step on. Exit status 1: the input was
    valid, the run failed (printed as one line, without a traceback).
    """

    exit_code = 1


class OutputFolderError(UserError):
    """The output folder holds another run (or cannot be used); the message says what to pass."""


def _all_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on every rank (one all-reduce when distributed), so all ranks agree."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_finite(tensors: list[torch.Tensor], device: torch.device | str = "cpu") -> bool:
    """True when every tensor is finite on every rank (one fused norm per call, one all-reduce)."""
    tensors = [t.detach() for t in tensors if t is not None and t.numel()]
    if not tensors:
        return _all_ranks(True, device)
    norms = torch._foreach_norm([t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors])
    return _all_ranks(bool(torch.isfinite(torch.stack(norms).sum())), tensors[0].device)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence), stable across processes and platforms."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def init_head_rows(weight: torch.Tensor, class_start: int, seed: int, std: float) -> None:
    """Fill a head shard (rows ``class_start ...`` of the full classifier) with N(0, std^2).

    Row blocks are drawn from seeds of (seed, block), so the full matrix is the
    same whatever the number of shards, and no rank draws more than it owns.
    """
    rows, dim = weight.shape
    end = class_start + rows
    with torch.no_grad():
        for block in range(class_start // HEAD_INIT_BLOCK, math.ceil(end / HEAD_INIT_BLOCK)):
            lo, hi = block * HEAD_INIT_BLOCK, (block + 1) * HEAD_INIT_BLOCK
            gen = torch.Generator().manual_seed(derive_seed(seed, 1, block))
            values = torch.randn(HEAD_INIT_BLOCK, dim, generator=gen) * std
            a, b = max(lo, class_start), min(hi, end)
            weight[a - class_start : b - class_start].copy_(values[a - lo : b - lo])


def backbone_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    """The recipe's backbone (a seam for tests; see fpr_plugin.backbones.backbone_from_config)."""
    from fpr_plugin.backbones import backbone_from_config as build

    return build(cfg)


def build_model(
    cfg: Mapping[str, Any], device: torch.device | str = "cpu"
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Backbone, classifier head and its margin loss for a resolved config, initialised from ``cfg.seed``.

    The head is class-sharded when torch.distributed is initialised with
    more than one process. ``cfg.num_classes`` must be set.
    """
    from fpr_plugin.heads import ClassifierHead
    from fpr_plugin.registry import build_loss

    if cfg["num_classes"] is None:
        raise ValueError("num_classes is not set: call fill_from_records(cfg) or --set num_classes=N")
    torch.manual_seed(cfg["seed"])
    backbone = backbone_from_config(cfg).to(device)
    loss = build_loss(cfg["loss"], **cfg["loss_params"])
    head = ClassifierHead(cfg["embedding_size"], cfg["num_classes"], loss).to(device)
    init_head_rows(head.weight, _class_start(head), cfg["seed"], cfg["head_init_std"])
    return backbone, head, loss


def _class_start(head: nn.Module) -> int:
    return int(getattr(head, "class_start", 0))


def _class_end(head: nn.Module) -> int:
    return int(getattr(head, "class_end", head.weight.shape[0]))


class _FlippedSamples(Dataset):
    """Reads ``(index, flip)`` items from a dataset without its own random flip."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = item
        image, label = self.dataset[index]
        return (image.flip(-1) if flip else image), label


def _amp_dtype(cfg: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    if not cfg["fp16"]:
        return None
    if device.type != "cuda":
        get_logger().warning("fp16=%r needs CUDA: this %s run trains in float32", cfg["fp16"], device.type)
        return None
    return torch.float16 if cfg["fp16"] == "fp16" else torch.bfloat16


def forward_loss(
    model: nn.Module,
    head: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Global-batch mean loss of one step: backbone (under autocast when ``amp_dtype``) then head in float32.

    Raises NonFiniteLossError("embeddings") when an embedding is NaN/inf on any rank.
    """
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        embeddings = model(images)
    if not all_finite([embeddings], images.device):
        raise NonFiniteLossError("embeddings")
    return head.training_loss(embeddings.float(), labels)


def backward_and_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    backbone: nn.Module,
    grad_clip: float | None = None,
    before_step: Callable[[], None] | None = None,
) -> None:
    """Backward pass, optional clipping of the backbone's gradient norm, ``before_step()``, optimizer step, zero grads."""
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(backbone.parameters(), grad_clip)
    if before_step is not None:
        try:
            before_step()
        except BaseException:
            optimizer.zero_grad(set_to_none=True)
            raise
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(cfg: Mapping[str, Any], backbone: nn.Module, head: nn.Module) -> torch.optim.SGD:
    """SGD over two parameter groups, backbone then head (the order checkpoints rely on)."""
    return torch.optim.SGD(
        [{"params": list(backbone.parameters())}, {"params": list(head.parameters())}],
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
    )


class _Run:
    """State of one training process; :meth:`fit` runs it."""

    def __init__(self, cfg: EasyDict, env: RunEnvironment, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.env = env
        self.overwrite = overwrite
        self.logger = get_logger()
        self.output = Path(cfg.output)

        from fpr_plugin.data.dataset import RecordDataset

        fill_from_records(cfg)
        self.sampler = GlobalBatchSampler(
            cfg.num_image,
            cfg.batch_size,
            rank=env.rank,
            world_size=env.world_size,
            seed=cfg.seed,
            random_flip=cfg.random_flip,
        )
        self.dataset = _FlippedSamples(RecordDataset(cfg.rec, random_flip=False))
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = cfg.num_epoch * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.plain_config = to_plain(cfg)

        self.backbone, self.head, self.loss_fn = build_model(cfg, env.device)
        self.optimizer = make_optimizer(cfg, self.backbone, self.head)
        num_backbone = len(self.optimizer.param_groups[0]["params"])
        self.head_param_ids = list(range(num_backbone, num_backbone + len(self.optimizer.param_groups[1]["params"])))
        self.schedule = StepDecaySchedule(
            self.optimizer,
            base_lr=cfg.lr,
            steps_per_epoch=self.steps_per_epoch,
            lr_steps=cfg.lr_steps,
            lr_decay=cfg.lr_decay,
            warmup_epoch=cfg.warmup_epoch,
        )
        self.amp_dtype = _amp_dtype(cfg, env.device)
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=self.amp_dtype == torch.float16)
        self.model = self.backbone
        if env.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.backbone, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
            self.model.register_comm_hook(None, allreduce_sum_hook)
        self.group_meter = self._group_meter()
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.resumed_from: int | None = None
        self.resume_note = ""  # logged once training.log is open
        self.last_saved: Path | None = None
        self.last_saved_step = -1

    # ---- set-up helpers ---------------------------------------------------------------------
    def _group_meter(self) -> GroupFprMeter | None:
        from fpr_plugin.data.record_set import read_groups

        groups = read_groups(self.cfg.rec)
        if not groups:
            return None
        names = sorted(set(groups.values()))
        class_to_group = torch.full((self.cfg.num_classes,), -1, dtype=torch.long)
        for class_id, name in groups.items():
            if 0 <= class_id < self.cfg.num_classes:
                class_to_group[class_id] = names.index(name)
        return GroupFprMeter(class_to_group.to(self.env.device), names)

    def _seed_rngs(self) -> None:
        seed = derive_seed(self.cfg.seed, 2, self.env.rank, self.global_step)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        import random

        random.seed(seed)

    # ---- checkpoints --------------------------------------------------------------------------
    def _state(self) -> dict:
        done = self.step_in_epoch
        epoch, step = (self.epoch + 1, 0) if done >= self.steps_per_epoch else (self.epoch, done)
        return {
            "format": 1,
            "backbone": self.backbone.state_dict(),
            "head": self.head.state_dict(),
            "head_shard": {
                "class_start": _class_start(self.head),
                "class_end": _class_end(self.head),
                "num_classes": self.cfg.num_classes,
            },
            "head_param_ids": self.head_param_ids,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "global_step": self.global_step,
            "rank": self.env.rank,
            "world_size": self.env.world_size,
            "rng": ckpt.rng_state(self.env.device),
            "sampler": self.sampler.state_dict(),
            "config": self.plain_config,
        }

    def save(self) -> None:
        """Save every rank's checkpoint, then (rank 0) model.pt, config.json and pruning."""
        if self.last_saved_step == self.global_step:
            return
        path = ckpt.checkpoint_path(self.output, self.global_step, self.env.rank, self.env.world_size)
        state = self._state()
        bad = ckpt.non_finite_entry({k: state[k] for k in ("backbone", "head", "optimizer")})
        if not _all_ranks(bad is None, self.env.device):  # never write a checkpoint holding NaN/inf
            raise NonFiniteLossError(self._divergence(
                f"values in the state to save ({bad or 'on another rank'})", self.global_step, saving=True))
        ckpt.save_file(state, path)
        if self.env.distributed:
            dist.barrier()
        if self.env.is_main:
            ckpt.write_model_and_config(self.output, self.backbone.state_dict(), self.plain_config)
            ckpt.prune_checkpoints(self.output, self.cfg.keep_checkpoints)
        self.last_saved, self.last_saved_step = path, self.global_step

    def _claim_output(self) -> None:
        """A fresh run (no ``resume``) may write into a folder only when it holds no other run's files.

        Checkpoints: refused unless ``overwrite`` (then the old run's files are removed).
        A ``config.json`` without checkpoints (a run stopped before its first save):
        continued from scratch when the settings match, refused unless ``overwrite``
        when they do not. Leftover ``metrics.jsonl`` lines of such a run are dropped.
        """
        found = ckpt.latest_checkpoint(self.output)
        config_file = self.output / "config.json"
        conflict = None
        if found is not None:
            conflict = (f"output {str(self.output)!r} already holds checkpoints (last at step {found.global_step}); "
                        "pass --resume to continue that run, --overwrite to replace it, or choose another output "
                        "with --set output=DIR")
        elif config_file.is_file():
            try:
                saved = json.loads(config_file.read_text(encoding="utf-8"))
                ckpt.check_compatible(saved, self.plain_config, str(config_file))
            except (ValueError, OSError) as exc:
                conflict = (f"output {str(self.output)!r} holds another run ({' '.join(str(exc).split())}); "
                            "pass --overwrite to replace it or choose another output with --set output=DIR")
        if conflict is not None and not self.overwrite:
            raise OutputFolderError(conflict)
        if self.env.is_main:
            if conflict is not None:
                self.logger.warning("--overwrite: removing the previous run's files in %s", self.output)
                shutil.rmtree(self.output / ckpt.CHECKPOINT_DIR, ignore_errors=True)
                for name in ("model.pt", "config.json", "metrics.jsonl"):
                    (self.output / name).unlink(missing_ok=True)
                shutil.rmtree(self.output / "tensorboard", ignore_errors=True)
            elif (self.output / "metrics.jsonl").is_file():
                self.logger.warning("dropping metrics.jsonl lines of an earlier run of these settings in %s "
                                    "that stopped before its first checkpoint", self.output)
            _truncate_metrics(self.output / "metrics.jsonl", 0)
            ckpt.write_config(self.output, self.plain_config)
        if self.env.distributed:
            dist.barrier()

    def resume_or_start(self) -> None:
        """Load the last intact checkpoint when ``resume``; refuse to overwrite another run otherwise."""
        if not self.cfg.resume:
            self._claim_output()
            self._init_backbone()
            self._seed_rngs()
            return
        found, state = self._load_last_intact()
        if found is None:
            self.logger.warning("resume: no complete checkpoint in %s, starting from scratch", self.output)
            if self.env.is_main:
                _truncate_metrics(self.output / "metrics.jsonl", 0)
            self._init_backbone()
            self._seed_rngs()
            return
        ckpt.check_compatible(state["config"], self.plain_config, str(found.folder))
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step"])
        self.global_step = int(state["global_step"])
        if found.world_size == self.env.world_size:
            ckpt.set_rng_state(state["rng"], self.env.device)
        else:
            self._seed_rngs()
        self.resumed_from = self.global_step
        self.last_saved_step = self.global_step
        self.last_saved = found.rank_file(min(self.env.rank, found.world_size - 1))
        if self.env.is_main:
            _truncate_metrics(self.output / "metrics.jsonl", self.global_step)
        self.resume_note = (f"resumed from {found.folder} (world size {found.world_size}): epoch {self.epoch}, "
                            f"step {self.step_in_epoch}, global step {self.global_step}")

    def _init_backbone(self) -> None:
        """A fresh run: load ``init_backbone`` (pretrained weights) into the backbone when it is set."""
        if not self.cfg.get("init_backbone"):
            return
        from fpr_plugin.backbones.pretrained import load_init_backbone

        load_init_backbone(self.backbone, self.cfg.init_backbone, self.cfg)
        self.logger.info("initialised the backbone from init_backbone %s", self.cfg.init_backbone)

    def _load_last_intact(self) -> tuple[ckpt.CompleteCheckpoint | None, dict | None]:
        """The newest complete save that loads (and is finite) on every rank; damaged newer ones are skipped."""
        candidates = ckpt.complete_checkpoints(self.output)
        for found in reversed(candidates):
            state, problem = None, None
            try:
                state = self._load_for_this_rank(found)
                bad = ckpt.non_finite_entry({k: state.get(k) for k in ("backbone", "head")})
                if bad is not None:
                    problem = f"weight {bad!r} is not finite"
            except ckpt.CheckpointError as exc:
                problem = str(exc)
            except (KeyError, TypeError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if _all_ranks(problem is None, self.env.device):
                return found, state
            older = [c for c in candidates if c.global_step < found.global_step]
            self.logger.warning(
                "resume: skipping the damaged checkpoint %s (%s); %s", found.folder,
                problem or "damaged on another rank",
                f"trying the previous one, {older[-1].folder}" if older else "no older checkpoint is left")
        return None, None

    def _load_for_this_rank(self, found: ckpt.CompleteCheckpoint) -> dict:
        if found.world_size == self.env.world_size:
            return ckpt.load_file(found.rank_file(self.env.rank))
        # Another world size: cut this rank's classes out of the saved shards.
        self.logger.info("re-sharding the classifier from %d to %d ranks", found.world_size, self.env.world_size)
        states = [ckpt.load_file(found.rank_file(r)) for r in range(found.world_size)]
        return ckpt.reshard_state(states, _class_start(self.head), _class_end(self.head))

    # ---- the loop -----------------------------------------------------------------------------
    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        cuda = self.env.device.type == "cuda"
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler.epoch(epoch, start_step),
            num_workers=self.cfg.num_workers,
            pin_memory=cuda,
            # a private generator, so creating a loader never consumes the global torch RNG
            generator=torch.Generator().manual_seed(derive_seed(self.cfg.seed, 3, epoch, start_step)),
            persistent_workers=False,
        )

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        device = self.env.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        lr = self.schedule.apply(self.global_step)
        step = self.global_step + 1
        try:
            loss = forward_loss(self.model, self.head, images, labels, self.amp_dtype)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(self._divergence(f"{exc}", step)) from None
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(self._divergence(f"loss {value}", step))

        def check_gradients() -> None:
            if self.scaler.is_enabled():  # fp16: the scaler skips steps with inf gradients itself
                return
            grads = [p.grad for group in self.optimizer.param_groups for p in group["params"]]
            if not all_finite(grads, device):
                raise NonFiniteLossError(self._divergence("gradient", step))

        backward_and_step(loss, self.optimizer, self.scaler, self.backbone, self.cfg.grad_clip, check_gradients)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if not all_finite(params, device):
            raise NonFiniteLossError(self._divergence("weights after the optimizer step", step))
        self._record_groups(labels)
        self._last_lr = lr
        return value

    def _divergence(self, what: str, step: int, saving: bool = False) -> str:
        """The message of a diverged run: what, the step, the last good checkpoint, what to try."""
        where = f"epoch {self.epoch}, step {self.step_in_epoch} of the epoch, global step {step}"
        kept = (f"the last good checkpoint is {self.last_saved}" if self.last_saved
                else "no checkpoint was saved yet")
        done = "nothing was saved" if saving else "nothing was saved from this step on"
        return (f"training diverged: non-finite {what} at {where}; {kept}; {done} "
                f"(lower lr, check the data, or use fp16=False, then --resume)")

    def _record_groups(self, labels: torch.Tensor) -> None:
        if self.group_meter is None or self.loss_fn is None:
            return
        fpr = getattr(self.loss_fn, "last_instance_fpr", None)
        if fpr is None:
            return
        if fpr.shape[0] != labels.shape[0] and self.env.distributed:
            gathered = [torch.empty_like(labels) for _ in range(self.env.world_size)]
            dist.all_gather(gathered, labels)
            labels = torch.cat(gathered)
        if fpr.shape[0] == labels.shape[0]:
            self.group_meter.update(fpr, labels)

    def _log(self, monitor: TrainingMonitor, loss: float) -> None:
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "loss": loss,
            "lr": self._last_lr,
        }
        stats = getattr(self.loss_fn, "last_stats", None) or {}
        record.update({k: float(v) for k, v in stats.items()})
        if self.group_meter is not None:
            record.update(self.group_meter.summary())
        monitor.log(record)

    def fit(self) -> dict:
        """Train from the current state to ``total_steps``; returns a summary."""
        cfg = self.cfg
        lock = self._lock_output()
        try:
            return self._fit_locked()
        finally:
            if lock is not None:
                lock.release()

    def _lock_output(self):
        """Rank 0 takes ``<output>/.fpr.lock``; every rank fails together when it cannot."""
        from fpr_plugin.atomic import clean_stale_temporaries
        from fpr_plugin.run_lock import OutputLock

        lock, error = None, None
        if self.env.is_main:
            try:
                lock = OutputLock(self.output, "fpr-train").acquire()
                for folder in (self.output, *self.output.glob(f"{ckpt.CHECKPOINT_DIR}/step_*")):
                    for left in clean_stale_temporaries(folder):
                        self.logger.info("removed %s, left by an interrupted run", left)
            except UserError as exc:
                error = exc
        if not _all_ranks(error is None, self.env.device):
            raise error or OutputFolderError(f"output {self.output}: rank 0 could not take its lock")
        return lock

    def _fit_locked(self) -> dict:
        cfg = self.cfg
        self.resume_or_start()
        monitor = TrainingMonitor(
            self.output,
            is_main=self.env.is_main,
            total_steps=self.total_steps,
            start_step=self.global_step,
            global_batch=cfg.batch_size,
            use_tensorboard=cfg.tensorboard,
        )
        self._log_start()
        last_loss = float("nan")
        start = time.perf_counter()
        self.model.train()
        self.head.train()
        try:
            while self.global_step < self.total_steps and self.epoch < cfg.num_epoch:
                loader = self._loader(self.epoch, self.step_in_epoch)
                for images, labels in loader:
                    last_loss = self._train_step(images, labels)
                    self.global_step += 1
                    self.step_in_epoch += 1
                    monitor.step(last_loss)
                    if self.global_step % cfg.frequent == 0 or self.global_step == self.total_steps:
                        self._log(monitor, last_loss)
                    if cfg.save_every and self.global_step % cfg.save_every == 0:
                        self.save()
                    if self.global_step >= self.total_steps:
                        break
                if self.step_in_epoch >= self.steps_per_epoch:
                    self.save()
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.save()
        finally:
            monitor.close()
        summary = {
            "output": str(self.output),
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "last_loss": last_loss,
            "world_size": self.env.world_size,
            "resumed_from": self.resumed_from,
            "checkpoint": str(self.last_saved) if self.last_saved else None,
            "seconds": time.perf_counter() - start,
        }
        self.logger.info("finished: %s", summary)
        return summary

    def _log_start(self) -> None:
        cfg, env = self.cfg, self.env
        self.logger.info(
            "recipe %s, loss %s %s, network %s, %d classes, %d images, %d steps/epoch x %d epochs "
            "(%d steps to run), global batch %d = %d ranks x %d, device %s, backend %s",
            cfg.recipe, cfg.loss, cfg.loss_params, cfg.network, cfg.num_classes, cfg.num_image,
            self.steps_per_epoch, cfg.num_epoch, self.total_steps - self.global_step, cfg.batch_size,
            env.world_size, self.sampler.local_batch, env.device, env.backend or "none",
        )
        if self.resume_note:
            self.logger.info("%s", self.resume_note)
        if cfg.get("loss_params_skipped"):
            self.logger.info(
                "loss_params %s are not parameters of %s: not passed to it",
                ", ".join(cfg.loss_params_skipped), cfg.loss,
            )


def _truncate_metrics(path: Path, global_step: int) -> None:
    """Drop metrics records after ``global_step`` (from the interrupted part of a run)."""
    import json

    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("global_step", 0) <= global_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    ckpt.atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in kept), encoding="utf-8"))


def train(cfg: Mapping[str, Any], overwrite: bool = False) -> dict:
    """Train with a resolved config (see :func:`fpr_plugin.train.config.load_config`); returns a summary.

    Runs in one process, or in every process of a ``torchrun`` launch (the
    process group is created from the environment and destroyed at the end).
    ``overwrite`` lets a fresh run replace another run's files in ``cfg.output``.
    """
    cfg = EasyDict(to_plain(cfg))
    env = setup_environment()
    try:
        return _Run(cfg, env, overwrite=overwrite).fit()
    finally:
        teardown_environment(env)
