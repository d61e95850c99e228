"""The arcface_torch adapter's own logic (margins, recipe translation, install, schedules) and, gated on
``ARCFACE_TORCH_ROOT``, the launcher against the real checkout: config errors, and a few steps of the
host's unchanged ``train_v2.py`` on CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fpr_plugin.hosts.arcface_torch import install, launcher
from fpr_plugin.hosts.arcface_torch.checkout import HostError
from fpr_plugin.hosts.arcface_torch.config import translate_recipe
from fpr_plugin.hosts.arcface_torch.margins import loss_params_from_margins, margin_list_from_loss
from fpr_plugin.hosts.arcface_torch.partial_fc import PartialFC
from fpr_plugin.hosts.arcface_torch.schedule import PolynomialWarmupLR, step_decay_scheduler
from fpr_plugin.train.config import load_config

REPO = Path(__file__).resolve().parents[2]
ROOT = os.environ.get("ARCFACE_TORCH_ROOT")
needs_host = pytest.mark.skipif(not ROOT, reason="set ARCFACE_TORCH_ROOT to a checkout's recognition/arcface_torch")
PROG = "python -m fpr_plugin.hosts.arcface_torch: error: "


@pytest.mark.parametrize(
    "loss, margins, expected",
    [
        ("cosface", (1.0, 0.0, 0.35), {"s": 64, "m": 0.35}),
        ("arcface", (1.0, 0.5, 0.0), {"s": 64, "m": 0.5}),
        ("fpr_penalty", (1.0, 0.0, 0.4), {"s": 64, "m": 0.4, "base": "cosface"}),
        ("fpr_penalty", (1.0, 0.5, 0.0), {"s": 64, "m": 0.5, "base": "arcface"}),
        ("fpr_penalty_tface", (1.0, 0.0, 0.35), {"s": 64, "m": 0.35}),
        ("combined", (1.0, 0.3, 0.2), {"s": 64, "m1": 1.0, "m2": 0.3, "m3": 0.2}),
    ],
)
def test_margin_list_maps_to_loss_params_and_back(loss, margins, expected):
    assert loss_params_from_margins(loss, 64, *margins) == expected
    assert margin_list_from_loss(loss, expected) == pytest.approx(margins)


@pytest.mark.parametrize("loss, margins", [("fpr_penalty_tface", (1.0, 0.5, 0.0)), ("cosface", (1.0, 0.5, 0.0)),
                                           ("fpr_penalty", (1.0, 0.3, 0.2)), ("arcface", (1.0, 0.0, 0.35))])
def test_margin_list_that_does_not_fit_the_loss_is_refused(loss, margins):
    with pytest.raises(HostError, match=rf"does not fit --loss {loss}"):
        loss_params_from_margins(loss, 64, *margins)


HOST_BASE = {"margin_list": (1.0, 0.5, 0.0), "network": "r50", "resume": False, "save_all_states": False,
             "output": "x", "embedding_size": 512, "sample_rate": 1, "interclass_filtering_threshold": 0,
             "fp16": False, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
             "weight_decay": 5e-4, "verbose": 2000, "frequent": 10, "dali": False, "gradient_acc": 1,
             "seed": 2048, "num_workers": 2}


def bupt(loss="fpr_penalty", overrides=()):
    cfg = load_config(REPO / "recipes" / "bupt_balancedface_r34.py", loss=loss, overrides=list(overrides))
    cfg.num_classes, cfg.num_image = 28000, 1300000
    return cfg


def test_bupt_recipe_translates_to_the_hosts_keys():
    out, dropped = translate_recipe(bupt(), HOST_BASE, world_size=8)
    assert out.network == "r34" and out.embedding_size == 512
    assert out.batch_size == 64  # global 512 over 8 ranks: the host's batch_size is per rank
    assert tuple(out.margin_list) == (1.0, 0.0, 0.35)
    assert out.loss == "fpr_penalty" and out.loss_params == {"gamma_u": 1e-4, "p": 2.0, "alpha": 1.0}  # s, m: margin_list
    assert out.lr_steps == [20, 32, 36] and out.num_epoch == 40 and out.fp16 is True
    assert out.num_classes == 28000 and out.save_all_states is True and out.val_targets == []
    assert set(dropped) == {"save_every", "keep_checkpoints", "tensorboard", "check_labels"}
    arc, _ = translate_recipe(bupt("arcface"), HOST_BASE, world_size=8)
    assert tuple(arc.margin_list) == (1.0, 0.5, 0.0)


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["momentum=0.8"], 8, "recipe key momentum=0.8 cannot run in arcface_torch"),
        (["fp16=bf16"], 8, "fp16='bf16' cannot run in arcface_torch"),
        (["loss_params.s=30.0"], 8, "loss_params.s=30.0 cannot run in arcface_torch"),
        (["grad_clip=None"], 8, "recipe key grad_clip=None"),
        (["init_backbone=/x/backbone.pth"], 8, "init_backbone='/x/backbone.pth'"),
        ([], 7, "batch_size=512 (global) does not divide over 7 ranks"),
    ],
)
def test_recipe_keys_the_host_cannot_express_are_refused_by_name(overrides, world, message):
    with pytest.raises(HostError, match=message.replace("(", r"\(").replace(")", r"\)")):
        translate_recipe(bupt(overrides=overrides), HOST_BASE, world_size=world)


def test_install_rebinds_the_hosts_names_in_its_modules_and_running_script(monkeypatch):
    fakes = {name: types.ModuleType(name) for name in ("losses", "partial_fc_v2", "lr_scheduler")}
    script = types.ModuleType("__main__")
    for attr in ("CombinedMarginLoss", "PartialFC_V2", "PolynomialLRWarmup"):
        setattr(script, attr, "host")
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "__main__", script)
    cfg = {"loss": "fpr_penalty_tface", "loss_params": {}, "num_classes": 10, "num_image": 100,
           "batch_size": 10, "lr_steps": [2], "frequent": 5}
    bound = install(cfg)
    assert script.PartialFC_V2 is PartialFC is fakes["partial_fc_v2"].PartialFC_V2  # tface needs the features
    assert script.CombinedMarginLoss is fakes["losses"].CombinedMarginLoss is bound["CombinedMarginLoss"]
    loss = script.CombinedMarginLoss(64, 1.0, 0.0, 0.35, 0)
    assert type(loss).__name__ == "FprPenaltyTFace" and loss.layout.mode == "classes" and loss.layout.num_classes == 10
    with pytest.raises(HostError, match="interclass_filtering_threshold=0.3"):
        script.CombinedMarginLoss(64, 1.0, 0.0, 0.35, 0.3)
    sampled = install({**cfg, "loss": "fpr_penalty", "sample_rate": 0.2, "lr_steps": []})
    assert sampled["CombinedMarginLoss"](64, 1.0, 0.0, 0.35).layout.mode == "sampled"
    assert "PartialFC_V2" not in sampled  # the host's own PartialFC_V2 stays


def test_step_decay_scheduler_follows_the_recipe_epochs():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = step_decay_scheduler(steps_per_epoch=10, lr_steps=[2, 3], lr_decay=0.1, warmup_epoch=0)(opt, 0, 40)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[19] == pytest.approx(0.1) and lrs[20] == lrs[29] == pytest.approx(0.01)
    assert lrs[30] == pytest.approx(0.001)


def test_polynomial_warmup_matches_the_hosts_formula():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = PolynomialWarmupLR(opt, warmup_iters=4, total_iters=12)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warmup t/w, then linear decay (1 - (t - w) / (T - w)), 0 after T
    expected = [1.0, 0.25, 0.5, 0.75, 1.0] + [1 - (t - 4) / 8 for t in range(5, 13)] + [0.0]
    assert lrs == pytest.approx(expected)


def test_root_that_is_not_a_checkout_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "recognition" / "arcface_torch").mkdir(parents=True)
    assert launcher.main(["configs/ms1mv3_r50", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(PROG) and "\n" not in err
    assert "lacks train_v2.py" in err and "did you mean" in err and "recognition/arcface_torch" in err


# ---- against the real checkout ------------------------------------------------------------------
def run_launcher(*args, cwd=None, python=sys.executable, env=None, timeout=300):
    return subprocess.run([python, "-m", "fpr_plugin.hosts.arcface_torch", "--root", ROOT, *args],
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.host
@needs_host
@pytest.mark.parametrize(
    "args, message",
    [
        (["configs/ms1mv3_r5"], "no file configs/ms1mv3_r5.py in"),
        (["configs/wf12m_conflict_r50_pfc03_filter04", "--loss", "fpr_penalty", "--set", "rec=synthetic"],
         "interclass_filtering_threshold=0.4"),
        (["configs/ms1mv3_r50", "--loss", "fpr_penalty_tface", "--set", "rec=synthetic"],
         "margin_list (1.0, 0.5, 0.0) does not fit --loss fpr_penalty_tface"),
        (["configs/ms1mv3_r50", "--set", "sample_rat=0.3"], "has no key 'sample_rat'; did you mean 'sample_rate'?"),
        (["configs/ms1mv3_r50", "--loss", "fpr_penalty", "--set", "loss_params.m=0.3", "--set", "rec=synthetic"],
         "loss_params.m: in arcface_torch the margin and scale come from margin_list"),
        (["configs/ms1mv3_r50"], "rec='/train_tmp/ms1m-retinaface-t1': expected a record folder"),
        (["recipes/bupt_balancedface_r34.py", "--set", "momentum=0.5"], "recipe key momentum=0.5 cannot run"),
    ],
)
def test_launcher_errors_are_one_line_exit_2(args, message):
    result = run_launcher(*args)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(PROG) and message in err[0], result.stderr


@pytest.mark.host
@needs_host
def test_a_config_the_host_rejects_is_named(tmp_path):
    root = tmp_path / "arcface_torch"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("docs", "*.md"))
    (root / "configs" / "broken.py").write_text("from easydict import EasyDict as edict\nconfig = edict(\n")
    result = subprocess.run([sys.executable, "-m", "fpr_plugin.hosts.arcface_torch", "--root", str(root), "configs/broken"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "config configs/broken.py was rejected by arcface_torch: SyntaxError" in result.stderr


@pytest.mark.host
@needs_host
def test_bupt_recipe_dry_run_in_the_host():
    result = run_launcher("recipes/bupt_balancedface_r34.py", "--set", "num_classes=28000", "--set", "num_image=1300000",
                          "--set", "rec=synthetic", "--dry-run", env={**os.environ, "WORLD_SIZE": "8"})
    assert result.returncode == 0, result.stderr
    import json

    cfg = json.loads(result.stdout)
    assert cfg["network"] == "r34" and cfg["batch_size"] == 64 and cfg["margin_list"] == [1.0, 0.0, 0.35]
    assert cfg["loss"] == "fpr_penalty" and cfg["loss_params"]["gamma_u"] == 1e-4 and cfg["lr_steps"] == [20, 32, 36]
    assert cfg["optimizer"] == "sgd" and cfg["verbose"] == 2000  # host keys come from its configs/base.py


def _host_python() -> str:
    """An interpreter that can import the host's train_v2.py (torchvision, tensorboard), or skip."""
    python = os.environ.get("FPR_HOST_PYTHON", sys.executable)
    probe = subprocess.run([python, "-c", "import torchvision.transforms, torch.utils.tensorboard"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"train_v2.py needs torchvision and tensorboard: set FPR_HOST_PYTHON to a Python that has them "
                    f"({python}: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'import failed'})")
    return python


def write_records(folder: Path, classes: int = 8, per_class: int = 4) -> None:
    from fpr_plugin.data.record_set import write_record_set

    rng = np.random.default_rng(0)

    def samples():
        for c in range(classes):
            base = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
            for _ in range(per_class):
                noisy = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
                yield c, cv2.imencode(".jpg", noisy)[1].tobytes()

    write_record_set(folder, samples())


@pytest.mark.host
@pytest.mark.slow
@needs_host
@pytest.mark.parametrize("loss", ["fpr_penalty", "fpr_penalty_tface"])
def test_launcher_trains_a_few_steps_of_the_real_train_v2(loss, tmp_path):
    python = _host_python()
    write_records(tmp_path / "rec", classes=8, per_class=2)  # 16 images: 4 steps of 4
    out = tmp_path / "out"
    result = run_launcher(
        "configs/ms1mv3_r50", "--loss", loss, "--mxnet-standin", "--device", "cpu",
        "--set", f"rec={tmp_path / 'rec'}", "--set", "num_classes=8", "--set", "num_image=16",
        "--set", "batch_size=4", "--set", "num_epoch=1", "--set", "network=r18", "--set", "embedding_size=32",
        "--set", "fp16=False", "--set", "frequent=2", "--set", "num_workers=0", "--set", f"output={out}",
        "--set", "val_targets=[]", "--set", "margin_list=(1.0,0.0,0.35)",
        *(["--set", "loss_params.gamma_u=0.05"] if loss == "fpr_penalty" else []),
        python=python, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "training.log").read_text()
    assert log.count(f"fpr_plugin {loss} | step") == 2 and "T_u" in log and "FPR mean" in log
    assert "Global Step: 4" in log  # the host's own log line, 16 images / batch 4
    state = torch.load(out / "model.pt", weights_only=True)
    from fpr_plugin.backbones import build_backbone

    ours = build_backbone("r18", embedding_size=32)
    ours.load_state_dict(state)  # the host's model.pt loads into our IResNet


@pytest.mark.host
@pytest.mark.slow
@needs_host
def test_config_route_runs_the_stock_train_v2_with_install_in_the_config(tmp_path):
    """A config in the checkout's configs/ that calls install(config); the host's script run as it is."""
    python = _host_python()
    root = tmp_path / "arcface_torch"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("docs", "*.md"))
    write_records(tmp_path / "rec", classes=8, per_class=2)
    template = (REPO / "fpr_plugin" / "hosts" / "arcface_torch" / "config_template.py").read_text()
    small = (f"config.rec = {str(tmp_path / 'rec')!r}\nconfig.num_classes = 8\nconfig.num_image = 16\n"
             "config.batch_size = 4\nconfig.num_epoch = 2\nconfig.lr_steps = [1.5]\nconfig.network = 'r18'\n"
             "config.embedding_size = 32\nconfig.fp16 = False\nconfig.frequent = 2\nconfig.num_workers = 0\n"
             f"config.output = {str(tmp_path / 'out')!r}\nconfig.loss_params = {{'gamma_u': 0.05}}\n")
    (root / "configs" / "fpr_tiny.py").write_text(template.replace("\ninstall(config)", "\n" + small + "install(config)"))
    # CPU only: the stand-ins the launcher's --device cpu uses; nothing of fpr_plugin is installed before the config runs
    driver = ("import sys, runpy\nsys.path.insert(0, '.')\n"
              "from fpr_plugin.hosts.arcface_torch import mxnet_standin\nmxnet_standin.install()\n"
              "from fpr_plugin.hosts.arcface_torch.cpu import enable_cpu\nimport dataset, utils.utils_distributed_sampler as s\n"
              "enable_cpu(dataset, s)\n"
              "sys.argv = ['train_v2.py', 'configs/fpr_tiny']\nrunpy.run_path('train_v2.py', run_name='__main__')\n")
    result = subprocess.run([python, "-c", driver], cwd=root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "out" / "training.log").read_text()
    assert log.count("fpr_plugin fpr_penalty | step") == 4  # 8 steps over 2 epochs, every 2nd
    rates = [float(line.split("LearningRate ")[1].split()[0]) for line in log.splitlines() if "LearningRate" in line]
    assert rates == pytest.approx([0.1, 0.01, 0.01])  # logged after steps 4, 6, 8: decay at epoch 1.5


@pytest.mark.host
@pytest.mark.slow
@pytest.mark.distributed
@needs_host
def test_launcher_under_torchrun_two_ranks(tmp_path):
    python = _host_python()
    write_records(tmp_path / "rec", classes=8, per_class=2)
    out = tmp_path / "out"
    cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "fpr_plugin.hosts.arcface_torch", "--root", ROOT, "configs/ms1mv3_r50", "--loss", "fpr_penalty",
           "--mxnet-standin", "--device", "cpu", "--set", f"rec={tmp_path / 'rec'}", "--set", "num_classes=8",
           "--set", "num_image=16", "--set", "batch_size=2", "--set", "num_epoch=1", "--set", "network=r18",
           "--set", "embedding_size=32", "--set", "fp16=False", "--set", "frequent=2", "--set", "num_workers=0",
           "--set", f"output={out}", "--set", "val_targets=[]", "--set", "loss_params.gamma_u=0.05"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "training.log").read_text()
    assert log.count("fpr_plugin fpr_penalty | step") == 2  # rank 0 only: 4 global steps of 2 x 2
    assert "total_batch_size         4" in log
    assert (out / "model.pt").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
