"""The training loop on a tiny IResNet and an easy record set: learning, checkpoints, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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

    def build_model(cfg, device="cpu"):
        backbone, head, loss = build(cfg, device)
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


def test_outputs_and_checkpoint_contents(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    trainer.train(_cfg(tiny_recipe, out, "fpr_penalty", "max_steps=6", "save_every=5"))
    found = latest_checkpoint(out)
    assert (found.global_step, found.world_size) == (6, 1)
    state = load_file(found.rank_file(0))  # weights_only=True
    for key in ("backbone", "head", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "sampler", "config"):
        assert key in state, key
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
