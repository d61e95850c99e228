"""Cheap, valid inputs for the robustness corpus; each case copies what it needs and then damages it.

Everything here is tiny (a 4-class record set of 112x112 JPEGs, a linear ONNX
model, a width-4 IResNet-18 trained for two steps) so that the whole corpus
runs in seconds.
"""
from __future__ import annotations

import csv
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EVAL_TESTS = Path(__file__).resolve().parents[1] / "eval"
if str(EVAL_TESTS) not in sys.path:
    sys.path.insert(0, str(EVAL_TESTS))

from eval_fixtures import aligned_faces, jpeg, tiny_linear_onnx, write_bfw, write_bin, write_rfw  # noqa: E402

NUM_CLASSES, PER_CLASS = 4, 4
EMB = 8
RFW_RACES = ("African", "Asian", "Caucasian", "Indian")  # all four: no missing-race warning
N_PAIRS = 20  # per group: at least the 10 folds of the pair protocols

RECIPE = """\
from easydict import EasyDict as edict
config = edict()
config.network = "r18"
config.backbone_params = {{"width": 4, "stem_stride": 2}}
config.embedding_size = 16
config.rec = {rec!r}
config.output = {output!r}
config.num_epoch = 1
config.max_steps = 2
config.save_every = 1
config.batch_size = 8
config.lr = 0.1
config.num_workers = 0
config.frequent = 1
config.tensorboard = False
config.loss = "cosface"
config.loss_params = {{"s": 16.0, "m": 0.2}}
"""


def recipe_text(rec: Path | str, output: Path | str, extra: str = "") -> str:
    """A tiny recipe on ``rec`` writing to ``output``; ``extra`` lines are appended."""
    return RECIPE.format(rec=str(rec), output=str(output)) + extra


def face_samples(num_classes: int = NUM_CLASSES, per_class: int = PER_CLASS, seed: int = 0):
    """``(label, 112x112 JPEG)`` samples: each class one colour pattern plus noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(num_classes, 4, 4, 3))
    for label in range(num_classes):
        for _ in range(per_class):
            img = np.kron(patterns[label], np.ones((28, 28, 1))) + rng.normal(0, 20, (112, 112, 3))
            yield label, jpeg(np.clip(img, 0, 255).astype(np.uint8))


def write_records(folder: Path, num_classes: int = NUM_CLASSES, per_class: int = PER_CLASS) -> Path:
    """A valid record set (train.rec/.idx, property, groups.tsv) in ``folder``."""
    from fpr_plugin.data.record_set import write_record_set

    groups = {c: (f"id{c}", "AB"[c % 2]) for c in range(num_classes)}
    write_record_set(folder, face_samples(num_classes, per_class), groups=groups)
    return folder


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """``data [N,3,112,112] -> Flatten -> MatMul -> fc1 [N, EMB]``."""
    tiny_linear_onnx(path, seed, EMB)
    return path


def bin_content(n_pairs: int = N_PAIRS, size: int = 112) -> tuple[list[np.ndarray], list[bool]]:
    """Faces and same-person flags of a valid ``.bin`` (``size`` x ``size`` images)."""
    faces = [f[:size, :size] for f in aligned_faces(2 * n_pairs)]
    return faces, [i % 2 == 0 for i in range(n_pairs)]


def write_image_tree(root: Path, identities: int = 3, per_identity: int = 2) -> Path:
    """``root/<group>/<identity>/<n>.jpg`` (112x112) for fpr-build-rec."""
    faces = aligned_faces(identities * per_identity)
    for i in range(identities):
        folder = root / "AB"[i % 2] / f"id{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            (folder / f"{n}.jpg").write_bytes(jpeg(faces[i * per_identity + n]))
    return root


def write_pairs_and_dense(root: Path, n_images: int = 8) -> dict:
    """``root/images/<k>.jpg`` (aligned), ``root/pairs.csv`` and ``root/dense.csv`` (relative paths)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k, face in enumerate(aligned_faces(n_images)):
        (root / "images" / f"{k}.jpg").write_bytes(jpeg(face))
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path1", "path2", "issame", "group"])
        for k in range(2 * N_PAIRS):  # N_PAIRS per group, genuine and impostor
            a = k % n_images
            writer.writerow([f"images/{a}.jpg", f"images/{(a + 1) % n_images}.jpg", int(k % 4 < 2), "AB"[k % 2]])
    with open(root / "dense.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "identity", "group"])
        for k in range(n_images):
            writer.writerow([f"images/{k}.jpg", f"id{k // 2}", "AB"[(k // 2) % 2]])
    return {"pairs": root / "pairs.csv", "dense": root / "dense.csv"}


FAKE_TFACE = {  # just enough of a TFace master checkout for the launcher's checks (no TFace code)
    "torchkit/__init__.py": "",
    "torchkit/head/__init__.py": "def get_head(key, dist_fc):\n    raise KeyError(key)\n",
    "torchkit/head/distfc/partial_fc.py": "",
    "torchkit/task/__init__.py": "",
    "torchkit/task/base_task.py": "",
    "train.py": "",
}

FAKE_ARCFACE_TORCH = {  # the files the launcher requires; configs/base.py holds a host-style config
    "train_v2.py": "raise SystemExit('the corpus never trains in the host')\n",
    "losses.py": "", "partial_fc_v2.py": "", "lr_scheduler.py": "", "utils/__init__.py": "",
    "utils/utils_config.py": "", "configs/__init__.py": "",
    "configs/base.py": (
        "from easydict import EasyDict as edict\nconfig = edict()\nconfig.margin_list = (1.0, 0.0, 0.4)\n"
        "config.network = 'r50'\nconfig.resume = False\nconfig.output = None\nconfig.embedding_size = 512\n"
        "config.sample_rate = 1.0\nconfig.fp16 = False\nconfig.momentum = 0.9\nconfig.weight_decay = 5e-4\n"
        "config.batch_size = 128\nconfig.lr = 0.1\nconfig.verbose = 2000\nconfig.frequent = 10\n"
        "config.dali = False\nconfig.seed = 2048\nconfig.num_workers = 2\nconfig.rec = ''\n"
        "config.num_classes = None\nconfig.num_image = None\nconfig.num_epoch = 20\nconfig.warmup_epoch = 0\n"
        "config.val_targets = []\nconfig.optimizer = 'sgd'\nconfig.gradient_acc = 1\nconfig.save_all_states = False\n"
        "config.wandb_log = False\n"),
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: text}`` under ``root``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@dataclass(frozen=True)
class Assets:
    """Valid inputs, built once per session (cases copy them before damaging them)."""

    root: Path
    records: Path  # a record set folder
    run: Path  # a finished 2-step fpr-train run (config.json, model.pt, checkpoints/)
    onnx: Path
    image_tree: Path
    rfw: Path
    bfw: Path
    bin: Path
    csv_root: Path  # images/, pairs.csv, dense.csv
    tface_root: Path
    arcface_root: Path

    def copy(self, name: str, work: Path, as_name: str | None = None) -> Path:
        """Copy the asset ``name`` (an attribute) into ``work``; returns the copy."""
        src = getattr(self, name)
        dst = work / (as_name or src.name)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
        return dst


def build_assets(root: Path) -> Assets:
    """Build every asset under ``root`` (about two seconds, most of it the 2-step training)."""
    from fpr_plugin.train.cli import main as train_main

    root.mkdir(parents=True, exist_ok=True)
    records = write_records(root / "records")
    recipe = root / "recipe.py"  # the name the cases' recipes have: --resume compares it
    recipe.write_text(recipe_text(records, root / "run"))
    status = train_main([str(recipe)])
    assert status == 0, "the valid tiny training must succeed"
    onnx_path = tiny_onnx(root / "tiny.onnx")
    image_tree = write_image_tree(root / "faces")
    write_rfw(root / "RFW", races=RFW_RACES, ids_per_race=2, images_per_id=2)
    write_bfw(root / "bfw", ids_per_group=2, images_per_id=2)
    write_bin(root / "lfw.bin", *bin_content())
    csv_root = root / "csv"
    write_pairs_and_dense(csv_root)
    tface_root = write_tree(root / "tface" / "recognition", FAKE_TFACE)
    arcface_root = write_tree(root / "arcface_torch", FAKE_ARCFACE_TORCH)
    return Assets(root, records, root / "run", onnx_path, image_tree, root / "RFW", root / "bfw", root / "lfw.bin",
                  csv_root, tface_root, arcface_root)
