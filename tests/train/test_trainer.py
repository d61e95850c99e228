"""The training loop on a tiny IResNet and an easy record set: learning, checkpoints, exact resume."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from fpr_plugin.model_file import non_finite_entry
from fpr_plugin.train import trainer
from fpr_plugin.train.checkpoint import latest_checkpoint, load_file
from fpr_plugin.train.config import load_config


def _cfg(recipe: Path, out: Path, loss: str = "cosface", *sets: str):
    return load_config(recipe, loss=loss, overrides=[f"output={out}", *sets])


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {r["global_step"]: r["loss"] for r in records}


def _patch_training_loss(monkeypatch, at_call: int, action):
    """Make the head's training_loss misbehave at its ``at_call``-th call (1-based)."""
    build = trainer.build_model

    def build_model(cfg, device="cpu", build_backbone=None):
        backbone, head, loss = build(cfg, device, build_backbone)
        original, calls = head.training_loss, [0]

        def training_loss(embeddings, labels):
            calls[0] += 1
            value = original(embeddings, labels)
            return action(value) if calls[0] == at_call else value

        head.training_loss = training_loss
        return backbone, head, loss

    monkeypatch.setattr(trainer, "build_model", build_model)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["cosface", "fpr_penalty"])
def test_loss_falls_on_an_easy_set(tiny_recipe, tmp_path, loss):
    out = tmp_path / loss
    summary = trainer.train(_cfg(tiny_recipe, out, loss, "num_epoch=50", "lr_steps=[40]", "frequent=5"))
    assert summary["global_step"] == 200 == summary["total_steps"]
    losses = _losses(out)
    first, last = losses[5], sum(losses[s] for s in range(160, 201, 5)) / 9
    assert last < 0.2 * first, (first, last)
    if loss == "fpr_penalty":
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        for key in ("threshold", "instance_fpr_mean", "instance_fpr_max", "penalty_mean",
                    "group_fpr_mean/A", "group_fpr_mean/B", "group_above_share/A", "group_sample_share/B"):
            assert key in record, key
        assert record["instance_fpr_max"] >= record["instance_fpr_mean"] >= 0


def test_a_margin_loss_logs_both_training_signals_per_group(tiny_recipe, tmp_path):
    """CosFace with stats_gamma_u and stats_pairs_gamma_u logs the class form and the pair form, per group."""
    out = tmp_path / "stats"
    trainer.train(_cfg(tiny_recipe, out, "cosface", "num_epoch=1", "loss_params.stats_gamma_u=0.02",
                       "loss_params.stats_pairs_gamma_u=0.05"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records
    for record in records:
        for prefix in ("", "pairs_"):
            shares = [record[f"{prefix}group_above_share/{g}"] for g in ("A", "B")]
            assert all(0.0 <= v <= 1.0 for v in shares) and sum(shares) == pytest.approx(1.0)
            assert record[f"{prefix}group_sample_share/A"] + record[f"{prefix}group_sample_share/B"] == pytest.approx(1.0)
        # two measurements, not one copied: their thresholds are of different cosines (weights, pairs)
        assert record["pairs_k"] != record["k"] and record["pairs_threshold"] != record["threshold"]
        assert record["penalty_mean"] == 0.0 and "pairs_penalty_mean" not in record


def test_outputs_and_checkpoint_contents(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    trainer.train(_cfg(tiny_recipe, out, "fpr_penalty", "max_steps=6", "save_every=5"))
    found = latest_checkpoint(out)
    assert (found.global_step, found.world_size) == (6, 1)
    state = load_file(found.rank_file(0))  # weights_only=True
    for key in ("backbone", "head", "optimizer", "scaler", "epoch", "step", "rng", "config"):
        assert key in state, key
    for key in ("format", "sampler", "scheduler"):  # dead state: never read back
        assert key not in state, key
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 2, 6)  # 4 steps per epoch
    assert state["config"]["loss"] == "fpr_penalty" and state["config"]["num_classes"] == 8
    model = torch.load(out / "model.pt", weights_only=True)
    assert model.keys() == state["backbone"].keys() and not any(k.startswith("module.") for k in model)
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "tiny" and config["loss_params"]["gamma_u"] == 1e-2
    assert config["backbone_params"] == {"width": 4, "stem_stride": 2}
    assert "loss 0." in (out / "training.log").read_text() or "loss 1" in (out / "training.log").read_text()


def test_crash_and_resume_gives_the_same_losses(tiny_recipe, tmp_path, monkeypatch):
    sets = ("max_steps=11", "save_every=3", "keep_checkpoints=5")  # 4 steps per epoch: resumes mid-epoch
    reference = tmp_path / "reference"
    trainer.train(_cfg(tiny_recipe, reference, "fpr_penalty", *sets))

    crashed = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        def crash(value):
            raise KeyboardInterrupt("simulated kill")

        _patch_training_loss(patch, 8, crash)  # after the save at step 6
        with pytest.raises(KeyboardInterrupt):
            # loader worker processes must not change the data order or the flips
            trainer.train(_cfg(tiny_recipe, crashed, "fpr_penalty", *sets, "num_workers=2"))
    assert latest_checkpoint(crashed).global_step == 6
    summary = trainer.train(_cfg(tiny_recipe, crashed, "fpr_penalty", *sets, "resume=True"))
    assert summary["resumed_from"] == 6 and summary["global_step"] == 11
    expected, got = _losses(reference), _losses(crashed)
    assert sorted(got) == list(range(1, 12))
    assert [got[s] for s in range(1, 12)] == pytest.approx([expected[s] for s in range(1, 12)], rel=1e-6, abs=1e-7)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    _patch_training_loss(monkeypatch, 7, lambda value: value * float("nan"))
    out = tmp_path / "nan"
    with pytest.raises(trainer.NonFiniteLossError, match=r"global step 7; the last good checkpoint is .*step_00000005"):
        trainer.train(_cfg(tiny_recipe, out, "cosface", "save_every=5"))
    found = latest_checkpoint(out)
    assert found.global_step == 5 and load_file(found.rank_file(0))["global_step"] == 5
    assert (out / "model.pt").is_file()
    # the kept checkpoint is finite and resumes (the recipe's sane lr 0.1) to the end with finite losses
    assert non_finite_entry(load_file(found.rank_file(0))) is None
    monkeypatch.undo()
    summary = trainer.train(_cfg(tiny_recipe, out, "cosface", "save_every=5", "resume=True"))
    assert (summary["resumed_from"], summary["global_step"]) == (5, 16)
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 17)) and all(math.isfinite(v) for v in losses.values())


def test_a_diverging_run_stops_naming_the_step_and_keeps_a_finite_resumable_checkpoint(tiny_recipe, tmp_path):
    out = tmp_path / "diverged"
    sets = ("lr=1e6", "save_every=1", "max_steps=12")
    with pytest.raises(trainer.NonFiniteLossError) as stopped:
        trainer.train(_cfg(tiny_recipe, out, "cosface", *sets))
    match = re.search(r"training diverged: non-finite .* at epoch \d+, step \d+ of the epoch, global step (\d+); "
                      r"the last good checkpoint is (\S+step_(\d+)\S+\.pt);", str(stopped.value))
    assert match, stopped.value
    step, last_good, kept = int(match.group(1)), Path(match.group(2)), int(match.group(3))
    assert 1 < step < 12 and kept == step - 1  # a save every step: the one before the divergence is kept
    found = latest_checkpoint(out)
    assert found.global_step == kept and found.rank_file(0) == last_good
    assert non_finite_entry(load_file(last_good)) is None  # weights, optimizer, everything in it
    assert non_finite_entry(torch.load(out / "model.pt", weights_only=True)) is None
    assert "--resume would repeat these steps" in str(stopped.value)

    # --resume loads it, and the same settings diverge again at the same step (the run is deterministic)
    with pytest.raises(trainer.NonFiniteLossError, match=f"global step {step}; the last good checkpoint is {last_good}"):
        trainer.train(_cfg(tiny_recipe, out, "cosface", *sets, "resume=True"))
    assert f"resumed from {found.folder} (world size 1): " in (out / "training.log").read_text()
    assert latest_checkpoint(out).global_step == kept


def test_overflowing_batchnorm_statistics_stop_the_step_that_overflows(tiny_recipe, tmp_path, monkeypatch):
    """Running statistics are checked each step too, not only when a checkpoint is about to be written."""
    seen = {}
    original = trainer.backward_and_step

    def backward_and_step(loss, optimizer, scaler, backbone, grad_clip=None, before_step=None):
        original(loss, optimizer, scaler, backbone, grad_clip, before_step)
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 3:
            next(m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("inf"))

    monkeypatch.setattr(trainer, "backward_and_step", backward_and_step)
    out = tmp_path / "bn"
    with pytest.raises(trainer.NonFiniteLossError,
                       match=r"weights or buffers after the step at epoch 0, step 3 of the epoch, global step 3; "
                             r"the last good checkpoint is .*step_00000002"):
        trainer.train(_cfg(tiny_recipe, out, "cosface", "save_every=2"))
    assert latest_checkpoint(out).global_step == 2


def test_checkpoints_with_the_old_dead_entries_still_resume(tiny_recipe, tmp_path):
    reference = tmp_path / "reference"
    trainer.train(_cfg(tiny_recipe, reference, "cosface", "max_steps=4"))
    out = tmp_path / "old"
    trainer.train(_cfg(tiny_recipe, out, "cosface", "max_steps=2"))
    path = latest_checkpoint(out).rank_file(0)
    state = load_file(path)
    # what earlier versions also wrote, and nothing read back
    state.update(format=1, sampler={"num_samples": 64, "global_batch": 16, "world_size": 1, "rank": 0, "seed": 0,
                                    "random_flip": True},
                 scheduler={"global_step": 2, "base_lr": 0.1, "steps_per_epoch": 4, "lr_steps": [3.0],
                            "lr_decay": 0.1, "warmup_epoch": 0.0})
    torch.save(state, path)
    summary = trainer.train(_cfg(tiny_recipe, out, "cosface", "max_steps=4", "resume=True"))
    assert (summary["resumed_from"], summary["global_step"]) == (2, 4)
    expected, got = _losses(reference), _losses(out)
    assert [got[s] for s in range(1, 5)] == pytest.approx([expected[s] for s in range(1, 5)], rel=1e-6, abs=1e-7)


def test_resume_refuses_another_recipe_setting(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    trainer.train(_cfg(tiny_recipe, out, "cosface", "max_steps=2"))
    with pytest.raises(trainer.OutputFolderError, match="pass --resume to continue that run"):
        trainer.train(_cfg(tiny_recipe, out, "cosface", "max_steps=4"))
    with pytest.raises(ValueError, match=r"key 'lr' was 0.1 there and is 0.05"):
        trainer.train(_cfg(tiny_recipe, out, "cosface", "max_steps=4", "lr=0.05", "resume=True"))
    with pytest.raises(ValueError, match=r"key 'loss' was 'cosface' there and is 'fpr_penalty'"):
        trainer.train(_cfg(tiny_recipe, out, "fpr_penalty", "max_steps=4", "resume=True"))
    summary = trainer.train(_cfg(tiny_recipe, out, "cosface", "max_steps=4", "resume=True"))
    assert (summary["resumed_from"], summary["global_step"]) == (2, 4)


def test_missing_record_folder(tiny_recipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="rec=.*missing"):
        trainer.train(_cfg(tiny_recipe, tmp_path / "o", "cosface", f"rec={tmp_path / 'missing'}"))


def test_head_initialisation_does_not_depend_on_sharding():
    full = torch.empty(10000, 3)
    trainer.init_head_rows(full, 0, seed=5, std=0.01)
    for start, end in [(0, 3333), (3333, 6666), (6666, 10000)]:
        shard = torch.empty(end - start, 3)
        trainer.init_head_rows(shard, start, seed=5, std=0.01)
        assert torch.equal(shard, full[start:end])
    assert 0.009 < full.std().item() < 0.011


def test_build_model_draws_the_head_once_from_its_own_seeds(tiny_recipe, tmp_path):
    from fpr_plugin.backbones import backbone_from_config

    cfg = _cfg(tiny_recipe, tmp_path / "o", "cosface", "num_classes=8", "seed=3")
    torch.manual_seed(3)
    backbone_from_config(cfg)
    after_backbone = torch.get_rng_state()
    backbone, head, _ = trainer.build_model(cfg)
    assert torch.equal(torch.get_rng_state(), after_backbone)  # the head drew nothing from the global generator
    expected = torch.empty(8, 16)
    trainer.init_head_rows(expected, 0, seed=3, std=cfg.head_init_std)
    assert torch.equal(head.weight.detach(), expected)
    built = []
    trainer.build_model(cfg, build_backbone=lambda c: built.append(c) or torch.nn.Identity())
    assert built == [cfg]
