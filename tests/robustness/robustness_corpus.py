"""The corpus of bad inputs: each case builds one malformed input and names the command line to run on it.

A case's ``make(work, assets)`` writes what the command needs into ``work``
(copies of valid assets, then damaged) and returns the argv. The test runs the
command in ``work`` and asserts exit status 2 (unless the case says otherwise),
one line ``<prog>: error: ...`` on stderr holding every needle (``{work}`` is
replaced by the folder), no traceback, nothing executed from a malicious file,
and ``work`` byte for byte as it was: no output, no temporary, no lock.

``KNOWN_FAILING`` maps the ids of cases that fail because of a bug outside this
corpus's files to the symptom; the test skips them with that reason (listed in
pytest's summary, and counted in the corpus summary).
"""
from __future__ import annotations

import builtins
import os
import pickle
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from robustness_assets import Assets, aligned_faces, bin_content, jpeg, recipe_text, write_bin, write_records

MARKER = "PWNED"  # what a malicious pickle would create in the case's folder if it ran

PROGS = {  # cli -> (module, function, program name in the error line)
    "fpr-train": ("fpr_plugin.train.cli", "main", "fpr-train"),
    "fpr-eval": ("fpr_plugin.eval.cli", "main", "fpr-eval"),
    "fpr-export": ("fpr_plugin.export", "main", "fpr-export"),
    "fpr-build-rec": ("fpr_plugin.data.build_rec", "main", "fpr-build-rec"),
    "fpr-make-synthetic": ("fpr_plugin.data.synthetic", "main", "fpr-make-synthetic"),
    "fpr-demo": ("fpr_plugin.demo", "main", "fpr-demo"),
    "tface": ("fpr_plugin.hosts.tface.launcher", "main", "python -m fpr_plugin.hosts.tface"),
    "arcface_torch": ("fpr_plugin.hosts.arcface_torch.launcher", "main", "python -m fpr_plugin.hosts.arcface_torch"),
}


@dataclass(frozen=True)
class Case:
    """One bad input: the command it is given to, how to make it, what the error line must name."""

    id: str
    cli: str
    make: Callable[[Path, Assets], Sequence[str]]
    needles: tuple[str, ...]
    exit_code: int = 2
    notes: tuple[str, ...] = field(default=())  # prefixes of stderr lines allowed before the error (warnings)
    warned: bool = False  # not an error: the input is skipped with a warning naming it, and the run goes on
    also: tuple[str, ...] = field(default=())  # for a warned case: what the output must also say somewhere

    @property
    def prog(self) -> str:
        """The program name the error line starts with."""
        return PROGS[self.cli][2]


CASES: list[Case] = []

#: case id -> one-line symptom, for cases that fail because of a bug outside the corpus's files; the test
#: skips them naming the case and the symptom (pytest's summary lists every one). Remove an entry once fixed.
KNOWN_FAILING: dict[str, str] = {
}


def case(case_id: str, cli: str, *needles: str, exit_code: int = 2, notes: tuple[str, ...] = (),
         warned: bool = False, also: tuple[str, ...] = ()):
    """Register ``make`` as the case ``case_id`` run by ``cli``; the error line must hold every needle."""
    def register(make: Callable[[Path, Assets], Sequence[str]]):
        if any(c.id == case_id for c in CASES):
            raise ValueError(f"duplicate corpus case {case_id}")
        CASES.append(Case(case_id, cli, make, tuple(needles), 0 if warned else exit_code, notes, warned, also))
        return make
    return register


# ------------------------------------------------------------------------------------------ damage helpers

def _offsets(rec_dir: Path) -> dict[int, int]:
    lines = (rec_dir / "train.idx").read_text().split()
    return {int(k): int(v) for k, v in zip(lines[::2], lines[1::2])}


def patch(path: Path, offset: int, data: bytes) -> None:
    """Overwrite ``len(data)`` bytes of ``path`` at ``offset``."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def flip_bit(path: Path, offset: int, bit: int) -> None:
    """Flip one bit of one byte of ``path``."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes."""
    with open(path, "r+b") as handle:
        handle.truncate(size)


def set_label(rec_dir: Path, key: int, value: float) -> None:
    """Write ``value`` as the float label of the image record ``key`` (frame 8 bytes, then flag, label)."""
    patch(rec_dir / "train.rec", _offsets(rec_dir)[key] + 8 + 4, struct.pack("<f", value))


class Reduce:
    """An object whose unpickling calls ``fn(*args)``: what a malicious pickle does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def malicious_payloads(work: Path) -> dict[str, Reduce]:
    """Objects that would create ``work/PWNED`` when unpickled, by several routes."""
    marker = str(work / MARKER)
    return {
        "os-system": Reduce(os.system, f"touch {marker}"),
        "os-mkdir": Reduce(os.mkdir, marker),
        "builtins-exec": Reduce(builtins.exec, f"open({marker!r}, 'w').close()"),
        "subprocess-call": Reduce(subprocess.call, ["touch", marker]),
    }


def torch_save(obj, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


# ------------------------------------------------------------------------------------------ fpr-train

def train_argv(work: Path, assets: Assets, extra: str = "", *argv: str, records: bool = True) -> list[str]:
    """A copy of the records in ``work/rec``, a recipe ``work/recipe.py`` writing to ``work/out``."""
    if records:
        assets.copy("records", work, "rec")
    recipe = work / "recipe.py"
    recipe.write_text(recipe_text(work / "rec", work / "out", extra))
    return [str(recipe), *argv]


def _records_case(case_id: str, damage: Callable[[Path], None], *needles: str) -> None:
    @case(f"train-{case_id}", "fpr-train", *needles)
    def make(work, assets):
        argv = train_argv(work, assets)
        damage(work / "rec")
        return argv


def _header_claims(rec: Path, first: float, end: float) -> None:
    patch(rec / "train.rec", _offsets(rec)[0] + 8 + 24, struct.pack("<2f", first, end))


_records_case("header-claims-1e9-images", lambda rec: _header_claims(rec, 1e9, 1e9 + 4),
              "{work}/rec/train.rec, header record (key 0)", "999999999 images", "train.idx")
_records_case("header-nan", lambda rec: _header_claims(rec, float("nan"), 5.0),
              "{work}/rec/train.rec, header record (key 0)", "not two finite integers")
_records_case("header-identities-disagree-with-property",
              lambda rec: _header_claims(rec, 17.0, 30.0), "{work}/rec/property", "num_classes=4")
_records_case("rec-truncated-to-half", lambda rec: truncate(rec / "train.rec", (rec / "train.rec").stat().st_size // 2),
              "{work}/rec/train.idx", "past the end of {work}/rec/train.rec")
_records_case("rec-empty", lambda rec: truncate(rec / "train.rec", 0), "{work}/rec/train.idx", "past the end")
_records_case("rec-truncated-in-first-image",
              lambda rec: truncate(rec / "train.rec", _offsets(rec)[1] + 100), "{work}/rec/train.rec")
_records_case("rec-truncated-in-middle-image",
              lambda rec: truncate(rec / "train.rec", _offsets(rec)[9] + 100), "{work}/rec/train.rec")
_records_case("rec-bitflip-magic-first-image", lambda rec: flip_bit(rec / "train.rec", _offsets(rec)[1] + 1, 3),
              "{work}/rec/train.rec", "bad magic", "key 1")
_records_case("rec-bitflip-magic-middle-image", lambda rec: flip_bit(rec / "train.rec", _offsets(rec)[9] + 1, 3),
              "{work}/rec/train.rec", "bad magic", "key 9")
_records_case("rec-bitflip-length-first-image", lambda rec: flip_bit(rec / "train.rec", _offsets(rec)[1] + 6, 4),
              "{work}/rec/train.rec", "key 1")
_records_case("rec-bitflip-continuation-flag", lambda rec: flip_bit(rec / "train.rec", _offsets(rec)[1] + 7, 6),
              "{work}/rec/train.rec", "continuation flag")
_records_case("rec-image-bytes-garbage-first",
              lambda rec: patch(rec / "train.rec", _offsets(rec)[1] + 8 + 24, b"\x00" * 64),
              "{work}/rec/train.rec, key 1", "decode")
_records_case("idx-missing", lambda rec: (rec / "train.idx").unlink(), "{work}/rec", "train.idx")
_records_case("idx-truncated-mid-line",
              lambda rec: truncate(rec / "train.idx", (rec / "train.idx").read_bytes().index(b"\t", 30) + 1),
              "{work}/rec/train.idx, line")
_records_case("idx-bitflip-digit-to-letter",
              lambda rec: flip_bit(rec / "train.idx", (rec / "train.idx").read_bytes().index(b"\t", 10) + 1, 6),
              "{work}/rec/train.idx, line", "key<TAB>offset")
_records_case("idx-offset-into-a-record",
              lambda rec: (rec / "train.idx").write_text(
                  (rec / "train.idx").read_text().replace(f"1\t{_offsets(rec)[1]}\n", f"1\t{_offsets(rec)[1] + 4}\n")),
              "{work}/rec/train.rec", "key 1")
_records_case("idx-duplicate-key",
              lambda rec: (rec / "train.idx").write_text((rec / "train.idx").read_text() + "3\t0\n"),
              "{work}/rec/train.idx", "key 3 is listed more than once")
_records_case("idx-binary", lambda rec: (rec / "train.idx").write_bytes(bytes(range(256)) * 4), "{work}/rec/train.idx")
_records_case("label-nan-first-image", lambda rec: set_label(rec, 1, float("nan")),
              "{work}/rec/train.rec, key 1", "label nan")
_records_case("label-nan-middle-image", lambda rec: set_label(rec, 9, float("nan")),
              "{work}/rec/train.rec, key 9", "label nan")
_records_case("label-inf", lambda rec: set_label(rec, 1, float("inf")), "{work}/rec/train.rec, key 1", "label inf")
_records_case("label-fraction", lambda rec: set_label(rec, 1, 1.5), "{work}/rec/train.rec, key 1", "label 1.5")
_records_case("label-out-of-range", lambda rec: set_label(rec, 1, 99.0), "{work}/rec/train.rec, key 1", "label 99")
_records_case("label-negative", lambda rec: set_label(rec, 1, -1.0), "{work}/rec/train.rec, key 1", "label -1")
_records_case("label-out-of-range-middle-image", lambda rec: set_label(rec, 10, 1e6),
              "{work}/rec/train.rec, key 10", "label 1000000")
_records_case("property-binary", lambda rec: (rec / "property").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff"),
              "{work}/rec/property", "not a UTF-8 text file")
_records_case("property-nul-bytes", lambda rec: (rec / "property").write_bytes(b"4,112,112\x00\x00"),
              "{work}/rec/property", "NUL")
_records_case("property-not-numbers", lambda rec: (rec / "property").write_text("four,112,112\n"),
              "{work}/rec/property", "num_classes,height,width")
_records_case("property-wrong-image-size", lambda rec: (rec / "property").write_text("4,64,64\n"),
              "{work}/rec/property", "64x64", "112x112")
_records_case("property-zero-classes", lambda rec: (rec / "property").write_text("0,112,112\n"),
              "{work}/rec/property", "positive")
_records_case("property-huge-number", lambda rec: (rec / "property").write_text("4,112,1" + "0" * 30 + "\n"),
              "{work}/rec/property")
_records_case("groups-binary", lambda rec: (rec / "groups.tsv").write_bytes(bytes(range(128, 256))),
              "{work}/rec/groups.tsv", "not a UTF-8 text file")
_records_case("groups-class-out-of-range", lambda rec: (rec / "groups.tsv").write_text(
    (rec / "groups.tsv").read_text() + "99\tid99\tA\n"), "{work}/rec/groups.tsv", "99")
_records_case("rec-is-a-file", lambda rec: (shutil.rmtree(rec), rec.write_text("not a folder\n")), "{work}/rec")
_records_case("groups-bad-line", lambda rec: (rec / "groups.tsv").write_text("0\tid0\tA\nzero\tid1\n"),
              "{work}/rec/groups.tsv, line 2")


def _recipe_case(case_id: str, extra: str, *needles: str, argv: Sequence[str] = ()) -> None:
    @case(f"train-{case_id}", "fpr-train", *needles)
    def make(work, assets):
        return train_argv(work, assets, extra, *argv)


_recipe_case("recipe-syntax-error", "config.lr = (0.1\n", "{work}/recipe.py", "line")
_recipe_case("recipe-raises", "config.lr = 1 / 0\n", "{work}/recipe.py", "ZeroDivisionError")
_recipe_case("recipe-wrong-type", "config.batch_size = 'big'\n", "{work}/recipe.py", "batch_size", "'big'")
_recipe_case("recipe-unknown-key", "config.lrr = 0.05\n", "{work}/recipe.py", "lrr", "'lr'")
_recipe_case("recipe-gamma_u-2", "config.loss = 'fpr_penalty'\nconfig.loss_params = {'s': 16.0, 'm': 0.2, "
             "'gamma_u': 2.0}\n", "{work}/recipe.py", "gamma_u", "2.0")
_recipe_case("recipe-network-r999", "config.network = 'r999'\n", "{work}/recipe.py", "r999")
_recipe_case("recipe-lr-1e999", "config.lr = 1e999\n", "{work}/recipe.py", "lr", "inf")
_recipe_case("recipe-lr-steps-decreasing", "config.lr_steps = [3, 1]\n", "{work}/recipe.py", "lr_steps")
_recipe_case("recipe-rec-missing", "config.rec = '/nonexistent/records'\n", "/nonexistent/records")
_recipe_case("recipe-loss-unknown", "config.loss = 'cosfase'\n", "{work}/recipe.py", "cosfase", "cosface")
_recipe_case("set-gamma_u-2", "", "loss_params.gamma_u", "2",
             argv=["--loss", "fpr_penalty", "--set", "loss_params.gamma_u=2"])
_recipe_case("set-network-r999", "", "network", "r999", argv=["--set", "network=r999"])
_recipe_case("set-lr-1e999", "", "lr=1e999", argv=["--set", "lr=1e999"])
_recipe_case("set-lr-nan", "", "lr=nan", argv=["--set", "lr=nan"])
_recipe_case("set-lr-not-a-number", "", "lr=fast", argv=["--set", "lr=fast"])
_recipe_case("set-unknown-key", "", "batchsize", "batch_size", argv=["--set", "batchsize=8"])
_recipe_case("set-without-equals", "", "'lr'", "key=value", argv=["--set", "lr"])
_recipe_case("set-batch-size-negative", "", "batch_size", "-4", argv=["--set", "batch_size=-4"])
_recipe_case("set-workers-negative", "", "num_workers", "-3", argv=["--set", "num_workers=-3"])
_recipe_case("set-momentum-out-of-range", "", "momentum", "1.5", argv=["--set", "momentum=1.5"])
_recipe_case("loss-unknown", "", "nosuchloss", argv=["--loss", "nosuchloss"])


@case("train-recipe-missing", "fpr-train", "{work}/nope.py")
def _(work, assets):
    return [str(work / "nope.py")]


@case("train-recipe-binary", "fpr-train", "{work}/recipe.py")
def _(work, assets):
    (work / "recipe.py").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    return [str(work / "recipe.py")]


@case("train-recipe-defines-no-config", "fpr-train", "{work}/recipe.py", "config")
def _(work, assets):
    (work / "recipe.py").write_text("lr = 0.1\n")
    return [str(work / "recipe.py")]


@case("train-output-is-a-file", "fpr-train", "{work}/out")
def _(work, assets):
    argv = train_argv(work, assets)
    (work / "out").write_text("not a folder\n")
    return argv


@case("train-output-holds-another-run", "fpr-train", "{work}/out", "--resume", "--overwrite")
def _(work, assets):
    assets.copy("run", work, "out")
    return train_argv(work, assets, "config.lr = 0.05\n")


@case("train-output-in-use", "fpr-train", "{work}/out", "in use", f"pid {os.getppid()}")
def _(work, assets):
    import json
    import socket

    (work / "out").mkdir()
    (work / "out" / ".fpr.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                        "prog": "fpr-train", "started": "earlier"}) + "\n")
    return train_argv(work, assets)


@case("train-resume-changed-key", "fpr-train", "{work}/out", "lr")
def _(work, assets):
    assets.copy("run", work, "out")
    return train_argv(work, assets, "", "--resume", "--set", "lr=0.05")


def _resume_case(case_id: str, write: Callable[[Path, Path], None], *needles: str) -> None:
    """The newest of two checkpoints damaged by ``write``: --resume skips it, naming it, and resumes the older."""
    @case(f"train-resume-{case_id}", "fpr-train", *needles, warned=True,
          also=("resumed from {work}/out/checkpoints/step_00000001 ",))
    def make(work, assets):
        assets.copy("run", work, "out")
        argv = train_argv(work, assets, "config.max_steps = 3\n", "--resume")
        write(sorted((work / "out" / "checkpoints").iterdir())[-1] / "rank_0_of_1.pt", work)
        return argv


_resume_case("zero-byte-checkpoint", lambda path, work: truncate(path, 0),
             "{work}/out/checkpoints/step_00000002/rank_0_of_1.pt")
_resume_case("truncated-checkpoint", lambda path, work: truncate(path, path.stat().st_size // 2),
             "{work}/out/checkpoints/step_00000002/rank_0_of_1.pt")
_resume_case("malicious-checkpoint", lambda path, work: torch_save(
    {"backbone": malicious_payloads(work)["os-system"]}, path), "{work}/out/checkpoints/step_00000002/rank_0_of_1.pt")
_resume_case("checkpoint-holds-a-list", lambda path, work: torch_save([1, 2, 3], path),
             "{work}/out/checkpoints/step_00000002/rank_0_of_1.pt")


def _init_backbone_case(case_id: str, write: Callable[[Path, Path], None], *needles: str) -> None:
    @case(f"train-init-backbone-{case_id}", "fpr-train", *needles)
    def make(work, assets):
        write(work / "backbone.pth", work)
        return train_argv(work, assets, f"config.init_backbone = {str(work / 'backbone.pth')!r}\n")


_init_backbone_case("missing", lambda path, work: None, "{work}/backbone.pth")
_init_backbone_case("zero-byte", lambda path, work: path.write_bytes(b""), "{work}/backbone.pth")
_init_backbone_case("malicious", lambda path, work: torch_save(malicious_payloads(work)["os-mkdir"], path),
                    "{work}/backbone.pth")
_init_backbone_case("text-file", lambda path, work: path.write_text("weights\n"), "{work}/backbone.pth")
_init_backbone_case("nan-weights", lambda path, work: torch_save(
    {"conv1.weight": _tensor_of(float("nan"), (4, 3, 3, 3))}, path), "{work}/backbone.pth", "conv1.weight",
    "non-finite")


def _tensor_of(value: float, shape: tuple[int, ...]):
    import torch

    return torch.full(shape, value)


# ------------------------------------------------------------------------------------------ fpr-eval

def eval_argv(work: Path, assets: Assets, *sets: str, model: str | None = None) -> list[str]:
    """``--model`` (a copy of the tiny ONNX model unless given), the set arguments, ``--output work/out``."""
    if model is None:
        model = str(assets.copy("onnx", work))
    return ["--model", model, *sets, "--output", str(work / "out"), "--no-progress", "--fpr", "0.1"]


def _eval_model_case(case_id: str, write: Callable[[Path], None], *needles: str) -> None:
    @case(f"eval-model-{case_id}", "fpr-eval", *needles)
    def make(work, assets):
        write(work / "model.onnx")
        return eval_argv(work, assets, "--bin", str(assets.copy("bin", work)), model=str(work / "model.onnx"))


_eval_model_case("zip-file", lambda p: p.write_bytes(b"PK\x03\x04 a zip file, not an ONNX graph"), "{work}/model.onnx")
_eval_model_case("zero-byte", lambda p: p.write_bytes(b""), "{work}/model.onnx")
_eval_model_case("missing", lambda p: None, "{work}/model.onnx")
_eval_model_case("torch-checkpoint", lambda p: torch_save({"w": 1}, p), "{work}/model.onnx")


@case("eval-model-truncated-onnx", "fpr-eval", "{work}/tiny.onnx")
def _(work, assets):
    model = assets.copy("onnx", work)
    truncate(model, model.stat().st_size // 3)
    return eval_argv(work, assets, "--bin", str(assets.copy("bin", work)), model=str(model))


@case("eval-output-is-a-file", "fpr-eval", "{work}/out", "not a folder")
def _(work, assets):
    (work / "out").write_text("keep me\n")
    return eval_argv(work, assets, "--bin", str(assets.copy("bin", work)))


@case("eval-output-in-use", "fpr-eval", "{work}/out", "in use", f"pid {os.getppid()}")
def _(work, assets):
    import json
    import socket

    (work / "out").mkdir()
    (work / "out" / ".fpr.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                        "prog": "fpr-eval", "started": "earlier"}) + "\n")
    return eval_argv(work, assets, "--bin", str(assets.copy("bin", work)))


@case("eval-fpr-out-of-range", "fpr-eval", "--fpr", "2")
def _(work, assets):
    return eval_argv(work, assets, "--bin", str(assets.copy("bin", work))) + ["--fpr", "2"]


@case("eval-chunk-size-zero", "fpr-eval", "--chunk-size", "0")
def _(work, assets):
    return eval_argv(work, assets, "--bin", str(assets.copy("bin", work))) + ["--chunk-size", "0"]


@case("eval-no-test-set", "fpr-eval", "no test set")
def _(work, assets):
    return eval_argv(work, assets)


def _bin_case(case_id: str, write: Callable[[Path, Path], None], *needles: str) -> None:
    @case(f"eval-bin-{case_id}", "fpr-eval", *needles)
    def make(work, assets):
        write(work / "lfw.bin", work)
        return eval_argv(work, assets, "--bin", str(work / "lfw.bin"))


for _name in ("os-system", "os-mkdir", "builtins-exec", "subprocess-call"):
    _bin_case(f"malicious-pickle-{_name}",
              lambda path, work, _name=_name: path.write_bytes(pickle.dumps(malicious_payloads(work)[_name])),
              "{work}/lfw.bin", "refusing to load global")
_bin_case("malicious-object-inside-the-image-list", lambda path, work: path.write_bytes(pickle.dumps(
    ([jpeg(aligned_faces(1)[0]), malicious_payloads(work)["os-system"]], [True]))),
    "{work}/lfw.bin", "refusing to load global")
_bin_case("malicious-pickle-protocol-0", lambda path, work: path.write_bytes(
    b"cposix\nsystem\n(Vtouch " + str(work / MARKER).encode() + b"\ntR."), "{work}/lfw.bin", "posix.system")
_bin_case("pickle-persistent-id", lambda path, work: path.write_bytes(b"\x80\x02Vx\nQ."), "{work}/lfw.bin",
          "persistent id")
_bin_case("truncated", lambda path, work: (write_bin(path, *bin_content()), truncate(path, path.stat().st_size // 2)),
          "{work}/lfw.bin")
_bin_case("fewer-pairs-than-folds", lambda path, work: write_bin(path, *bin_content(n_pairs=4)), "{work}/lfw.bin",
          "4 pairs")
_bin_case("zero-byte", lambda path, work: path.write_bytes(b""), "{work}/lfw.bin")
_bin_case("text-file", lambda path, work: path.write_text("hello\n"), "{work}/lfw.bin")
_bin_case("50x50-images", lambda path, work: write_bin(path, *bin_content(size=50)), "{work}/lfw.bin", "50x50")
_bin_case("undecodable-first-image", lambda path, work: path.write_bytes(pickle.dumps(
    ([b"not a jpeg"] + [jpeg(f) for f in bin_content()[0][1:]], bin_content()[1]))), "{work}/lfw.bin", "image #0")
_bin_case("undecodable-later-image", lambda path, work: path.write_bytes(pickle.dumps(
    ([jpeg(f) for f in bin_content()[0][:-1]] + [b"\xff\xd8 not a jpeg"], bin_content()[1]))), "{work}/lfw.bin",
    "image #39")
_bin_case("odd-image-count", lambda path, work: path.write_bytes(pickle.dumps(
    ([jpeg(f) for f in aligned_faces(3)], [True]))), "{work}/lfw.bin", "3 images for 1 pairs")
_bin_case("flags-not-booleans", lambda path, work: path.write_bytes(pickle.dumps(
    ([jpeg(f) for f in aligned_faces(2)], ["yes"]))), "{work}/lfw.bin", "same-person flags")
_bin_case("not-a-pair", lambda path, work: path.write_bytes(pickle.dumps({"images": []})), "{work}/lfw.bin")


def _csv_case(case_id: str, kind: str, edit: Callable[[str, Path], str], *needles: str) -> None:
    @case(f"eval-{kind}-csv-{case_id}", "fpr-eval", *needles)
    def make(work, assets):
        root = assets.copy("csv_root", work)
        table = root / f"{kind}.csv"
        table.write_bytes(edit(table.read_text(), root).encode("utf-8", "surrogateescape"))  # \udcXX: a raw byte
        return eval_argv(work, assets, f"--{kind}", str(table))


_csv_case("missing-column", "pairs", lambda t, r: t.replace("path1,path2,issame,group", "path1,path2,group"),
          "{work}/csv/pairs.csv", "issame")
_csv_case("row-missing-fields", "pairs", lambda t, r: t + "images/0.jpg\n", "{work}/csv/pairs.csv:")
_csv_case("bad-issame", "pairs", lambda t, r: t + "images/0.jpg,images/1.jpg,maybe,A\n", "{work}/csv/pairs.csv:",
          "maybe")
_csv_case("bad-fold", "pairs", lambda t, r: t.replace("issame,group", "issame,group,fold").replace(",A\n", ",A,x\n")
          .replace(",B\n", ",B,1\n"), "{work}/csv/pairs.csv:", "fold")
_csv_case("absent-image", "pairs", lambda t, r: t + "images/0.jpg,images/nope.jpg,1,A\n", "{work}/csv/pairs.csv:",
          "nope.jpg")
_csv_case("absolute-path-to-missing-image", "pairs", lambda t, r: t + "/nonexistent/face.jpg,images/1.jpg,1,A\n",
          "{work}/csv/pairs.csv:", "/nonexistent/face.jpg")
_csv_case("binary", "pairs", lambda t, r: "\x00\x01\x02\ufffe\n", "{work}/csv/pairs.csv")
_csv_case("empty", "pairs", lambda t, r: "", "{work}/csv/pairs.csv")
_csv_case("not-utf8", "pairs", lambda t, r: t.replace("images/0.jpg", "images/\udcff.jpg"), "{work}/csv/pairs.csv")
_csv_case("fewer-pairs-than-folds", "pairs", lambda t, r: "\n".join(t.splitlines()[:9]) + "\n", "{work}/csv/pairs.csv",
          "pairs")
_csv_case("image-not-decodable", "pairs", lambda t, r: (
    (r / "images" / "0.jpg").write_bytes(b"\xff\xd8 not really a jpeg"), t)[1], "{work}/csv/images/0.jpg")
_csv_case("missing-column", "dense", lambda t, r: t.replace("path,identity,group", "path,identity"),
          "{work}/csv/dense.csv", "group")
_csv_case("absent-image", "dense", lambda t, r: t + "images/nope.jpg,id9,A\n", "{work}/csv/dense.csv:", "nope.jpg")
_csv_case("absolute-path-to-missing-image", "dense", lambda t, r: t + "/nonexistent/face.jpg,id9,A\n",
          "{work}/csv/dense.csv:", "/nonexistent/face.jpg")
_csv_case("bad-landmark-numbers", "dense", lambda t, r: "path,identity,group," + ",".join(
    f"{a}{i}" for i in range(1, 6) for a in "xy") + "\nimages/0.jpg,id0,A," + ",".join(["x"] * 10) + "\n",
    "{work}/csv/dense.csv:", "landmark")
_csv_case("image-listed-twice", "dense", lambda t, r: t + "images/0.jpg,id0,A\n", "{work}/csv/dense.csv:", "twice")
_csv_case("binary", "dense", lambda t, r: "\x00" * 40, "{work}/csv/dense.csv")


def _damaged_set_case(kind: str) -> Callable[..., None]:
    """A registrar of ``eval-<kind>-<id>`` cases: the ``kind`` asset copied, damaged, given as ``--<kind>``."""
    def register(case_id: str, damage: Callable[[Path], None], *needles: str) -> None:
        @case(f"eval-{kind}-{case_id}", "fpr-eval", *needles)
        def make(work, assets):
            root = assets.copy(kind, work)
            damage(root)
            return eval_argv(work, assets, f"--{kind}", str(root))
    return register


_rfw_case = _damaged_set_case("rfw")


_rfw_case("not-a-folder", lambda root: shutil.rmtree(root), "{work}/RFW")
_rfw_case("no-txts", lambda root: shutil.rmtree(root / "test" / "txts"), "{work}/RFW")
_rfw_case("pairs-line-malformed", lambda root: (root / "test/txts/Asian/Asian_pairs.txt").write_text(
    (root / "test/txts/Asian/Asian_pairs.txt").read_text() + "m.0as0x\tone\ttwo\tthree\tfour\n"),
    "{work}/RFW/test/txts/Asian/Asian_pairs.txt")
_rfw_case("pairs-image-absent", lambda root: (root / "test/txts/Asian/Asian_pairs.txt").write_text(
    (root / "test/txts/Asian/Asian_pairs.txt").read_text() + "m.0as0x\t1\t9\n"), "Asian", "m.0as0x")
_rfw_case("lmk-not-numbers", lambda root: (root / "test/txts/Asian/Asian_lmk.txt").write_text(
    "./test/data/Asian/m.0as0x/m.0as0x_0001.jpg\t0\t" + "\t".join(["x"] * 10) + "\n"),
    "{work}/RFW/test/txts/Asian/Asian_lmk.txt")
_rfw_case("lmk-binary", lambda root: (root / "test/txts/Asian/Asian_lmk.txt").write_bytes(bytes(range(256))),
          "{work}/RFW/test/txts/Asian/Asian_lmk.txt")
_rfw_case("image-not-decodable", lambda root: (root / "test/data/Asian/m.0as0x/m.0as0x_0001.jpg").write_bytes(
    b"\xff\xd8garbage"), "m.0as0x_0001.jpg")


_bfw_case = _damaged_set_case("bfw")


_BFW_TABLE = "bfw-v0.1.5-datatable.csv"
_bfw_case("no-datatable", lambda root: (root / _BFW_TABLE).unlink(), "{work}/bfw")
_bfw_case("missing-columns", lambda root: (root / _BFW_TABLE).write_text("fold,p1,p2\n1,a.jpg,b.jpg\n"),
          f"{{work}}/bfw/{_BFW_TABLE}")
_bfw_case("image-absent", lambda root: (root / _BFW_TABLE).write_text(
    (root / _BFW_TABLE).read_text().replace("0001_01.jpg", "9999_01.jpg", 1)), "9999_01.jpg")
_bfw_case("bad-label", lambda root: (root / _BFW_TABLE).write_text(
    (root / _BFW_TABLE).read_text().replace(",1,n00", ",perhaps,n00", 1)), f"{{work}}/bfw/{_BFW_TABLE}:", "perhaps")
_bfw_case("binary-datatable", lambda root: (root / _BFW_TABLE).write_bytes(b"\x00\xff" * 64),
          f"{{work}}/bfw/{_BFW_TABLE}")


# ------------------------------------------------------------------------------------------ fpr-export

def _run_copy(work: Path, assets: Assets) -> Path:
    return assets.copy("run", work, "run")


def export_argv(model: Path, work: Path, *argv: str) -> list[str]:
    """``fpr-export MODEL --output work/model.onnx``."""
    return [str(model), "--output", str(work / "model.onnx"), *argv]


def _export_case(case_id: str, damage: Callable[[Path, Path], None], *needles: str, argv: Sequence[str] = ()) -> None:
    @case(f"export-{case_id}", "fpr-export", *needles)
    def make(work, assets):
        run = _run_copy(work, assets)
        damage(run / "model.pt", work)
        return export_argv(run / "model.pt", work, *argv)


_export_case("zero-byte-model", lambda p, w: truncate(p, 0), "{work}/run/model.pt")
_export_case("truncated-model", lambda p, w: truncate(p, p.stat().st_size // 2), "{work}/run/model.pt")
_export_case("text-file", lambda p, w: p.write_text("weights\n"), "{work}/run/model.pt")
_export_case("missing-model", lambda p, w: p.unlink(), "{work}/run/model.pt")
_export_case("malicious-model-zip", lambda p, w: torch_save({"conv1.weight": malicious_payloads(w)["os-system"]}, p),
             "{work}/run/model.pt")
_export_case("malicious-model-raw-pickle",
             lambda p, w: p.write_bytes(pickle.dumps(malicious_payloads(w)["builtins-exec"])),
             "{work}/run/model.pt")
_export_case("malicious-full-checkpoint", lambda p, w: torch_save(
    {"backbone": {}, "config": malicious_payloads(w)["subprocess-call"]}, p), "{work}/run/model.pt")


def _nan_weights(path: Path, work: Path) -> None:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    torch.save(state, path)


_export_case("nan-weights", _nan_weights, "{work}/run/model.pt", "non-finite")
_export_case("config-json-binary", lambda p, w: (p.parent / "config.json").write_bytes(b"\x00\xff\xfe" * 20),
             "{work}/run/config.json")
_export_case("config-json-not-json", lambda p, w: (p.parent / "config.json").write_text("{network: r18"),
             "{work}/run/config.json")
_export_case("network-r999", lambda p, w: None, "r999", argv=["--network", "r999"])
_export_case("batch-not-a-number", lambda p, w: None, "batch", "'zero'", argv=["--batch", "zero"])
_export_case("embedding-size-mismatch", lambda p, w: None, "embedding", argv=["--embedding-size", "999"])


@case("export-output-is-a-folder", "fpr-export", "{work}/model.onnx")
def _(work, assets):
    run = _run_copy(work, assets)
    (work / "model.onnx").mkdir()
    (work / "model.onnx" / "keep.txt").write_text("keep me\n")
    return export_argv(run / "model.pt", work)


@case("export-output-parent-is-a-file", "fpr-export", "{work}/taken")
def _(work, assets):
    run = _run_copy(work, assets)
    (work / "taken").write_text("keep me\n")
    return [str(run / "model.pt"), "--output", str(work / "taken" / "model.onnx")]


@case("export-recipe-syntax-error", "fpr-export", "{work}/bad.py")
def _(work, assets):
    run = _run_copy(work, assets)
    (work / "bad.py").write_text("config = {\n")
    return export_argv(run / "model.pt", work, "--recipe", str(work / "bad.py"))


# ------------------------------------------------------------------------------------------ fpr-build-rec

def _build_case(case_id: str, damage: Callable[[Path, Path], Sequence[str]], *needles: str,
                notes: tuple[str, ...] = ()) -> None:
    @case(f"build-rec-{case_id}", "fpr-build-rec", *needles, notes=notes)
    def make(work, assets):
        src = assets.copy("image_tree", work)
        extra = damage(src, work)  # a list: more arguments
        return [str(src), str(work / "out"), "--no-progress", "--workers", "0",
                *(extra if isinstance(extra, list) else [])]


_build_case("workers-negative", lambda s, w: ["--workers", "-3"], "--workers", "-3")
_build_case("quality-zero", lambda s, w: ["--quality", "0"], "--quality", "0")
_build_case("source-missing", lambda s, w: shutil.rmtree(s), "{work}/faces")
_build_case("source-without-folders", lambda s, w: (shutil.rmtree(s), s.mkdir(), (s / "a.jpg").write_bytes(b"x")),
            "{work}/faces", "sub-folders")
_build_case("source-mixed-layout", lambda s, w: shutil.copy(next(s.rglob("*.jpg")), s / "A" / "stray.jpg"),
            "{work}/faces/A", "mixed layout")
_build_case("no-readable-image", lambda s, w: {p.write_bytes(b"\xff\xd8 broken") for p in s.rglob("*.jpg")},
            "{work}/faces", "no readable image", notes=("skipped ",))
_build_case("output-is-a-file", lambda s, w: (w / "out").write_text("keep me\n"), "{work}/out", "not a folder")
_build_case("output-holds-a-record-set", lambda s, w: write_records(w / "out"), "{work}/out", "--overwrite")
_build_case("landmarks-missing", lambda s, w: ["--landmarks", str(w / "nope.txt")], "{work}/nope.txt")
_build_case("landmarks-not-numbers", lambda s, w: ((w / "lmk.txt").write_text(
    "image x1 y1 x2 y2 x3 y3 x4 y4 x5 y5\nA/id0/0.jpg " + "a " * 10 + "\n"), ["--landmarks", str(w / "lmk.txt")])[1],
    "{work}/lmk.txt, line 2")
_build_case("landmarks-too-few-numbers", lambda s, w: ((w / "lmk.txt").write_text(
    "A/id0/0.jpg 1 2 3 4\n"), ["--landmarks", str(w / "lmk.txt")])[1], "{work}/lmk.txt, line 1", "10 numbers")
_build_case("landmarks-binary", lambda s, w: ((w / "lmk.txt").write_bytes(bytes(range(256))),
                                              ["--landmarks", str(w / "lmk.txt")])[1], "{work}/lmk.txt")


def _reindex_case(case_id: str, damage: Callable[[Path], None], *needles: str) -> None:
    @case(f"build-rec-reindex-{case_id}", "fpr-build-rec", *needles)
    def make(work, assets):
        rec = assets.copy("records", work, "rec")
        damage(rec)
        return ["--reindex", str(rec)]


_reindex_case("truncated-rec", lambda rec: truncate(rec / "train.rec", _offsets(rec)[5] + 50), "{work}/rec/train.rec",
              "truncated record")
_reindex_case("bitflip-magic", lambda rec: flip_bit(rec / "train.rec", _offsets(rec)[5], 0), "{work}/rec/train.rec",
              "bad magic")
_reindex_case("missing-folder", lambda rec: shutil.rmtree(rec), "{work}/rec")
_reindex_case("missing-rec", lambda rec: (rec / "train.rec").unlink(), "{work}/rec/train.rec")


# ------------------------------------------------------------------------------------------ fpr-make-synthetic

@case("make-synthetic-output-exists", "fpr-make-synthetic", "{work}/out", "--overwrite")
def _(work, assets):
    (work / "out").mkdir()
    (work / "out" / "keep.txt").write_text("keep me\n")
    return [str(work / "out"), "--size", "tiny", "--quiet"]


@case("make-synthetic-output-is-a-file", "fpr-make-synthetic", "{work}/out", "not a folder")
def _(work, assets):
    (work / "out").write_text("keep me\n")
    return [str(work / "out"), "--size", "tiny", "--quiet", "--overwrite"]


@case("make-synthetic-seed-negative", "fpr-make-synthetic", "--seed", "-1")
def _(work, assets):
    return [str(work / "out"), "--size", "tiny", "--quiet", "--seed", "-1"]


# ------------------------------------------------------------------------------------------ fpr-demo

@case("demo-output-is-a-file", "fpr-demo", "{work}/out")
def _(work, assets):
    (work / "out").write_text("keep me\n")
    return ["--output", str(work / "out"), "--size", "tiny", "--quiet"]


@case("demo-recipe-missing", "fpr-demo", "{work}/nope.py")
def _(work, assets):
    return ["--output", str(work / "out"), "--size", "tiny", "--quiet", "--recipe", str(work / "nope.py")]


@case("demo-set-lr-1e999", "fpr-demo", "lr=1e999")
def _(work, assets):
    return ["--output", str(work / "out"), "--size", "tiny", "--quiet", "--set", "lr=1e999"]


@case("demo-loss-unknown", "fpr-demo", "nosuchloss")
def _(work, assets):
    return ["--output", str(work / "out"), "--size", "tiny", "--quiet", "--losses", "cosface", "nosuchloss"]


# ------------------------------------------------------------------------------------------ hosts

def _tface_case(case_id: str, yaml_text: str, *needles: str) -> None:
    @case(f"tface-{case_id}", "tface", *needles)
    def make(work, assets):
        root = assets.copy("tface_root", work, "recognition")
        (work / "faces.txt").write_text("a.jpg\t0\n")
        (work / "train.yaml").write_text(yaml_text.format(work=work))
        return ["--root", str(root), "--config", str(work / "train.yaml"), "--dry-run"]


_TFACE_OK = "HEAD_NAME: FprPenalty\nINDEX_ROOT: {work}\nDATASETS:\n  - {{name: faces, batch_size: 4}}\n"
_tface_case("yaml-syntax-error", "HEAD_NAME: [unclosed\n", "{work}/train.yaml", "YAML")
_tface_case("yaml-not-a-mapping", "- just\n- a list\n", "{work}/train.yaml", "mapping")
_tface_case("yaml-binary", "\x00\x01\x02", "{work}/train.yaml")
_tface_case("gamma_u-2", _TFACE_OK + "FPR_PENALTY: {{gamma_u: 2}}\n", "{work}/train.yaml", "gamma_u")
_tface_case("unknown-loss-key", _TFACE_OK + "FPR_PENALTY: {{gama_u: 0.01}}\n", "{work}/train.yaml", "gama_u")
_tface_case("head-name-typo", _TFACE_OK.replace("FprPenalty", "FPRPenalty"), "{work}/train.yaml", "FprPenalty")
_tface_case("index-file-missing", _TFACE_OK.replace("faces,", "nofaces,"), "nofaces")


def _arcface_case(case_id: str, extra: str, *needles: str, argv: Sequence[str] = ()) -> None:
    @case(f"arcface-torch-{case_id}", "arcface_torch", *needles)
    def make(work, assets):
        root = assets.copy("arcface_root", work, "arcface_torch")
        recipe = train_argv(work, assets, extra)[0]
        return [recipe, "--root", str(root), "--dry-run", *argv]


_arcface_case("recipe-gamma_u-2", "config.loss = 'fpr_penalty'\nconfig.loss_params = {'s': 64.0, 'm': 0.35, "
              "'gamma_u': 2.0}\n", "{work}/recipe.py", "gamma_u")
_arcface_case("recipe-network-r999", "config.network = 'r999'\n", "{work}/recipe.py", "r999")
_arcface_case("set-lr-1e999", "", "lr=1e999", argv=["--set", "lr=1e999"])
_arcface_case("recipe-syntax-error", "config.lr = (\n", "{work}/recipe.py")


@case("arcface-torch-root-not-a-checkout", "arcface_torch", "{work}", "not an arcface_torch checkout")
def _(work, assets):
    return [train_argv(work, assets)[0], "--root", str(work), "--dry-run"]


# ------------------------------------------------------------------------------------------ subprocess runs

#: cases also run through the installed console script / ``python -m`` (the real entry point, no capture
#: tricks): one or two per command.
SUBPROCESS_CASES = (
    "train-header-claims-1e9-images", "train-recipe-syntax-error", "eval-model-zip-file",
    "eval-bin-malicious-pickle-os-system", "export-malicious-model-zip", "build-rec-workers-negative",
    "make-synthetic-output-is-a-file", "tface-yaml-syntax-error",
)


# ------------------------------------------------------------------------------------------ checking a run

def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: folders, files (size and SHA-1), links; hidden names included."""
    import hashlib

    entries: dict[str, tuple] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            entries[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            entries[rel] = ("dir",)
        else:
            data = path.read_bytes()
            entries[rel] = ("file", len(data), hashlib.sha1(data).hexdigest())
    return entries


def changes(before: dict[str, tuple], after: dict[str, tuple], hidden_only: bool = False) -> list[str]:
    """What a run added, removed or changed, in words (empty: nothing).

    ``hidden_only``: only entries with a hidden name (temporaries, locks, partial folders) count.
    """
    def counted(name: str) -> bool:
        return not hidden_only or any(part.startswith(".") for part in Path(name).parts)

    added = [f"added {k}" for k in after if k not in before and counted(k)]
    removed = [f"removed {k}" for k in before if k not in after and counted(k)]
    changed = [f"changed {k}" for k in before if k in after and before[k] != after[k] and counted(k)]
    return added + removed + changed


@dataclass
class Results:
    """Tallies of the corpus run: inputs tried, clear errors, runs that left something behind."""

    tried: int = 0
    clear: int = 0
    warned: int = 0  # of the clear ones: damaged inputs skipped with a warning naming them (the run goes on)
    left_behind: int = 0
    skipped: int = 0
    subprocess_tried: int = 0
    subprocess_clear: int = 0

    def summary(self) -> str:
        """The line printed at the end of the test run."""
        return (f"robustness corpus: {self.tried} bad inputs tried in-process, {self.clear} got a clear one-line "
                f"error or warning ({self.warned} skipped with a warning), {self.left_behind} left something "
                f"behind; {self.subprocess_tried} re-run through the real entry point, {self.subprocess_clear} "
                f"clear; {self.skipped} known failing (skipped)")


RESULTS = Results()


def error_problems(case: Case, status, stdout: str, stderr: str, work: Path, logged: Sequence[str] = ()) -> list[str]:
    """Why the run's exit status and output are not a clear error for ``case`` (empty: they are).

    ``logged``: messages of warnings logged in-process (pytest's log capture keeps them off stderr).
    """
    problems = []
    if status != case.exit_code:
        problems.append(f"exit status {status!r}, expected {case.exit_code}")
    if "Traceback" in stderr or "Traceback" in stdout:
        problems.append("a traceback was printed")
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not any(line.startswith(p) for p in case.notes)]
    if case.warned:
        needles = [n.format(work=work) for n in case.needles]
        if not any(all(n in line for n in needles) for line in [*lines, *logged]):
            problems.append(f"no warning names {needles}")
        said = "\n".join([stdout, stderr, *logged])
        problems += [f"the output does not say {a.format(work=work)!r}"
                     for a in case.also if a.format(work=work) not in said]
    elif len(errors) != 1:
        problems.append(f"{len(errors)} lines on stderr, expected one error line")
    elif not errors[0].startswith(f"{case.prog}: error: "):
        problems.append(f"the line does not start with {case.prog!r}: error:")
    else:
        missing = [n.format(work=work) for n in case.needles if n.format(work=work) not in errors[0]]
        if missing:
            problems.append(f"the line does not name {missing}")
    if (work / MARKER).exists():
        problems.append("a malicious pickle ran")
    return problems
