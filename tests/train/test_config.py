"""Recipe loading: base + recipe + --loss + --set, type checks, loss parameters, record-set sizes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fpr_plugin.train.config import ConfigError, fill_from_records, load_config

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
    with pytest.raises(ConfigError, match=r"^--loss cosfase: unknown loss 'cosfase'\. Did you mean 'cosface'\?"):
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


# ---- the schema: one definition of every key ------------------------------------------------
def _base_file_values() -> dict:
    """The literal values recipes/base.py assigns, read from its source (not run)."""
    import ast

    values = {}
    for node in ast.parse((RECIPES / "base.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            values[node.targets[0].attr] = ast.literal_eval(node.value)
    return values


def test_base_recipe_is_the_schema_written_out():
    from fpr_plugin.train.schema import KEYS, render_base_recipe

    assert (RECIPES / "base.py").read_text() == render_base_recipe(), (
        "recipes/base.py disagrees with fpr_plugin/train/schema.py: "
        "python -m fpr_plugin.train.schema > recipes/base.py")
    values = _base_file_values()
    assert values == {k.name: k.default for k in KEYS if not k.derived}
    for key in KEYS:  # every key's doc line is its comment in base.py
        assert " ".join(key.doc.split()[:4]) in " ".join((RECIPES / "base.py").read_text().split()) or key.derived


def test_an_empty_recipe_gets_the_base_values(tmp_path):
    cfg = load_config(_recipe(tmp_path, ""))
    values = _base_file_values()
    values["output"] = "work_dirs/r_cosface"
    values["loss_params"] = {"s": 64.0, "m": 0.35}
    assert {k: cfg[k] for k in values} == values
    assert cfg.recipe == "r" and cfg.loss_params_skipped == []
    assert type(cfg).__name__ == "EasyDict" and type(cfg.loss_params).__name__ == "EasyDict"


def test_resumable_keys_come_from_the_schema():
    from fpr_plugin.train import checkpoint, schema

    assert checkpoint.RESUMABLE_KEYS is schema.RESUMABLE_KEYS  # one definition
    # paths, logging, saving and where to stop may change; anything shaping the trajectory may not
    assert schema.RESUMABLE_KEYS == {"resume", "output", "rec", "num_workers", "frequent", "save_every",
                                     "keep_checkpoints", "max_steps", "tensorboard", "loss_params_skipped",
                                     "init_backbone", "check_labels"}
    assert not {"lr", "seed", "batch_size", "loss", "loss_params", "network", "num_classes"} & schema.RESUMABLE_KEYS


@pytest.mark.parametrize(
    "text, ok",
    [
        ("dropout=0.0", True), ("dropout=1.0", False), ("momentum=0.99", True), ("momentum=1", False),
        ("lr_decay=1", True), ("lr_decay=0", False), ("keep_checkpoints=1", True), ("keep_checkpoints=0", False),
        ("num_classes=2", True), ("num_classes=1", False), ("save_every=0", True), ("save_every=-1", False),
        ("max_steps=1", True), ("max_steps=0", False), ("warmup_epoch=0", True), ("warmup_epoch=-0.5", False),
        ("num_workers=0", True), ("num_workers=-3", False), ("frequent=0", False), ("grad_clip=0", False),
        ("embedding_size=0", False), ("head_init_std=0.02", True), ("lr_steps=[]", True), ("network=", False),
        ("lr=1e999", False), ("loss_params.s=1e999", False),
    ],
)
def test_ranges_come_from_the_schema(text, ok):
    path = RECIPES / "bupt_balancedface_r34.py"
    if ok:
        key, value = text.split("=")
        assert load_config(path, overrides=[text])[key] == (None if value == "None" else eval(value))
    else:
        with pytest.raises(ValueError, match=rf"--set {re.escape(text)}: .*'{text.split('=')[0].split('.')[0]}"):
            load_config(path, overrides=[text])


def test_fp16_spellings():
    path = RECIPES / "bupt_balancedface_r34.py"
    for text, value in [("True", "fp16"), ("float16", "fp16"), ("bfloat16", "bf16"), ("false", False), ("None", False)]:
        assert load_config(path, overrides=[f"fp16={text}"]).fp16 == value
    assert load_config(path).fp16 == "fp16"  # the recipe's value


def test_help_lists_every_key_with_type_and_default():
    from fpr_plugin.train.cli import build_parser
    from fpr_plugin.train.schema import KEYS

    text = build_parser().format_help()
    lines = " ".join(text.split())
    for key in KEYS:
        assert f"{key.name} ({key.type.__name__ if key.choices is None else 'False|fp16|bf16'}" in lines
        assert f"default {key.default!r}" in lines
    assert "lr (float, default 0.1, positive)" in lines
    assert "max_steps (int|None, default None, positive, may change on --resume)" in lines


# ---- recipes are Python, run as code; the package's base only ------------------------------
def test_a_base_py_beside_a_recipe_is_never_run(tmp_path):
    marker = tmp_path / "hostile_ran"
    (tmp_path / "base.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nfrom easydict import EasyDict\nconfig = EasyDict(lr=9.0, seed=1)\n"
    )
    cfg = load_config(_recipe(tmp_path, "config.num_epoch = 3\n"))
    assert not marker.exists()
    assert (cfg.lr, cfg.seed, cfg.num_epoch) == (0.1, 2048, 3)


def test_shipped_recipes_by_name_and_as_package_data():
    from fpr_plugin.train.config import find_recipe, recipes_dir, shipped_recipes

    assert sorted(p.stem for p in RECIPES.glob("*.py") if not p.stem.startswith("_") and p.stem != "base") \
        == shipped_recipes()
    for name in shipped_recipes():
        assert (recipes_dir() / f"{name}.py").read_bytes() == (RECIPES / f"{name}.py").read_bytes()
    assert (recipes_dir() / "_bupt.py").is_file()  # the BUPT recipes' shared settings ship with them
    assert load_config("synthetic_demo").network == "r18"
    assert find_recipe("bupt_globalface_r50.py") == recipes_dir() / "bupt_globalface_r50.py"
    with pytest.raises(FileNotFoundError, match="did you mean 'synthetic_demo'"):
        find_recipe("synthetic_dmeo")


def test_bad_recipe_values_name_the_file_and_line(tmp_path):
    path = _recipe(tmp_path, "config.num_epoch = 3\nconfig.lr = 'x'\n")
    with pytest.raises(ValueError, match=rf"^recipe {re.escape(str(path))}, line 4: key 'lr' expects a number"):
        load_config(path)
    path = _recipe(tmp_path, "config.update(dict(\n    seed=1,\n    network='r999'))\n")
    with pytest.raises(ValueError, match=rf"^recipe {re.escape(str(path))}, line 5: config key 'network': unknown"):
        load_config(path)
    path = _recipe(tmp_path, "config.loss = 'fpr_penalty'\nconfig.loss_params = {'gamma_u': 2.0}\n")
    with pytest.raises(ValueError, match=rf"^recipe {re.escape(str(path))}, line 4: .*gamma_u must be in"):
        load_config(path)
    path = _recipe(tmp_path, "config['keep_checkpoints'] = 0\n")
    with pytest.raises(ValueError, match=rf"^recipe {re.escape(str(path))}, line 3: .*'keep_checkpoints' must be >= 1"):
        load_config(path)
    with pytest.raises(ValueError, match=r"line 3: key 'recipe' is filled in by fpr-train"):
        load_config(_recipe(tmp_path, "config.recipe = 'other'\n"))
    path = _recipe(tmp_path, "config.lr = 0.1 +\n")
    with pytest.raises(ValueError, match=rf"^recipe {re.escape(str(path))}, line 3: syntax error"):
        load_config(path)
    path = _recipe(tmp_path, "config.lr = 1 / 0\n")
    with pytest.raises(ValueError, match=r"r\.py, line 3\): ZeroDivisionError"):
        load_config(path)
