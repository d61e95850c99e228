"""``init_backbone``: a fresh run starts from pretrained weights; resume ignores it; bad files fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fpr_plugin import build_backbone
from fpr_plugin.train import checkpoint as ckpt
from fpr_plugin.train import cli, trainer
from fpr_plugin.train.config import load_config

TINY = {"width": 4, "stem_stride": 2, "embedding_size": 16}  # the tiny recipe's backbone (conftest.py)


def pretrained(path: Path, seed: int = 7, prefix: str = "module.", **overrides) -> dict:
    """Save a tiny r18 as arcface_torch does (bare state dict, here with a DDP prefix); return its weights."""
    torch.manual_seed(seed)
    model = build_backbone(overrides.pop("network", "r18"), **{**TINY, **overrides})
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return state


def _capture_first_step(monkeypatch) -> dict:
    """Record the backbone's weights when the first training step begins."""
    seen: dict = {}
    original = trainer.forward_loss

    def forward_loss(model, head, images, labels, amp_dtype=None):
        if not seen:
            module = getattr(model, "module", model)
            seen.update({k: v.detach().clone() for k, v in module.state_dict().items()})
        return original(model, head, images, labels, amp_dtype)

    monkeypatch.setattr(trainer, "forward_loss", forward_loss)
    return seen


def test_fine_tune_starts_from_the_files_weights(tiny_recipe, tmp_path, monkeypatch):
    weights = pretrained(tmp_path / "backbone.pth")
    seen = _capture_first_step(monkeypatch)
    cfg = load_config(tiny_recipe, loss="fpr_penalty",
                      overrides=[f"output={tmp_path / 'ft'}", f"init_backbone={tmp_path / 'backbone.pth'}",
                                 "max_steps=2"])
    summary = trainer.train(cfg)
    assert summary["global_step"] == 2
    assert seen.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(seen[key], value), key
    # the run trained from there, and a run without init_backbone would not have started there
    final = torch.load(tmp_path / "ft" / "model.pt", weights_only=True)
    assert not torch.equal(final["conv1.weight"], weights["conv1.weight"])
    assert any(".downsample." in k for k in final) and not any(".shortcut." in k for k in final)
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["init_backbone"] == str(tmp_path / "backbone.pth")
    torch.manual_seed(0)
    scratch = trainer.build_model(dict(cfg, num_classes=8))[0].state_dict()
    assert not torch.equal(scratch["conv1.weight"], weights["conv1.weight"])


def test_old_key_names_load_too(tiny_recipe, tmp_path, monkeypatch):
    weights = pretrained(tmp_path / "model.pt", prefix="")
    torch.save({k.replace(".downsample.", ".shortcut."): v for k, v in weights.items()}, tmp_path / "model.pt")
    seen = _capture_first_step(monkeypatch)
    cfg = load_config(tiny_recipe, overrides=[f"output={tmp_path / 'ft'}", f"init_backbone={tmp_path / 'model.pt'}",
                                              "max_steps=1"])
    trainer.train(cfg)
    assert torch.equal(seen["layer1.0.downsample.0.weight"], weights["layer1.0.downsample.0.weight"])


def test_resume_takes_the_checkpoint_not_init_backbone(tiny_recipe, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = pretrained(tmp_path / "first.pth", seed=1)
    sets = [f"output={out}", f"init_backbone={tmp_path / 'first.pth'}", "save_every=2", "max_steps=2"]
    trainer.train(load_config(tiny_recipe, overrides=sets))
    saved = ckpt.load_file(ckpt.latest_checkpoint(out).rank_file(0))["backbone"]
    assert not torch.equal(saved["conv1.weight"], first["conv1.weight"])
    seen = _capture_first_step(monkeypatch)
    # the file is gone and another one is named: resume needs neither
    (tmp_path / "first.pth").unlink()
    resumed = trainer.train(load_config(tiny_recipe, overrides=[
        f"output={out}", f"init_backbone={tmp_path / 'gone.pth'}", "max_steps=3", "resume=True"]))
    assert resumed["resumed_from"] == 2 and resumed["global_step"] == 3
    for key, value in saved.items():
        assert torch.equal(seen[key], value), key


def test_old_full_checkpoint_resumes(tiny_recipe, tmp_path, monkeypatch):
    """A checkpoint written before the rename (shortcut keys, no init_backbone in its config) resumes."""
    out = tmp_path / "old"
    trainer.train(load_config(tiny_recipe, overrides=[f"output={out}", "save_every=2", "max_steps=2"]))
    found = ckpt.latest_checkpoint(out)
    state = ckpt.load_file(found.rank_file(0))
    state["backbone"] = {k.replace(".downsample.", ".shortcut."): v for k, v in state["backbone"].items()}
    del state["config"]["init_backbone"]
    assert any(".shortcut." in k for k in state["backbone"])
    ckpt.save_file(state, found.rank_file(0))
    seen = _capture_first_step(monkeypatch)
    summary = trainer.train(load_config(tiny_recipe, overrides=[f"output={out}", "max_steps=4", "resume=True"]))
    assert summary["resumed_from"] == 2 and summary["global_step"] == 4
    renamed = {k.replace(".shortcut.", ".downsample."): v for k, v in state["backbone"].items()}
    assert all(torch.equal(seen[k], v) for k, v in renamed.items())


def _train_error(argv, capsys) -> str:
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fpr-train: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_init_backbone_fails_in_one_line(tiny_recipe, tmp_path, capsys):
    base = [tiny_recipe, "--set", f"output={tmp_path / 'x'}", "--set", "max_steps=1", "--set"]
    missing = tmp_path / "nothing.pth"
    err = _train_error(base + [f"init_backbone={missing}"], capsys)
    assert f"init_backbone '{missing}' does not exist" in err

    pretrained(tmp_path / "e8.pth", embedding_size=8)
    err = _train_error(base + [f"init_backbone={tmp_path / 'e8.pth'}"], capsys)
    assert err.endswith(f"init_backbone {tmp_path / 'e8.pth'} has embedding size 8, the recipe's embedding_size is 16")

    pretrained(tmp_path / "r34.pth", network="r34")
    err = _train_error(base + [f"init_backbone={tmp_path / 'r34.pth'}"], capsys)
    assert "is an IResNet r34 (blocks per stage (3, 4, 6, 3)), the recipe's network is 'r18'" in err

    cut = {k: v for k, v in pretrained(tmp_path / "cut.pth").items() if not k.startswith("layer2.1.")}
    torch.save(cut, tmp_path / "cut.pth")
    err = _train_error(base + [f"init_backbone={tmp_path / 'cut.pth'}"], capsys)
    assert "blocks per stage (2, 1, 2, 2) fit no IResNet depth; closest is r18 (2, 2, 2, 2)" in err

    pretrained(tmp_path / "w8.pth", width=8)
    err = _train_error(base + [f"init_backbone={tmp_path / 'w8.pth'}"], capsys)
    assert "has width 8, the recipe's backbone_params.width is 4" in err

    (tmp_path / "notes.pth").write_text("not a tensor file")
    err = _train_error(base + [f"init_backbone={tmp_path / 'notes.pth'}"], capsys)
    assert "notes.pth could not be read as a state dict" in err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_dry_run_checks_init_backbone(tiny_recipe, tmp_path, capsys):
    pretrained(tmp_path / "ok.pth")
    assert cli.main([str(tiny_recipe), "--dry-run", "--set", f"init_backbone={tmp_path / 'ok.pth'}"]) == 0
    assert "fits the recipe's r18" in capsys.readouterr().out
    pretrained(tmp_path / "e8.pth", embedding_size=8)
    err = _train_error([tiny_recipe, "--dry-run", "--set", f"init_backbone={tmp_path / 'e8.pth'}"], capsys)
    assert "has embedding size 8" in err


def test_finetune_recipe():
    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes" / "finetune_bupt_r50.py", loss="fpr_penalty",
                      overrides=["init_backbone=/models/backbone.pth"])
    plain = load_config(Path(__file__).resolve().parents[2] / "recipes" / "bupt_balancedface_r50.py")
    assert cfg.init_backbone == "/models/backbone.pth" and plain.init_backbone is None
    assert (cfg.network, cfg.embedding_size) == ("r50", 512)
    assert cfg.lr < plain.lr and cfg.num_epoch < plain.num_epoch
    assert max(cfg.lr_steps) < cfg.num_epoch and cfg.loss_params["gamma_u"] == 1e-4
    assert "init_backbone" in ckpt.RESUMABLE_KEYS
