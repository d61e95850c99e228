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

import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from easydict import EasyDict
from torch import nn
from torch.utils.data import DataLoader

from fpr_plugin.backbones import backbone_from_config
from fpr_plugin.cli_errors import UserError
from fpr_plugin.data.dataset import RecordSet
from fpr_plugin.train.checkpoint import CompleteCheckpoint, NonFiniteStateError, TrainState
from fpr_plugin.train.config import to_plain
from fpr_plugin.train.environment import (
    RunEnvironment,
    all_ranks,
    allreduce_sum_hook,
    setup_environment,
    teardown_environment,
)
from fpr_plugin.train.monitor import METRICS_NAME, GroupFprMeter, TrainingMonitor, get_logger, truncate_metrics
from fpr_plugin.train.output_folder import OutputFolderError, claim_output, lock_output
from fpr_plugin.train.sampler import FlippedSamples, GlobalBatchSampler
from fpr_plugin.train.schedule import StepDecaySchedule

BackboneBuilder = Callable[[Mapping[str, Any]], nn.Module]

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


def all_finite(tensors: list[torch.Tensor], device: torch.device | str = "cpu") -> bool:
    """True when every floating-point tensor is finite on every rank (one fused max-norm, one all-reduce).

    The max-norm of a tensor is NaN/inf exactly when an entry is, and never
    overflows for finite entries (an L2 norm of large finite weights can).
    """
    tensors = [t.detach() for t in tensors if t is not None and t.numel() and t.is_floating_point()]
    if not tensors:
        return all_ranks(True, device)
    norms = torch._foreach_norm([t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors],
                                float("inf"))
    return all_ranks(bool(torch.isfinite(torch.stack(norms)).all()), tensors[0].device)


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


def build_model(
    cfg: Mapping[str, Any], device: torch.device | str = "cpu", build_backbone: BackboneBuilder | None = None
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Backbone, classifier head and its margin loss for a resolved config, initialised from ``cfg.seed``.

    ``build_backbone(cfg)`` makes the backbone (default
    :func:`fpr_plugin.backbones.backbone_from_config`). The head is class-sharded
    when torch.distributed is initialised with more than one process; its rows are
    drawn by :func:`init_head_rows`. ``cfg.num_classes`` must be set.
    """
    from fpr_plugin.heads import ClassifierHead
    from fpr_plugin.registry import build_loss

    if cfg["num_classes"] is None:
        raise ValueError("num_classes is not set: call fill_from_records(cfg) or --set num_classes=N")
    torch.manual_seed(cfg["seed"])
    backbone = (build_backbone or backbone_from_config)(cfg).to(device)
    loss = build_loss(cfg["loss"], **cfg["loss_params"])

    def weight_init(rows: torch.Tensor, class_start: int) -> None:
        init_head_rows(rows, class_start, cfg["seed"], cfg["head_init_std"])

    head = ClassifierHead(cfg["embedding_size"], cfg["num_classes"], loss, weight_init=weight_init).to(device)
    return backbone, head, loss


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


def seed_rngs(seed: int) -> None:
    """Seed the torch, numpy and Python generators of this process from one 63-bit seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def divergence_message(state: TrainState, what: str, saving: bool = False) -> str:
    """The message of a diverged run: what, the step (the one running, or the save's), the last good checkpoint.

    The advice is to train again: ``--resume`` keeps the settings, so it would repeat the same steps.
    """
    running = 0 if saving else 1  # the counters hold the steps done
    where = (f"epoch {state.epoch}, step {state.step_in_epoch + running} of the epoch, "
             f"global step {state.global_step + running}")
    kept = f"the last good checkpoint is {state.last_saved}" if state.last_saved else "no checkpoint was saved yet"
    done = "nothing was saved" if saving else "nothing was saved from this step on"
    return (f"training diverged: non-finite {what} at {where}; {kept}; {done} (lower lr, check the data, or use "
            "fp16=False, and train again with --overwrite or into another output; --resume would repeat these steps)")


def _data_parallel(backbone: nn.Module, env: RunEnvironment) -> nn.Module:
    """The backbone under DDP with summed gradients when there are several processes, else itself."""
    if not env.distributed:
        return backbone
    model = nn.parallel.DistributedDataParallel(
        backbone, device_ids=[env.device.index] if env.device.type == "cuda" else None
    )
    model.register_comm_hook(None, allreduce_sum_hook)
    return model


class _Run:
    """One training process: set up from the config in ``__init__``, then :meth:`fit` runs the loop."""

    def __init__(self, cfg: EasyDict, env: RunEnvironment, overwrite: bool = False,
                 build_backbone: BackboneBuilder | None = None) -> None:
        self.cfg, self.env, self.overwrite = cfg, env, overwrite
        self.logger = get_logger()
        self.output = Path(cfg.output)
        records = RecordSet.open(cfg.rec, check_labels=cfg.check_labels)
        cfg.num_classes, cfg.num_image = records.resolve_counts(cfg.num_classes, cfg.num_image)
        self.sampler = GlobalBatchSampler(cfg.num_image, cfg.batch_size, rank=env.rank, world_size=env.world_size,
                                          seed=cfg.seed, random_flip=cfg.random_flip)
        self.dataset = FlippedSamples(records.dataset)
        steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = cfg.num_epoch * steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        backbone, head, self.loss_fn = build_model(cfg, env.device, build_backbone)
        optimizer = make_optimizer(cfg, backbone, head)
        self.schedule = StepDecaySchedule(optimizer, base_lr=cfg.lr, steps_per_epoch=steps_per_epoch,
                                          lr_steps=cfg.lr_steps, lr_decay=cfg.lr_decay, warmup_epoch=cfg.warmup_epoch)
        self.amp_dtype = _amp_dtype(cfg, env.device)
        scaler = torch.amp.GradScaler(env.device.type, enabled=self.amp_dtype == torch.float16)
        self.state = TrainState(backbone, head, optimizer, scaler, to_plain(cfg), env=env,
                                steps_per_epoch=steps_per_epoch)
        self.model = _data_parallel(backbone, env)
        # per-group instance FPR of the loss's signal, and of the pair form when a margin loss measures it
        self.group_meters = [meter for meter in (
            GroupFprMeter.from_groups(records.groups, cfg.num_classes, env.device),
            GroupFprMeter.from_groups(records.groups, cfg.num_classes, env.device,
                                      source="last_pair_instance_fpr", prefix="pairs_")) if meter is not None]
        self.resumed: CompleteCheckpoint | None = None  # the checkpoint this run resumed from
        self.last_lr = float("nan")

    # ---- set-up: the output folder, then a fresh start or a resume -----------------------------
    def _start_or_resume(self) -> None:
        """A fresh run claims the output; ``resume`` loads the last intact checkpoint (a fresh start without one)."""
        cfg, state, found = self.cfg, self.state, None
        if not cfg.resume:
            claim_output(self.output, state.config, overwrite=self.overwrite, env=self.env)
        else:
            found = state.resume(self.output)
            if found is None:
                self.logger.warning("resume: no complete checkpoint in %s, starting from scratch", self.output)
                self._load_init_backbone()
            if self.env.is_main:
                truncate_metrics(self.output / METRICS_NAME, state.global_step)
        if found is None or found.world_size != self.env.world_size:  # no saved RNG states for this rank
            seed_rngs(derive_seed(cfg.seed, 2, self.env.rank, state.global_step))
        self.resumed = found

    def _load_init_backbone(self) -> None:
        """Pretrained weights (``init_backbone``) into the backbone, for a fresh start only."""
        if self.cfg.get("init_backbone"):
            from fpr_plugin.backbones.pretrained import load_init_backbone

            load_init_backbone(self.state.backbone, self.cfg.init_backbone, self.cfg)
            self.logger.info("initialised the backbone from init_backbone %s", self.cfg.init_backbone)

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train from the current state to ``total_steps`` under the output's lock; returns a summary."""
        if not self.cfg.resume:
            self._load_init_backbone()  # before the output is locked and claimed: a bad file leaves nothing
        lock = lock_output(self.output, self.env)
        try:
            self._start_or_resume()
            return self._loop()
        finally:
            if lock is not None:
                lock.release()

    def _loop(self) -> dict:
        cfg, state = self.cfg, self.state
        monitor = TrainingMonitor(self.output, is_main=self.env.is_main, total_steps=self.total_steps,
                                  start_step=state.global_step, global_batch=cfg.batch_size,
                                  use_tensorboard=cfg.tensorboard)
        self._log_start()
        last_loss, start = float("nan"), time.perf_counter()
        self.model.train()
        state.head.train()
        try:
            while state.global_step < self.total_steps and state.epoch < cfg.num_epoch:
                for images, labels in self._loader(state.epoch, state.step_in_epoch):
                    last_loss = self._train_step(images, labels)
                    state.global_step += 1
                    state.step_in_epoch += 1
                    monitor.step(last_loss)
                    if state.global_step % cfg.frequent == 0 or state.global_step == self.total_steps:
                        monitor.log(self._record(last_loss))
                    if cfg.save_every and state.global_step % cfg.save_every == 0:
                        self._save()
                    if state.global_step >= self.total_steps:
                        break
                if state.step_in_epoch >= self.sampler.steps_per_epoch:
                    self._save()
                    state.epoch, state.step_in_epoch = state.epoch + 1, 0
            self._save()
        finally:
            monitor.close()
        summary = {
            "output": str(self.output), "global_step": state.global_step, "total_steps": self.total_steps,
            "steps_per_epoch": self.sampler.steps_per_epoch, "epoch": state.epoch, "last_loss": last_loss,
            "world_size": self.env.world_size, "resumed_from": self.resumed and self.resumed.global_step,
            "checkpoint": str(state.last_saved) if state.last_saved else None,
            "seconds": time.perf_counter() - start,
        }
        self.logger.info("finished: %s", summary)
        return summary

    def _loader(self, epoch: int, start_step: int) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler.epoch(epoch, start_step),
            num_workers=self.cfg.num_workers,
            pin_memory=self.env.device.type == "cuda",
            # a private generator, so creating a loader never consumes the global torch RNG
            generator=torch.Generator().manual_seed(derive_seed(self.cfg.seed, 3, epoch, start_step)),
            persistent_workers=False,
        )

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimisation step; NonFiniteLossError (naming the step) on a NaN/inf loss, gradient or weight."""
        state, device = self.state, self.env.device
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        self.last_lr = self.schedule.apply(state.global_step)
        try:
            loss = forward_loss(self.model, state.head, images, labels, self.amp_dtype)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(divergence_message(self.state, f"{exc}")) from None
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(divergence_message(self.state, f"loss {value}"))
        params = [p for group in state.optimizer.param_groups for p in group["params"]]

        def check_gradients() -> None:
            # fp16: the scaler skips steps with inf gradients itself
            if not state.scaler.is_enabled() and not all_finite([p.grad for p in params], device):
                raise NonFiniteLossError(divergence_message(self.state, "gradient"))

        backward_and_step(loss, state.optimizer, state.scaler, state.backbone, self.cfg.grad_clip, check_gradients)
        # the buffers too: BatchNorm's running statistics can overflow while the batch statistics stay finite
        if not all_finite(params + list(state.backbone.buffers()) + list(state.head.buffers()), device):
            raise NonFiniteLossError(divergence_message(self.state, "weights or buffers after the step"))
        for meter in self.group_meters:
            meter.update_from_loss(self.loss_fn, labels)
        return value

    def _save(self) -> None:
        try:
            self.state.save(self.output, self.cfg.keep_checkpoints)
        except NonFiniteStateError as exc:  # never write a checkpoint holding NaN/inf
            raise NonFiniteLossError(divergence_message(
                self.state, f"values in the state to save ({exc})", saving=True)) from None

    def _record(self, loss: float) -> dict[str, Any]:
        """The metrics record of this step: loss, lr, the loss's statistics, per-group FPR."""
        record: dict[str, Any] = {"epoch": self.state.epoch, "global_step": self.state.global_step,
                                  "loss": loss, "lr": self.last_lr}
        record.update({k: float(v) for k, v in (getattr(self.loss_fn, "last_stats", None) or {}).items()})
        for meter in self.group_meters:
            record.update(meter.summary())
        return record

    def _log_start(self) -> None:
        cfg, env = self.cfg, self.env
        self.logger.info(
            "recipe %s, loss %s %s, network %s, %d classes, %d images, %d steps/epoch x %d epochs "
            "(%d steps to run), global batch %d = %d ranks x %d, device %s, backend %s",
            cfg.recipe, cfg.loss, cfg.loss_params, cfg.network, cfg.num_classes, cfg.num_image,
            self.sampler.steps_per_epoch, cfg.num_epoch, self.total_steps - self.state.global_step, cfg.batch_size,
            env.world_size, self.sampler.local_batch, env.device, env.backend or "none",
        )
        if self.resumed is not None:  # training.log is open now
            self.logger.info("resumed from %s (world size %d): epoch %d, step %d, global step %d", self.resumed.folder,
                             self.resumed.world_size, self.state.epoch, self.state.step_in_epoch, self.state.global_step)
        if cfg.get("loss_params_skipped"):
            self.logger.info("loss_params %s are not parameters of %s: not passed to it",
                             ", ".join(cfg.loss_params_skipped), cfg.loss)


def train(cfg: Mapping[str, Any], overwrite: bool = False, *, build_backbone: BackboneBuilder | None = None) -> dict:
    """Train with a resolved config (see :func:`fpr_plugin.train.config.load_config`); returns a summary.

    Runs in one process, or in every process of a ``torchrun`` launch (the
    process group is created from the environment and destroyed at the end).
    ``overwrite`` lets a fresh run replace another run's files in ``cfg.output``;
    ``build_backbone(cfg)`` replaces the backbone built from the config by name.
    """
    cfg = EasyDict(to_plain(cfg))
    env = setup_environment()
    try:
        return _Run(cfg, env, overwrite=overwrite, build_backbone=build_backbone).fit()
    finally:
        teardown_environment(env)
