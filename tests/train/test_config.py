"""Recipe loading: base + recipe + --loss + --set, type checks, loss parameters, record-set sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fpr_plugin.train.config import fill_from_records, load_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BUPT = sorted(RECIPES.glob("bupt_*.py"))


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.py"
    path.write_text("from easydict import EasyDict as edict\nconfig = edict()\n" + body)
    return path


def test_the_six_bupt_recipes_exist():
    names = {p.stem for p in BUPT}
    assert names == {f"bupt_{d}_r{n}" for d in ("balancedface", "globalface") for n in (34, 50, 100)}


@pytest.mark.parametrize("path", BUPT, ids=lambda p: p.stem)
def test_bupt_recipe_follows_the_paper(path):
    cfg = load_config(path)
    balanced = "balancedface" in path.stem
    assert cfg.network == "r" + path.stem.rsplit("_r", 1)[1]
    assert (cfg.num_epoch, cfg.lr_steps) == ((40, [20, 32, 36]) if balanced else (24, [10, 18, 22]))
    assert (cfg.lr, cfg.lr_decay, cfg.batch_size, cfg.momentum, cfg.weight_decay) == (0.1, 0.1, 512, 0.9, 5e-4)
    assert cfg.embedding_size == 512
    assert cfg.loss == "fpr_penalty"
    assert cfg.loss_params == {"s": 64.0, "m": 0.35, "gamma_u": 1e-4, "p": 2.0, "alpha": 1.0}
    assert cfg.output == f"work_dirs/{path.stem}_fpr_penalty"


@pytest.mark.parametrize("network", ["r34", "r50", "r100"])
def test_bupt_recipes_build_their_model(network):
    from fpr_plugin.train.trainer import build_model

    for path in [p for p in BUPT if p.stem.endswith("_" + network)]:
        cfg = load_config(path, overrides=["num_classes=1000"])
        backbone, head, loss = build_model(cfg)
    assert head.weight.shape == (1000, 512)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 112, 112)).shape == (1, 512)
    blocks = {"r34": 16, "r50": 24, "r100": 49}[network]  # IResNet blocks per depth
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in backbone.modules())
    assert convs == 1 + 2 * blocks + 4  # stem, two per block, one shortcut per stage


@pytest.mark.parametrize(
    "path", [p for p in sorted(RECIPES.glob("*.py")) if p.stem != "base" and not p.stem.startswith("_")], ids=lambda p: p.stem
)
@pytest.mark.parametrize("loss", ["cosface", "arcface", "fpr_penalty"])
def test_every_shipped_recipe_loads_with_every_baseline_loss(path, loss):
    cfg = load_config(path, loss=loss)
    assert cfg.loss == loss and cfg.recipe == path.stem
    assert "gamma_u" not in cfg.loss_params if loss != "fpr_penalty" else cfg.loss_params["gamma_u"] > 0


def test_switching_the_loss_keeps_only_its_parameters():
    path = RECIPES / "bupt_balancedface_r34.py"
    cosface = load_config(path, loss="cosface")
    assert cosface.loss_params == {"s": 64.0, "m": 0.35}
    assert sorted(cosface.loss_params_skipped) == ["alpha", "gamma_u", "p"]
    assert cosface.output == "work_dirs/bupt_balancedface_r34_cosface"
    arcface = load_config(path, loss="arcface")
    assert arcface.loss_params == {"s": 64.0, "m": 0.5}  # the recipe's per-loss entry
    with pytest.raises(ValueError, match=r"loss_params.gamma_u .* 'cosface' does not take it"):
        load_config(path, loss="cosface", overrides=["loss_params.gamma_u=1e-3"])


def test_set_overrides_with_type_checks():
    path = RECIPES / "bupt_globalface_r50.py"
    cfg = load_config(path, overrides=["lr=1", "lr_steps=[5, 7]", "fp16=bf16", "num_classes=38000",
                                       "loss_params.alpha=0.5", "resume=true", "grad_clip=None",
                                       "backbone_params.width=16"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.lr_steps == [5, 7] and cfg.fp16 == "bf16" and cfg.num_classes == 38000
    assert cfg.loss_params["alpha"] == 0.5 and cfg.resume is True and cfg.grad_clip is None
    assert cfg.backbone_params == {"width": 16}
    for bad, message in [
        ("lr=fast", "'lr' expects a number"),
        ("batch_size=1.5", "'batch_size' expects an integer"),
        ("resume=maybe", "'resume' expects true/false"),
        ("fp16=fp8", "'fp16' must be one of"),
        ("lr_steps=20", "'lr_steps' expects a list"),
        ("lr=-0.1", "'lr' must be positive"),
        ("lr_steps=[32, 20]", "'lr_steps' must be an increasing list"),
        ("weight_decya=1e-4", "unknown key 'weight_decya' in --set; did you mean 'weight_decay'"),
        ("loss_params.gama_u=1e-3", "unknown key 'gama_u' .*did you mean 'gamma_u'"),
        ("lr", "must look like key=value"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_config(path, overrides=[bad])


def test_unknown_loss_names_the_closest():
    with pytest.raises(KeyError, match="cosface"):
        load_config(RECIPES / "bupt_balancedface_r34.py", loss="cosfase")


def test_bad_recipe_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(tmp_path / "nope.py")
    no_config = tmp_path / "empty.py"
    no_config.write_text("x = 1\n")
    with pytest.raises(ValueError, match="does not define `config`"):
        load_config(no_config)
    with pytest.raises(ValueError, match="unknown key 'num_epochs' in recipe .*did you mean 'num_epoch'"):
        load_config(_recipe(tmp_path, "config.num_epochs = 3\n"))
    with pytest.raises(ValueError, match="'momentum' expects a number"):
        load_config(_recipe(tmp_path, "config.momentum = 'high'\n"))


def test_recipe_dicts_merge_over_base(tmp_path):
    cfg = load_config(_recipe(tmp_path, "config.loss_params = {'m': 0.4}\n"))
    assert cfg.loss_params == {"s": 64.0, "m": 0.4}  # s from base.py


def test_sizes_come_from_the_record_set(tmp_path, easy_records):
    cfg = fill_from_records(load_config(_recipe(tmp_path, f"config.rec = {str(easy_records)!r}\n")))
    assert (cfg.num_classes, cfg.num_image) == (8, 64)
    with pytest.raises(ValueError, match="num_classes=4 is smaller than the 8 classes"):
        fill_from_records(load_config(_recipe(tmp_path, f"config.rec = {str(easy_records)!r}\n"),
                                      overrides=["num_classes=4"]))
    missing = load_config(_recipe(tmp_path, f"config.rec = {str(tmp_path / 'gone')!r}\n"))
    with pytest.raises(FileNotFoundError, match=r"rec=.*gone.* does not exist"):
        fill_from_records(missing)
