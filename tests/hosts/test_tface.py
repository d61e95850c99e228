"""fpr_plugin.hosts.tface: the adapter's own logic, and TFace's real code where a checkout is named.

Ungated: the heads' maths against the float64 loop reference, parameter
mapping, argument errors, checkout detection, the config checks, the
get_head wrapper and the TrainTask patch on fake TFace trees, the dareblopy
stand-in and the launcher's one-line errors.

Gated (marker ``host``): ``TFACE_ROOT`` = TFace master's ``recognition``
folder (commit 171ec14), ``TFACE_V010_ROOT`` = the TFace v0.1.0 tree (commit
eebc390; ``TFACE_ROOT`` may name it instead). TFace itself needs PyYAML;
torchvision and tensorboard are replaced by :mod:`tface_standins` where they
do not import on a CPU-only torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import types
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _folder in (HERE.parent, HERE.parent / "losses"):  # tests/gloo.py, tests/losses/fpr_reference.py
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from fpr_reference import paper_loss, tface_loss  # noqa: E402
from gloo import free_port, run_two_ranks  # noqa: E402
from tface_standins import install_missing  # noqa: E402

from fpr_plugin.heads import ClassifierHead  # noqa: E402
from fpr_plugin.losses import cross_entropy  # noqa: E402
from fpr_plugin.hosts.tface import dareblopy_standin, distfc, factory, localfc  # noqa: E402
from fpr_plugin.hosts.tface.checkout import MASTER, V0_1_0, CheckoutError, detect_checkout  # noqa: E402
from fpr_plugin.hosts.tface.common import HEAD_LOSSES, resolve_scale_margin  # noqa: E402
from fpr_plugin.hosts.tface.config import ConfigError, check_config  # noqa: E402
from fpr_plugin.hosts.tface.launcher import prepare_imports  # noqa: E402
from fpr_plugin.hosts.tface.task import configure_task  # noqa: E402
from fpr_plugin.registry import build_loss  # noqa: E402

DIM = 6
NUM_CLASSES = 11  # class_split [6, 5] over two ranks
ROWS = 5  # per rank (TFace's AllGather needs equal batches)
# key -> (HEAD_NAME, FPR_PENALTY parameters, scale, margin)
CASES = {
    "fpr_penalty": ("FprPenalty", {"gamma_u": 0.05}, 16.0, 0.35),
    "fpr_penalty_arcface_embeddings": ("FprPenalty", {"gamma_u": 0.08, "base": "arcface", "penalty_grad": "embeddings"}, 16.0, 0.5),
    "fpr_penalty_tface": ("FprPenaltyTface", {}, 16.0, 0.35),
}


def global_batch():
    """The same global batch in every process (float64): x [2*ROWS, D], W [C, D], labels [2*ROWS]."""
    g = torch.Generator().manual_seed(7)
    W = torch.randn(NUM_CLASSES, DIM, generator=g, dtype=torch.float64)
    labels = torch.randint(0, NUM_CLASSES, (2 * ROWS,), generator=g)
    x = W[labels] + 1.1 * torch.randn(2 * ROWS, DIM, generator=g, dtype=torch.float64)
    return x, W, labels


def loop_reference(key, x, W, labels):
    """Loss and gradients (x, W) of the float64 loop reference of tests/losses/fpr_reference.py."""
    head_name, params, s, m = CASES[key]
    x = x.detach().clone().requires_grad_()
    W = W.detach().clone().requires_grad_()
    if HEAD_LOSSES[head_name] == "fpr_penalty":
        out = paper_loss(x, W, labels.tolist(), s=s, m=m, **params)
    else:
        out = tface_loss(x, W, labels.tolist(), s=s, m=m)
    out["loss"].backward()
    return {"loss": out["loss"].item(), "grad_x": x.grad, "grad_W": W.grad}


def classifier_head_reference(key, x, W, labels):
    """The same step with fpr_plugin's own ClassifierHead on one process."""
    head_name, params, s, m = CASES[key]
    head = ClassifierHead(DIM, NUM_CLASSES, build_loss(HEAD_LOSSES[head_name], s=s, m=m, **params)).double()
    with torch.no_grad():
        head.weight.copy_(W)
    x = x.detach().clone().requires_grad_()
    loss = head.training_loss(x, labels)
    loss.backward()
    return {"loss": loss.item(), "grad_x": x.grad, "grad_W": head.weight.grad}


def scaled_cosines(x, W, s):
    """``s * cos`` from explicit row normalisation (independent of the heads)."""
    xn = x / x.norm(dim=1, keepdim=True)
    Wn = W / W.norm(dim=1, keepdim=True)
    return s * xn @ Wn.t()


# ----------------------------------------------------------------------------------------------
# The heads' maths on one process (no TFace needed)


@pytest.mark.parametrize("key", list(CASES))
def test_distfc_head_equals_float64_reference(key):
    head_name, params, s, m = CASES[key]
    x, W, labels = global_batch()
    head = getattr(distfc, head_name)(in_features=DIM, gpu_index=0, weight_init=W.t().clone(), class_split=[NUM_CLASSES],
                                       scale=s, margin=m, **params)
    x_in = x.clone().requires_grad_()
    outputs, part_labels, original = head(x_in, labels)
    loss = F.cross_entropy(outputs, part_labels.view(-1))  # DistCrossEntropy on one rank
    loss.backward()
    expected = loop_reference(key, x, W, labels)
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-10)
    torch.testing.assert_close(x_in.grad, expected["grad_x"], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(head.kernel.grad, expected["grad_W"].t(), rtol=1e-9, atol=1e-10)
    # TFace's meaning of the other two results
    assert part_labels.shape == (2 * ROWS, 1) and part_labels.dtype == torch.int64
    assert torch.equal(part_labels.view(-1), labels)
    assert not original.requires_grad
    torch.testing.assert_close(original, scaled_cosines(x, W, s))
    assert head.loss.last_stats["threshold"] == head.loss.last_stats["threshold"]  # a step ran (not NaN)


@pytest.mark.parametrize("key", list(CASES))
def test_localfc_head_equals_float64_reference(key):
    head_name, params, s, m = CASES[key]
    x, W, labels = global_batch()
    head = getattr(localfc, head_name)(in_features=DIM, out_features=NUM_CLASSES, scale=s, margin=m, **params).double()
    assert head.kernel.shape == (DIM, NUM_CLASSES)
    assert 0.005 < head.kernel.std().item() < 0.02  # Cifp's normal(0, 0.01)
    with torch.no_grad():
        head.kernel.copy_(W.t())
    x_in = x.clone().requires_grad_()
    outputs, original = head(x_in, labels)
    loss = F.cross_entropy(outputs, labels)  # TFace's 'Softmax' loss
    loss.backward()
    expected = loop_reference(key, x, W, labels)
    assert loss.item() == pytest.approx(expected["loss"], rel=1e-10)
    torch.testing.assert_close(x_in.grad, expected["grad_x"], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(head.kernel.grad, expected["grad_W"].t(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(original, scaled_cosines(x, W, s))


def test_distfc_head_keeps_its_shard_and_tface_state_dict():
    x, W, labels = global_batch()
    head = distfc.FprPenalty(in_features=DIM, gpu_index=1, weight_init=W.t().clone(), class_split=[6, 5], scale=32, margin=0.3)
    assert list(head.state_dict()) == ["kernel"]  # TFace's CkptSaver / CkptLoader see only the kernel
    assert torch.equal(head.kernel.detach(), W.t()[:, 6:11])
    assert head.out_features == 5 and head.shard_start == [0, 6, 11]
    ids = torch.tensor([0, 5, 6, 9, 10])
    assert head.part_labels(ids).view(-1).tolist() == [-1, -1, 0, 3, 4]
    assert head.loss.layout.mode == "classes" and head.loss.layout.num_classes == 11
    assert (head.loss.s, head.loss.m) == (32.0, 0.3)
    with pytest.raises(RuntimeError, match=r"class_split has 2 shards .* 1 rank"):
        head(x, labels)  # one process cannot hold one shard of two


def test_half_precision_features_run_the_loss_in_float32():
    x, W, labels = global_batch()
    head = distfc.FprPenalty(DIM, 0, W.t().float(), [NUM_CLASSES], scale=16)
    outputs, _, original = head(x.half(), labels)  # TFace casts AMP features to float32; so does the head
    assert outputs.dtype == torch.float32 and original.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, _, original = head(x.float(), labels)
    assert outputs.dtype == torch.float32 and original.dtype == torch.float32
    assert torch.isfinite(outputs).all()


def test_head_argument_errors_name_the_argument():
    _, W, labels = global_batch()
    init = W.t().clone()
    with pytest.raises(ValueError, match=r"weight_init must have shape \[in_features, sum\(class_split\)\] = \[6, 12\]"):
        distfc.FprPenalty(DIM, 0, init, [6, 6])
    with pytest.raises(ValueError, match="class_split"):
        distfc.FprPenalty(DIM, 0, init, [])
    with pytest.raises(ValueError, match="class_split"):
        distfc.FprPenalty(DIM, 0, init, [11, 0])
    with pytest.raises(ValueError, match=r"gpu_index must be a rank in \[0, 2\)"):
        distfc.FprPenalty(DIM, 2, init, [6, 5])
    with pytest.raises(ValueError, match="in_features"):
        distfc.FprPenalty(0, 0, init, [11])
    with pytest.raises(ValueError, match="out_features"):
        localfc.FprPenalty(DIM, 0)
    head = distfc.FprPenalty(DIM, 0, init, [NUM_CLASSES])
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 11\), got 11"):
        head(torch.randn(3, DIM, dtype=torch.float64), torch.tensor([0, 1, 11]))
    with pytest.raises(ValueError, match=r"embeddings must have shape \[N, 6\]"):
        head(torch.randn(3, DIM + 1, dtype=torch.float64), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="gamma_u"):  # the released variant has no gamma_u
        distfc.FprPenaltyTface(DIM, 0, init, [NUM_CLASSES], gamma_u=0.1)
    with pytest.raises(ValueError, match="gamma_u"):
        localfc.FprPenalty(DIM, NUM_CLASSES, gamma_u=2.0)


def test_scale_and_margin_mapping():
    # TFace's arguments win; bound s / m fill in where TFace passes none (v0.1.0); defaults are Cifp's.
    assert resolve_scale_margin("FprPenalty", 30, 0.4, {"gamma_u": 0.1}) == (30, 0.4, {"gamma_u": 0.1})
    assert resolve_scale_margin("FprPenalty", None, None, {"s": 20, "m": 0.3}) == (20, 0.3, {})
    assert resolve_scale_margin("FprPenalty", None, None, {}) == (64.0, 0.35, {})
    assert resolve_scale_margin("FprPenalty", 20, None, {"s": 20.0}) == (20, 0.35, {})
    with pytest.raises(ValueError, match=r"TFace passes margin=0.4 but the loss parameters set m=0.3"):
        resolve_scale_margin("FprPenalty", None, 0.4, {"m": 0.3})
    bound = factory.head_class("FprPenalty", False, {"gamma_u": 0.2, "s": 10, "alpha": 0.5})
    assert issubclass(bound, localfc.FprPenalty) and bound.__name__ == "FprPenalty"
    head = bound(in_features=DIM, out_features=NUM_CLASSES)
    assert (head.loss.gamma_u, head.loss.alpha, head.loss.s, head.loss.m) == (0.2, 0.5, 10.0, 0.35)
    assert head.loss.layout.mode == "batch"
    assert factory.head_class("FprPenaltyTface", True) is distfc.FprPenaltyTface


# ----------------------------------------------------------------------------------------------
# Checkout detection, the get_head wrapper and the TrainTask patch on fake TFace trees


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


FAKE_GET_HEAD = """
    def get_head(key, dist_fc):
        heads = {"CosFace": ("tface CosFace", dist_fc)}
        if key in heads:
            return heads[key]
        raise KeyError("not support head {}".format(key))
"""
FAKE_TRAIN = """
    from torchkit.task.base_task import BaseTask

    class TrainTask(BaseTask):
        def __init__(self, cfg_file):
            super(TrainTask, self).__init__(cfg_file)

        def update_log_and_summary(self, *meters):
            self.update_log_buffer({"loss": meters})

    def main():
        task = TrainTask("beside/train.yaml")
        MAINS.append(task)

    MAINS = []
"""
FAKE_BASE_TASK = """
    from ..head import get_head

    class BaseTask:
        def __init__(self, cfg_file):
            import yaml
            with open(cfg_file) as handle:
                self.cfg = yaml.safe_load(handle)
            self.cfg_file = cfg_file
            self.warmup_step = self.cfg["WARMUP_STEP"]
            self.log_buffer = {}
            self.heads = {}

        def update_log_buffer(self, vars):
            self.log_buffer.update(vars)
"""


def fake_master(root: Path) -> Path:
    return write_tree(root, {
        "torchkit/__init__.py": "",
        "torchkit/head/__init__.py": FAKE_GET_HEAD,
        "torchkit/head/distfc/partial_fc.py": "",
        "torchkit/task/__init__.py": "",
        "torchkit/task/base_task.py": FAKE_BASE_TASK,
        "train.py": FAKE_TRAIN,
    })


@contextlib.contextmanager
def tface_on_path(root: Path):
    """``root`` first on sys.path; afterwards TFace's modules, the wrapper and the path are gone."""
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        factory.uninstall()
        for name in list(sys.modules):
            if name.split(".")[0] in ("torchkit", "tasks") or name.startswith("_tface_entry_"):
                del sys.modules[name]
        sys.path.remove(str(root))


def test_detect_checkout_on_fake_folders(tmp_path):
    master = fake_master(tmp_path / "TFace" / "recognition")
    assert detect_checkout(master).version == MASTER
    assert detect_checkout(master).entry(True) == master.resolve() / "train.py"
    old = write_tree(tmp_path / "old", {
        "torchkit/head/__init__.py": FAKE_GET_HEAD, "torchkit/task/base_task.py": "",
        "tasks/localfc/train_localfc.py": "", "tasks/distfc/train_distfc.py": "",
    })
    checkout = detect_checkout(old)
    assert checkout.version == V0_1_0
    assert checkout.entry(False).parts[-3:] == ("tasks", "localfc", "train_localfc.py")
    assert checkout.entry(True).parts[-3:] == ("tasks", "distfc", "train_distfc.py")
    with pytest.raises(CheckoutError, match=r"no such folder"):
        detect_checkout(tmp_path / "nowhere")
    with pytest.raises(CheckoutError, match=r"torchkit/head/__init__.py is missing.*did you mean .*TFace/recognition\?"):
        detect_checkout(tmp_path / "TFace")
    (tmp_path / "half" / "torchkit" / "head").mkdir(parents=True)
    (tmp_path / "half" / "torchkit" / "head" / "__init__.py").write_text("def get_head(key, dist_fc): pass\n")
    with pytest.raises(CheckoutError, match=r"torchkit/task/base_task.py is missing"):
        detect_checkout(tmp_path / "half")
    (tmp_path / "half" / "torchkit" / "task").mkdir()
    (tmp_path / "half" / "torchkit" / "task" / "base_task.py").write_text("")
    with pytest.raises(CheckoutError, match=r"neither master's train.py nor v0.1.0's tasks/localfc/train_localfc.py"):
        detect_checkout(tmp_path / "half")
    (tmp_path / "half" / "torchkit" / "head" / "__init__.py").write_text("HEADS = {}\n")
    with pytest.raises(CheckoutError, match=r"defines no get_head"):
        detect_checkout(tmp_path / "half")


def test_install_wraps_get_head_in_every_module_that_bound_it(tmp_path):
    root = fake_master(tmp_path / "recognition")
    write_tree(root, {"torchkit/task/later.py": "from torchkit.head import get_head\n"})
    with tface_on_path(root):
        import torchkit.head
        import torchkit.task.base_task as base_task  # binds TFace's get_head before install

        tface_get_head = torchkit.head.get_head
        get_head = factory.install({"gamma_u": 0.25})
        assert factory.installed()
        assert torchkit.head.get_head is get_head and base_task.get_head is get_head
        import torchkit.task.later as later  # imported after install: binds the wrapper

        assert later.get_head is get_head
        assert get_head("FprPenalty", True).__mro__[1] is distfc.FprPenalty
        tface_head = get_head("FprPenaltyTface", False)
        assert issubclass(tface_head, localfc.FprPenaltyTface)
        with pytest.raises(TypeError, match="gamma_u"):  # the parameters bind to both names; this one has none
            tface_head(in_features=DIM, out_features=NUM_CLASSES)
        head = get_head("FprPenalty", False)(in_features=DIM, out_features=NUM_CLASSES)
        assert head.loss.gamma_u == 0.25
        assert get_head("CosFace", True) == ("tface CosFace", True)  # TFace's own names unchanged
        with pytest.raises(KeyError, match=r"did you mean 'FprPenaltyTface'\?"):
            get_head("FprPenaltyTFace", True)
        with pytest.raises(KeyError, match=r"did you mean 'FprPenalty'\?"):
            base_task.get_head("fprpenalty", True)
        with pytest.raises(KeyError, match=r"^'not support head NoSuchHead'$"):
            get_head("NoSuchHead", True)  # far from ours: TFace's own error
        again = factory.install()  # replaces the parameters, does not wrap the wrapper
        assert base_task.get_head is again and again("FprPenalty", True) is distfc.FprPenalty
        factory.uninstall()
        assert not factory.installed()
        assert torchkit.head.get_head is tface_get_head and base_task.get_head is tface_get_head
        assert later.get_head is tface_get_head


def test_install_needs_torchkit(tmp_path):
    with pytest.raises(ImportError, match="put TFace's recognition folder on sys.path"):
        factory.install()
    with pytest.raises(CheckoutError):
        factory.install(root=tmp_path)


def test_configure_task_points_tface_main_at_the_config(tmp_path):
    pytest.importorskip("yaml", reason="the fake BaseTask reads yaml as TFace's does")
    config = tmp_path / "mine.yaml"
    config.write_text("WARMUP_STEP: 3\n")
    module = types.ModuleType("fake_train")
    base_src = textwrap.dedent(FAKE_BASE_TASK).replace("from ..head import get_head\n", "")
    exec(compile(base_src + textwrap.dedent(FAKE_TRAIN).replace("from torchkit.task.base_task import BaseTask\n", ""),
                 "fake_train", "exec"), module.__dict__)
    task_cls = configure_task(module, config)
    configure_task(module, config)  # twice: still one layer (no recursion through super(TrainTask, self))
    assert task_cls is module.TrainTask
    module.main()
    task = module.MAINS[-1]
    assert task.cfg_file == str(config) and task.warmup_step == 3
    head = distfc.FprPenalty(DIM, 0, torch.randn(DIM, NUM_CLASSES), [NUM_CLASSES], gamma_u=0.2)
    head(torch.randn(4, DIM), torch.tensor([0, 1, 2, 3]))
    task.heads = {"faces": head}
    task.update_log_and_summary("meters")
    assert task.log_buffer["loss"] == ("meters",)
    assert float(task.log_buffer["T_u"]) == pytest.approx(head.loss.last_stats["threshold"], rel=1e-5)
    assert "FPR mean" in task.log_buffer
    config.write_text("OTHER: 1\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: TFace's TrainTask rejected the config: key 'WARMUP_STEP' is missing"):
        module.main()


# ----------------------------------------------------------------------------------------------
# The launcher's config checks (on parsed yaml) and its imports


def master_checkout(tmp_path):
    return detect_checkout(fake_master(tmp_path / "recognition"))


def tface_yaml(index_root: Path, **changes) -> dict:
    data = {
        "HEAD_NAME": "FprPenalty", "DIST_FC": True, "INDEX_ROOT": str(index_root),
        "DATASETS": [{"name": "faces", "batch_size": 4, "scale": 64, "margin": 0.35}],
        "FPR_PENALTY": {"gamma_u": 1e-3, "alpha": 0.5},
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def test_check_config_maps_fpr_penalty_and_finds_the_data(tmp_path):
    checkout = master_checkout(tmp_path)
    (tmp_path / "faces.txt").write_text("a.jpg\t0\n")
    cfg = check_config(tface_yaml(tmp_path), tmp_path / "t.yaml", checkout)
    assert cfg.ours and cfg.head_name == "FprPenalty" and cfg.dist_fc is True
    assert cfg.loss_params == {"gamma_u": 1e-3, "alpha": 0.5}
    assert cfg.needs_dareblopy is False and cfg.notes == []
    no_margin = check_config(tface_yaml(tmp_path, DATASETS=[{"name": "faces", "batch_size": 4}]), tmp_path / "t.yaml", checkout)
    assert "passes margin=0.5" in no_margin.notes[0]
    tfr = check_config(tface_yaml(tmp_path, DATASETS=[{"name": "TFR-faces"}]), tmp_path / "t.yaml", checkout, check_data=False)
    assert tfr.needs_dareblopy is True
    other = check_config(tface_yaml(tmp_path, HEAD_NAME="CosFace"), tmp_path / "t.yaml", checkout)
    assert other.loss_params == {} and "FPR_PENALTY is ignored" in other.notes[0]


def test_check_config_v010_takes_s_and_m_from_fpr_penalty(tmp_path):
    old = detect_checkout(write_tree(tmp_path / "old", {
        "torchkit/head/__init__.py": FAKE_GET_HEAD, "torchkit/task/base_task.py": "",
        "tasks/localfc/train_localfc.py": "", "tasks/distfc/train_distfc.py": "",
    }))
    data = tface_yaml(tmp_path, DIST_FC=False, DATASETS=[{"name": "TFR-faces", "batch_size": 4, "weight": 1.0}],
                      FPR_PENALTY={"s": 32, "m": 0.3, "gamma_u": 0.01})
    cfg = check_config(data, tmp_path / "t.yaml", old, check_data=False)
    assert cfg.loss_params == {"s": 32, "m": 0.3, "gamma_u": 0.01}
    assert cfg.dist_fc is False and cfg.needs_dareblopy is False  # v0.1.0 reads TFRecords itself


@pytest.mark.parametrize("changes, message", [
    ({"HEAD_NAME": "FprPenaltyTFace"}, r"HEAD_NAME 'FprPenaltyTFace' is not a head; did you mean 'FprPenaltyTface'\?"),
    ({"HEAD_NAME": 3}, r"HEAD_NAME must name a head"),
    ({"FPR_PENALTY": {"gama_u": 0.1}}, r"FPR_PENALTY: .*unknown parameter 'gama_u'; did you mean 'gamma_u'\?"),
    ({"FPR_PENALTY": {"gamma_u": 2}}, r"FPR_PENALTY: gamma_u must be in the open interval \(0, 1\), got 2(\.0)?"),
    ({"FPR_PENALTY": {"m": 0.3}}, r"FPR_PENALTY.m: TFace master passes each DATASETS entry's margin .* DATASETS\[i\].margin"),
    ({"FPR_PENALTY": [1, 2]}, r"FPR_PENALTY must be a mapping"),
    ({"HEAD_NAME": "FprPenaltyTface", "FPR_PENALTY": {"alpha": 1}}, r"FPR_PENALTY: .*unknown parameter 'alpha'"),
    ({"DIST_FC": False}, r"DIST_FC: false: TFace master's train.py builds every head with the distfc signature"),
    ({"DIST_FC": "yes"}, r"DIST_FC must be true or false, got 'yes'"),
    ({"DATASETS": []}, r"DATASETS must be a list of datasets"),
    ({"DATASETS": [{"name": "faces", "scale": "big"}]}, r"DATASETS\[0\] scale='big' margin=0.5: s must be a finite number"),
    ({"DATASETS": [{"name": "elsewhere"}]}, r"DATASETS\[0\].name 'elsewhere': index file .*elsewhere.txt not found"),
    ({"INDEX_ROOT": None}, r"INDEX_ROOT must be the folder of the index files"),
])
def test_check_config_errors_name_the_key(tmp_path, changes, message):
    checkout = master_checkout(tmp_path)
    (tmp_path / "faces.txt").write_text("a.jpg\t0\n")
    data = tface_yaml(tmp_path, **changes)
    if changes.get("INDEX_ROOT", "") is None:
        data.pop("INDEX_ROOT", None)
    with pytest.raises(ConfigError, match=message):
        check_config(data, tmp_path / "t.yaml", checkout)


def test_check_config_refuses_a_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"t.yaml: a TFace config is a mapping of keys .* got list"):
        check_config([1], tmp_path / "t.yaml", master_checkout(tmp_path))


def test_tfrecord_data_without_dareblopy_is_refused(tmp_path, monkeypatch):
    cfg = check_config(tface_yaml(tmp_path, DATASETS=[{"name": "TFR-faces"}]), tmp_path / "t.yaml",
                       master_checkout(tmp_path), check_data=False)
    monkeypatch.setattr(dareblopy_standin, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"DATASETS\[0\].name 'TFR-faces' contains 'TFR'.*\(pip install dareblopy\)"):
        prepare_imports(cfg)


def test_dareblopy_standin_only_when_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "dareblopy", raising=False)
    monkeypatch.setattr(dareblopy_standin.importlib.util, "find_spec", lambda name: None)
    assert not dareblopy_standin.available()
    assert dareblopy_standin.install() is True
    try:
        import dareblopy

        assert dareblopy_standin.installed() and not dareblopy_standin.available()
        with pytest.raises(dareblopy_standin.DareblopyStandinError, match="pip install dareblopy"):
            dareblopy.RecordReader("x.tfrecord")
        with pytest.raises(dareblopy_standin.DareblopyStandinError, match="dareblopy.open_as_bytes"):
            dareblopy.open_as_bytes
        assert dareblopy_standin.install() is False  # once
    finally:
        dareblopy_standin.uninstall()
    assert "dareblopy" not in sys.modules
    real = types.ModuleType("dareblopy")
    monkeypatch.setitem(sys.modules, "dareblopy", real)
    assert dareblopy_standin.available() and dareblopy_standin.install() is False
    assert sys.modules["dareblopy"] is real


# ----------------------------------------------------------------------------------------------
# The launcher's command line (fresh processes)


def launch(*args, env=None, driver=False, timeout=300):
    """Run the launcher (``python -m fpr_plugin.hosts.tface`` or the test driver); (rc, stdout, stderr)."""
    command = [sys.executable, str(HERE / "tface_driver.py")] if driver else [sys.executable, "-m", "fpr_plugin.hosts.tface"]
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, cwd=REPO, env=full_env,
                          timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def assert_one_line_error(rc, stderr, *needles):
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert rc == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_launcher_refuses_a_root_that_is_not_tface(tmp_path):
    rc, _, stderr = launch("--root", tmp_path, "--config", tmp_path / "t.yaml")
    assert_one_line_error(rc, stderr, str(tmp_path), "is not a TFace checkout", "torchkit/head/__init__.py is missing")


def test_launcher_refuses_a_missing_config(tmp_path):
    root = fake_master(tmp_path / "recognition")
    rc, _, stderr = launch("--root", root, "--config", tmp_path / "nope.yaml")
    assert_one_line_error(rc, stderr, "nope.yaml: no such config file")


def test_launcher_dry_run_on_a_fake_tface_and_its_errors(tmp_path):
    pytest.importorskip("yaml", reason="TFace's configs are read with PyYAML")
    root = fake_master(tmp_path / "recognition")
    (tmp_path / "faces.txt").write_text("a.jpg\t0\n")
    config = tmp_path / "train.yaml"
    config.write_text(f"HEAD_NAME: FprPenalty\nINDEX_ROOT: {tmp_path}\nWARMUP_STEP: -1\n"
                      "DATASETS:\n  - {name: faces, batch_size: 4, scale: 32, margin: 0.3}\n"
                      "FPR_PENALTY: {gamma_u: 0.001, base: arcface}\n")
    rc, stdout, stderr = launch("--root", root, "--config", config, "--dry-run")
    assert rc == 0, stderr
    assert "HEAD_NAME FprPenalty -> fpr_plugin.hosts.tface.distfc.FprPenalty" in stdout
    assert "FprPenalty(s=32.0, m=0.3, gamma_u=0.001, p=2.0, alpha=1.0, base='arcface'" in stdout
    assert "class-sharded" in stdout and "accepted the config" in stdout
    config.write_text(config.read_text().replace("WARMUP_STEP: -1\n", ""))
    rc, _, stderr = launch("--root", root, "--config", config, "--dry-run")
    assert_one_line_error(rc, stderr, "TFace's TrainTask rejected the config: key 'WARMUP_STEP' is missing")
    config.write_text("HEAD_NAME: [unclosed\n")
    rc, _, stderr = launch("--root", root, "--config", config)
    assert_one_line_error(rc, stderr, "train.yaml: not valid YAML", "at line 2, column 1")
    config.write_text(f"HEAD_NAME: FPRPenalty\nINDEX_ROOT: {tmp_path}\nDATASETS:\n  - {{name: faces}}\n")
    rc, _, stderr = launch("--root", root, "--config", config)
    assert_one_line_error(rc, stderr, "HEAD_NAME 'FPRPenalty' is not a head; did you mean 'FprPenalty'?")
    config.write_text(f"HEAD_NAME: NoSuchHead\nINDEX_ROOT: {tmp_path}\nDATASETS:\n  - {{name: faces}}\n")
    rc, _, stderr = launch("--root", root, "--config", config)
    assert_one_line_error(rc, stderr, "HEAD_NAME: not support head NoSuchHead")
    config.write_text(f"HEAD_NAME: FprPenalty\nINDEX_ROOT: {tmp_path}\nWARMUP_STEP: 0\nDATASETS:\n  - {{name: faces}}\n")
    if not torch.cuda.is_available():
        rc, _, stderr = launch("--root", root, "--config", config)
        assert_one_line_error(rc, stderr, "TFace's training needs a CUDA GPU", "--dry-run")


# ----------------------------------------------------------------------------------------------
# TFace's real code (gated)


def _root_from(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value) if value else None


def master_root() -> Path:
    root = _root_from("TFACE_ROOT")
    if root is None:
        pytest.skip("set TFACE_ROOT to TFace master's recognition folder (tested: commit 171ec14) to run TFace host tests")
    if detect_checkout(root).version != MASTER:
        pytest.skip(f"TFACE_ROOT={root} is TFace {detect_checkout(root).version}; these tests need master's recognition folder")
    pytest.importorskip("yaml", reason="TFace needs PyYAML (pip install pyyaml)")
    return detect_checkout(root).root


def v010_root() -> Path:
    for var in ("TFACE_V010_ROOT", "TFACE_ROOT"):
        root = _root_from(var)
        if root is not None and detect_checkout(root).version == V0_1_0:
            pytest.importorskip("yaml", reason="TFace needs PyYAML (pip install pyyaml)")
            return detect_checkout(root).root
    pytest.skip("set TFACE_V010_ROOT to the TFace v0.1.0 tree (tested: commit eebc390) to run the localfc host tests")


def _start(rank: int, port: int, out_dir: str) -> Path:
    torch.set_num_threads(1)
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")  # TFace's protobuf-3 example_pb2
    install_missing()
    dareblopy_standin.install()
    root = Path(out_dir, "root.txt").read_text()
    sys.path.insert(0, root)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    return Path(root)


def _master_worker(rank: int, port: int, out_dir: str) -> None:
    _start(rank, port, out_dir)
    try:
        import torchkit.task.base_task as base_task  # binds TFace's own get_head before install
        from torchkit.loss import get_loss
        from torchkit.util import AllGather, accuracy_dist, get_class_split

        results = {}
        x, W, labels = global_batch()
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        for key, (head_name, params, s, m) in CASES.items():
            get_head = factory.install(params)  # FPR_PENALTY's parameters
            metric = base_task.get_head(head_name, dist_fc=True)
            split = get_class_split(NUM_CLASSES, 2)
            # float64 with fpr_plugin's class-sharded cross-entropy; float32 (as TFace trains) with TFace's DistCrossEntropy
            for dtype, criterion in ((torch.float64, "fpr_plugin"), (torch.float32, "DistCrossEntropy")):
                head = metric(in_features=DIM, gpu_index=rank, weight_init=W.t().to(dtype).contiguous(), class_split=split,
                              scale=s, margin=m)
                features = x[rows].to(dtype).clone().requires_grad_()
                # as BaseTask.backbone_forward: TFace's differentiable all-gather, labels gathered without gradient
                all_features = torch.cat(AllGather(features, 2))
                with torch.no_grad():
                    all_labels = torch.cat(AllGather(labels[rows].contiguous(), 2))
                outputs, part_labels, original = head(all_features, all_labels)
                if criterion == "fpr_plugin":
                    loss = cross_entropy(outputs, part_labels.view(-1), head.loss.layout)
                else:
                    loss = get_loss("DistCrossEntropy")(outputs, part_labels)
                loss.backward()
                (prec1,) = accuracy_dist({"WORLD_SIZE": 2, "RANK": rank}, original.data, all_labels, split, topk=(1,))
                results[key, criterion] = {
                    "rebound": base_task.get_head is get_head,
                    "class": f"{type(head).__module__}.{type(head).__name__}",
                    "split": split,
                    "loss": loss.item(),
                    "grad_x": features.grad.double(),
                    "grad_kernel": head.kernel.grad.double(),
                    "prec1": prec1.item(),
                    "outputs_shape": tuple(outputs.shape),
                    "part_labels": part_labels,
                    "state_keys": list(head.state_dict()),
                    "stats": dict(head.loss.last_stats),
                }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _v010_worker(rank: int, port: int, out_dir: str) -> None:
    _start(rank, port, out_dir)
    try:
        import tasks.localfc.train_localfc as train_localfc  # v0.1.0's localfc task; binds get_head at import
        from torch.nn.parallel import DistributedDataParallel
        from torchkit.loss import get_loss

        results = {}
        x, W, labels = global_batch()
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        for key, (head_name, params, s, m) in CASES.items():
            get_head = factory.install({**params, "s": s, "m": m})  # v0.1.0 passes no scale / margin
            metric = train_localfc.get_head(head_name, dist_fc=False)
            head = metric(in_features=DIM, out_features=NUM_CLASSES).double()  # as TrainTask._make_model
            with torch.no_grad():
                head.kernel.copy_(W.t())
            model = DistributedDataParallel(head)  # as TrainTask.train (device_ids only on GPUs)
            features = x[rows].clone().requires_grad_()
            outputs, original = model(features, labels[rows])
            loss = get_loss("Softmax")(outputs, labels[rows])
            loss.backward()
            results[key] = {
                "rebound": train_localfc.get_head is get_head,
                "class": f"{type(head).__module__}.{type(head).__name__}",
                "loss": loss.item(),
                "grad_x": features.grad,
                "grad_kernel": head.kernel.grad,
                "original": original,
                "stats": dict(head.loss.last_stats),
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def master_two_ranks(tmp_path_factory):
    root = master_root()
    out = tmp_path_factory.mktemp("tface_master")
    (out / "root.txt").write_text(str(root))
    return run_two_ranks(_master_worker, out)


@pytest.fixture(scope="module")
def v010_two_ranks(tmp_path_factory):
    root = v010_root()
    out = tmp_path_factory.mktemp("tface_v010")
    (out / "root.txt").write_text(str(root))
    return run_two_ranks(_v010_worker, out)


@pytest.mark.host
@pytest.mark.distributed
@pytest.mark.parametrize("criterion", ["fpr_plugin", "DistCrossEntropy"])
@pytest.mark.parametrize("key", list(CASES))
def test_master_distfc_step_on_two_ranks_equals_one_process(master_two_ranks, key, criterion):
    """TFace's get_head, AllGather and accuracy_dist around our head on 2 gloo ranks vs one process.

    ``fpr_plugin``: float64, our class-sharded cross-entropy (to 1e-6). ``DistCrossEntropy``:
    TFace's own loss, which runs in float32 only (to float32 precision, 1e-5).
    """
    x, W, labels = global_batch()
    loops = loop_reference(key, x, W, labels)
    ours = classifier_head_reference(key, x, W, labels)
    cos = scaled_cosines(x, W, 1.0)
    expected_prec1 = 100.0 * (cos.argmax(dim=1) == labels).double().mean().item()
    tol = 1e-6 if criterion == "fpr_plugin" else 1e-5
    assert master_two_ranks[0][key, criterion]["split"] == [6, 5]
    for rank, got in enumerate(r[key, criterion] for r in master_two_ranks):
        start, end = (0, 6) if rank == 0 else (6, 11)
        head_name = CASES[key][0]
        assert got["rebound"], "base_task.get_head was not replaced"
        assert got["class"] == f"fpr_plugin.hosts.tface.distfc.{head_name}"
        assert got["state_keys"] == ["kernel"] and got["outputs_shape"] == (2 * ROWS, end - start)
        owned = (labels >= start) & (labels < end)
        assert torch.equal(got["part_labels"].view(-1), torch.where(owned, labels - start, -1))
        for expected in (loops, ours):
            assert got["loss"] == pytest.approx(expected["loss"], rel=tol)
            # TFace's AllGather backward scales by the world size (DDP then averages the backbone's gradients)
            torch.testing.assert_close(got["grad_x"] / 2, expected["grad_x"][rank * ROWS:(rank + 1) * ROWS], rtol=tol, atol=tol)
            torch.testing.assert_close(got["grad_kernel"], expected["grad_W"][start:end].t(), rtol=tol, atol=tol)
        assert got["prec1"] == pytest.approx(expected_prec1)
        assert got["stats"]["penalty_mean"] > 0  # the penalty took part


@pytest.mark.host
@pytest.mark.distributed
@pytest.mark.parametrize("key", list(CASES))
def test_v010_localfc_step_on_two_ranks_equals_one_process(v010_two_ranks, key):
    x, W, labels = global_batch()
    loops = loop_reference(key, x, W, labels)
    ours = classifier_head_reference(key, x, W, labels)
    mean_loss = sum(r[key]["loss"] for r in v010_two_ranks) / 2  # equal batches: the mean of local means
    for rank, got in enumerate(r[key] for r in v010_two_ranks):
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        assert got["rebound"], "tasks.localfc.train_localfc.get_head was not replaced"
        assert got["class"] == f"fpr_plugin.hosts.tface.localfc.{CASES[key][0]}"
        torch.testing.assert_close(got["original"], scaled_cosines(x, W, CASES[key][2])[rows])
        for expected in (loops, ours):
            assert mean_loss == pytest.approx(expected["loss"], rel=1e-9)
            # each rank's loss is the mean over its own rows: twice the share of the global mean
            torch.testing.assert_close(got["grad_x"] / 2, expected["grad_x"][rows], rtol=1e-6, atol=1e-6)
            # DDP averages the head's gradient over the ranks
            torch.testing.assert_close(got["grad_kernel"], expected["grad_W"].t(), rtol=1e-6, atol=1e-6)
        assert got["stats"]["threshold"] == v010_two_ranks[0][key]["stats"]["threshold"]  # the global batch's T_u
    assert sum(r[key]["stats"]["penalty_mean"] for r in v010_two_ranks) > 0  # the penalty took part (on this rank's rows)


@pytest.mark.host
def test_tface_get_head_builds_our_head_from_a_yaml(tmp_path):
    root = master_root()
    config = tmp_path / "train.yaml"
    config.write_text("HEAD_NAME: FprPenalty\nDIST_FC: true\nEMBEDDING_SIZE: 8\n"
                      "DATASETS:\n  - {name: faces, batch_size: 6, scale: 30, margin: 0.3}\n"
                      "FPR_PENALTY: {gamma_u: 0.02, alpha: 0.5, p: 1.5}\n")
    with tface_on_path(root):
        import torch.nn.init as init
        import torchkit.head
        from torchkit.util import get_class_split, load_config

        cfg = load_config(str(config))  # TFace's own reader
        factory.install(cfg["FPR_PENALTY"])
        metric = torchkit.head.get_head(cfg["HEAD_NAME"], dist_fc=cfg["DIST_FC"])
        branch = cfg["DATASETS"][0]
        weight = torch.FloatTensor(cfg["EMBEDDING_SIZE"], 9)
        init.normal_(weight, std=0.01)  # as BaseTask.make_model
        head = metric(in_features=cfg["EMBEDDING_SIZE"], gpu_index=0, weight_init=weight,
                      class_split=get_class_split(9, 1), scale=branch["scale"], margin=branch["margin"])
        assert isinstance(head, distfc.FprPenalty)
        assert (head.loss.s, head.loss.m, head.loss.gamma_u, head.loss.alpha, head.loss.p) == (30, 0.3, 0.02, 0.5, 1.5)
        features = torch.randn(6, 8, requires_grad=True)
        outputs, part_labels, original = head(features, torch.tensor([0, 1, 2, 3, 4, 8]))
        loss = F.cross_entropy(outputs, part_labels.view(-1))  # DistCrossEntropy on one rank
        loss.backward()
        assert torch.isfinite(loss) and features.grad.abs().sum() > 0 and head.kernel.grad.abs().sum() > 0
        assert set(head.loss.last_stats) >= {"threshold", "instance_fpr_mean", "weighted_fpr_mean"}


@pytest.mark.host
def test_tface_checkpoints_save_and_load_our_heads(tmp_path):
    root = master_root()
    with tface_on_path(root):
        from torchkit.head.distfc.cosface import CosFace
        from torchkit.util import CkptLoader, CkptSaver

        weight = torch.randn(DIM, NUM_CLASSES)
        ours = distfc.FprPenalty(DIM, 0, weight, [NUM_CLASSES])
        CkptSaver.save_heads({"faces": ours}, str(tmp_path), 1, True, 0)
        saved = tmp_path / "HEAD_Epoch_1_Split_0_checkpoint.pth"
        assert list(torch.load(saved, weights_only=True)["faces"]) == ["kernel"]
        fresh = {"faces": distfc.FprPenaltyTface(DIM, 0, torch.zeros(DIM, NUM_CLASSES), [NUM_CLASSES])}
        CkptLoader.load_head(fresh, str(tmp_path / "HEAD_Epoch_1"), True, 0)
        assert torch.equal(fresh["faces"].kernel, weight)
        # a TFace CosFace head's weights fine-tune with the penalty, and back
        cosface = CosFace(DIM, 0, torch.randn(DIM, NUM_CLASSES), [NUM_CLASSES])
        ours.load_state_dict(cosface.state_dict())
        assert torch.equal(ours.kernel, cosface.kernel)
        cosface.load_state_dict(fresh["faces"].state_dict())
        assert torch.equal(cosface.kernel, weight)


def master_yaml(tmp_path: Path, **changes) -> Path:
    """A small TFace master config over an image list of 12 classes x 2 random JPEGs."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir(exist_ok=True)
    lines = []
    for label in range(12):
        for i in range(2):
            name = f"{label}_{i}.jpg"
            cv2.imwrite(str(tmp_path / "data" / name), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
            lines.append(f"{name}\t{label}\n")
    (tmp_path / "faces.txt").write_text("".join(lines))
    keys = {
        "SEED": 1337, "DATA_ROOT": str(tmp_path / "data"), "INDEX_ROOT": str(tmp_path),
        "DATASETS": [{"name": "faces", "batch_size": 4, "weight": 1.0, "scale": 64, "margin": 0.35}],
        "BACKBONE_RESUME": "", "HEAD_RESUME": "", "META_RESUME": "", "INPUT_SIZE": [112, 112],
        "BACKBONE_NAME": "MobileFaceNet", "EMBEDDING_SIZE": 512, "MODEL_ROOT": str(tmp_path / "ckpt"),
        "LOG_ROOT": str(tmp_path / "tensorboard"), "DIST_FC": True, "HEAD_NAME": "FprPenalty",
        "FPR_PENALTY": {"gamma_u": 0.1, "alpha": 1.0}, "LOSS_NAME": "DistCrossEntropy",
        "RGB_MEAN": [0.5, 0.5, 0.5], "RGB_STD": [0.5, 0.5, 0.5], "LRS": [0.1, 0.01], "WARMUP_STEP": -1,
        "STAGES": [1], "START_EPOCH": 0, "NUM_EPOCH": 1, "SAVE_EPOCHS": [1], "WEIGHT_DECAY": 0.0005,
        "MOMENTUM": 0.9, "DIST_BACKEND": "gloo", "DIST_URL": "env://", "NUM_WORKERS": 0, "AMP": False,
    }
    keys.update(changes)
    import yaml

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in keys.items() if v is not None}))
    return config


@pytest.mark.host
def test_launcher_dry_run_builds_tface_master_train_task(tmp_path):
    root = master_root()
    config = master_yaml(tmp_path)
    rc, stdout, stderr = launch("--root", root, "--config", config, "--dry-run", driver=True)
    assert rc == 0, stderr
    assert f"TFace master at {root}; entry train.py" in stdout
    assert "HEAD_NAME FprPenalty -> fpr_plugin.hosts.tface.distfc.FprPenalty" in stdout
    assert "FprPenalty(s=64.0, m=0.35, gamma_u=0.1, p=2.0, alpha=1.0" in stdout
    assert "TFace's TrainTask accepted the config" in stdout
    rc, _, stderr = launch("--root", root, "--config", master_yaml(tmp_path, WARMUP_STEP=None), "--dry-run", driver=True)
    assert_one_line_error(rc, stderr, "TFace's TrainTask rejected the config: key 'WARMUP_STEP' is missing")
    rc, _, stderr = launch("--root", root, "--config", master_yaml(tmp_path, HEAD_NAME="NoSuchHead"), "--dry-run", driver=True)
    assert_one_line_error(rc, stderr, "HEAD_NAME: not support head NoSuchHead")
    rc, _, stderr = launch("--root", root, "--config", master_yaml(tmp_path, HEAD_NAME="FprPenalty_Tface"), driver=True)
    assert_one_line_error(rc, stderr, "did you mean 'FprPenaltyTface'?")


@pytest.mark.host
def test_launcher_dry_run_builds_tface_v010_localfc_task(tmp_path):
    root = v010_root()
    (tmp_path / "TFR-faces.txt").write_text("TFR-faces\t0\t0\t0\n")
    import yaml

    config = tmp_path / "train_config.yaml"
    config.write_text(yaml.safe_dump({
        "SEED": 1, "DATA_ROOT": str(tmp_path), "INDEX_ROOT": str(tmp_path),
        "DATASETS": [{"name": "TFR-faces", "batch_size": 4, "weight": 1.0}], "BACKBONE_RESUME": "", "HEAD_RESUME": "",
        "META_RESUME": "", "BACKBONE_NAME": "IR_34", "DIST_FC": False, "MODEL_ROOT": "./ckpt/", "LOG_ROOT": "./tb",
        "HEAD_NAME": "FprPenalty", "FPR_PENALTY": {"s": 64, "m": 0.35, "gamma_u": 1e-4}, "LOSS_NAME": "Softmax",
        "INPUT_SIZE": [112, 112], "RGB_MEAN": [0.5] * 3, "RGB_STD": [0.5] * 3, "EMBEDDING_SIZE": 512, "LR": 0.1,
        "START_EPOCH": 0, "WARMUP_STEP": -1, "NUM_EPOCH": 45, "WEIGHT_DECAY": 0.0005, "MOMENTUM": 0.9,
        "STAGES": [20, 32, 36], "DIST_BACKEND": "gloo", "DIST_URL": "env://", "NUM_WORKERS": 0, "AMP": False,
    }))
    rc, stdout, stderr = launch("--root", root, "--config", config, "--dry-run", driver=True)
    assert rc == 0, stderr
    assert "TFace v0.1.0" in stdout and "entry tasks/localfc/train_localfc.py" in stdout
    assert "HEAD_NAME FprPenalty -> fpr_plugin.hosts.tface.localfc.FprPenalty" in stdout
    assert "gamma_u=0.0001" in stdout and "data-parallel" in stdout
    rc, stdout, stderr = launch("--root", root, "--config", config, "--task", "tasks/cifp/train_cifp.py", "--dry-run", driver=True)
    assert rc == 0, stderr
    assert "entry tasks/cifp/train_cifp.py" in stdout


@pytest.mark.host
@pytest.mark.distributed
@pytest.mark.slow
def test_launcher_runs_tface_master_training_on_two_cpu_ranks(tmp_path):
    """TFace's real train.py, 3 steps on 2 gloo ranks; CUDA calls made no-ops by the test driver (TFACE_TEST_CPU)."""
    root = master_root()
    config = master_yaml(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(HERE / "tface_driver.py"), "--root", str(root), "--config", str(config)]
    env = {**os.environ, "TFACE_TEST_CPU": "1", "OMP_NUM_THREADS": "1"}
    # its own process group, so that a hang ends torchrun's workers too
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail("TFace's training did not finish in 300 s:\n" + stdout[-2000:] + stderr[-2000:])
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    log = stdout + stderr
    assert "Step_per_epoch = 3" in log and "Save checkpoint at epoch 1" in log
    assert "T_u = [" in log and "FPR mean = [" in log  # our statistics in TFace's LogHook line
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "Backbone_Epoch_1_checkpoint.pth").is_file()
    for rank in range(2):
        shard = torch.load(ckpt / f"HEAD_Epoch_1_Split_{rank}_checkpoint.pth", weights_only=True)
        assert list(shard) == ["faces"] and list(shard["faces"]) == ["kernel"]
        assert tuple(shard["faces"]["kernel"].shape) == (512, 6)
        assert torch.isfinite(shard["faces"]["kernel"]).all()
