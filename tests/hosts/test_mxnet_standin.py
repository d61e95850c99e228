"""The mxnet stand-in for arcface_torch's MXFaceDataset: against fpr_plugin's reader, real mxnet 1.9.1
(marker ``mxnet``) and the real ``dataset.py`` (marker ``host``, gated on ``ARCFACE_TORCH_ROOT``).
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fpr_plugin.data.dataset import RecordDataset, decode_image, to_tensor
from fpr_plugin.data.record_set import write_record_set
from fpr_plugin.data.recordio import IndexedRecordReader, IndexedRecordWriter, IRHeader, pack
from fpr_plugin.data.recordio import unpack as fpr_unpack
from fpr_plugin.hosts.arcface_torch import mxnet_standin
from fpr_plugin.hosts.arcface_torch.mxnet_standin import MXNetStandinError, MXNetStandinImportError

REPO = Path(__file__).resolve().parents[2]


def _load_mxnet_conftest():
    """tests/data/conftest.py under its own name: its ``mxnet_env`` fixture (the 1.9.1 venv)."""
    name = "_fpr_tests_data_conftest_for_hosts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "data" / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


mxnet_env = _load_mxnet_conftest().mxnet_env  # the fixture, shared with tests/data


# --------------------------------------------------------------------------- fixtures

def _image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """BGR uint8, smooth but not left-right symmetric (so a flip shows)."""
    small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    img[:, : size // 4, 0] = 255  # a bright left band
    return img


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [_image(rng) for _ in range(5)]


@pytest.fixture
def record_set(tmp_path, images) -> Path:
    """A record set by fpr_plugin's writer: PNG (lossless) and JPEG images, labels 0 0 1 2 2."""
    encoded = [cv2.imencode(".png" if i % 2 else ".jpg", img)[1].tobytes() for i, img in enumerate(images)]
    write_record_set(tmp_path / "set", zip([0, 0, 1, 2, 2], encoded), image_size=(32, 32))
    return tmp_path / "set"


@pytest.fixture
def standin(monkeypatch):
    """``mxnet`` in ``sys.modules`` is the stand-in for the test (even where mxnet is installed)."""
    for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(mxnet_standin, "_mxnet_importable", lambda: False)
    with mxnet_standin.installed() as did:
        assert did
        import mxnet

        yield mxnet
    assert "mxnet" not in sys.modules


# --------------------------------------------------------------------------- against fpr_plugin's reader

def test_reads_records_like_fpr_recordio(standin, record_set, images):
    mx = standin
    idx, rec = record_set / "train.idx", record_set / "train.rec"
    imgrec = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "r")
    ours = IndexedRecordReader(idx, rec)
    assert imgrec.keys == ours.keys == list(range(len(images) + 1 + 3))  # header, images, identities

    header0, _ = mx.recordio.unpack(imgrec.read_idx(0))
    assert header0.flag == 2 and [int(v) for v in header0.label] == [len(images) + 1, len(images) + 1 + 3]
    labels = []
    for key in imgrec.keys:
        header, payload = mx.recordio.unpack(imgrec.read_idx(key))
        ref_header, ref_payload = fpr_unpack(ours.read_idx(key))
        assert (header.flag, header.id, header.id2) == (ref_header.flag, ref_header.id, ref_header.id2)
        assert np.array_equal(np.asarray(header.label), np.asarray(ref_header.label))
        assert payload == ref_payload
        if 1 <= key <= len(images):
            labels.append(int(header.label))
            rgb = mx.image.imdecode(payload).asnumpy()
            assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3) and rgb.flags["C_CONTIGUOUS"]
            bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            assert np.array_equal(rgb, bgr[:, :, ::-1])
            if (key - 1) % 2:  # PNG: exactly the written pixels, channels reversed
                assert np.array_equal(rgb, images[key - 1][:, :, ::-1])
    assert labels == [0, 0, 1, 2, 2]


def test_imdecode_flags(standin, images):
    mx = standin
    png = cv2.imencode(".png", images[0])[1].tobytes()
    assert np.array_equal(mx.image.imdecode(png, to_rgb=0).asnumpy(), images[0])
    assert np.array_equal(mx.image.imdecode(bytearray(png), 1, 1).asnumpy(), images[0][:, :, ::-1])
    grey = mx.image.imdecode(np.frombuffer(png, np.uint8), flag=0).asnumpy()
    assert grey.shape == (32, 32, 1)
    assert np.array_equal(grey[:, :, 0], cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE))
    decoded = mx.image.imdecode(png)
    first = decoded.asnumpy()
    first[:] = 0
    assert decoded.asnumpy().any()  # asnumpy hands out a copy, as mxnet's does
    with pytest.raises(ValueError, match="9 bytes that OpenCV cannot decode"):
        mx.image.imdecode(b"not a jpg")
    with pytest.raises(ValueError, match="bytes, bytearray or numpy.ndarray, got str"):
        mx.image.imdecode("path.jpg")


def test_reader_pickles_for_dataloader_workers(standin, record_set):
    mx = standin
    imgrec = mx.recordio.MXIndexedRecordIO(str(record_set / "train.idx"), str(record_set / "train.rec"), "r")
    before = imgrec.read_idx(3)
    clone = pickle.loads(pickle.dumps(imgrec))
    assert type(clone) is type(imgrec) and clone.read_idx(3) == before and clone.keys == imgrec.keys


def test_flag_zero_records_by_keys(standin, tmp_path, images):
    """No header record (MXFaceDataset then lists ``imgrec.keys``); scalar labels stay numbers."""
    with IndexedRecordWriter(tmp_path / "r.idx", tmp_path / "r.rec") as writer:
        for key in (4, 2, 9):
            writer.write_idx(key, pack(IRHeader(0, float(key) / 2, key, 0), cv2.imencode(".png", images[0])[1]))
    imgrec = standin.recordio.MXIndexedRecordIO(str(tmp_path / "r.idx"), str(tmp_path / "r.rec"), "r")
    assert imgrec.keys == [4, 2, 9]
    header, _ = standin.recordio.unpack(imgrec.read_idx(9))
    assert header == (0, 4.5, 9, 0) and isinstance(header.label, float)


# --------------------------------------------------------------------------- what it does not cover

def _assert_names(err: Exception, what: str) -> None:
    text = str(err)
    assert text.startswith(what + ":"), text
    for part in ("MXFaceDataset", "install mxnet", "val_targets = []"):
        assert part in text, text


def test_unsupported_attributes_name_themselves(standin, record_set):
    mx = standin
    with pytest.raises(MXNetStandinError) as err:
        mx.nd
    _assert_names(err.value, "mxnet.nd")
    with pytest.raises(MXNetStandinError) as err:
        mx.image.resize_short
    _assert_names(err.value, "mxnet.image.resize_short")
    with pytest.raises(MXNetStandinError) as err:
        mx.recordio.pack
    _assert_names(err.value, "mxnet.recordio.pack")
    assert not hasattr(mx, "io") and isinstance(MXNetStandinError("x"), AttributeError)

    from mxnet import ndarray as nd  # eval/verification.py does this at import time

    with pytest.raises(MXNetStandinError) as err:
        nd.array([1])
    _assert_names(err.value, "mxnet.ndarray.array")
    with pytest.raises(MXNetStandinImportError) as err:
        from mxnet import gluon  # noqa: F401
    _assert_names(err.value, "mxnet.gluon")
    with pytest.raises(MXNetStandinImportError) as err:
        import mxnet.io  # noqa: F401
    _assert_names(err.value, "mxnet.io")

    imgrec = mx.recordio.MXIndexedRecordIO(str(record_set / "train.idx"), str(record_set / "train.rec"), "r")
    with pytest.raises(MXNetStandinError) as err:
        imgrec.write_idx
    _assert_names(err.value, "mxnet.recordio.MXIndexedRecordIO.write_idx")
    with pytest.raises(MXNetStandinError) as err:
        mx.image.imdecode(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()).shape
    assert "NDArray.shape" in str(err.value)
    with pytest.raises(MXNetStandinError) as err:
        mx.recordio.MXIndexedRecordIO(str(record_set / "train.idx"), str(record_set / "train.rec"), "w")
    assert "only flag 'r'" in str(err.value) and "IndexedRecordWriter" in str(err.value)
    with pytest.raises(AttributeError) as err:  # private names: the plain error tools expect
        mx.__wrapped__
    assert type(err.value) is AttributeError


# --------------------------------------------------------------------------- install / uninstall

def test_install_leaves_an_importable_mxnet_alone(monkeypatch):
    monkeypatch.setattr(mxnet_standin, "_mxnet_importable", lambda: True)
    before = {n: m for n, m in sys.modules.items() if n.startswith("mxnet")}
    assert mxnet_standin.install() is False
    assert {n: m for n, m in sys.modules.items() if n.startswith("mxnet")} == before
    assert not mxnet_standin.active()


def test_install_twice_then_uninstall(monkeypatch):
    monkeypatch.setattr(mxnet_standin, "_mxnet_importable", lambda: False)
    try:
        assert mxnet_standin.install() is True
        assert mxnet_standin.install() is False and mxnet_standin.active()
        assert {"mxnet", "mxnet.recordio", "mxnet.image", "mxnet.ndarray"} <= set(sys.modules)
    finally:
        assert mxnet_standin.uninstall() is True
    assert not [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]
    assert mxnet_standin._FINDER not in sys.meta_path
    assert mxnet_standin.uninstall() is False


def test_broken_mxnet_install_falls_back_with_a_warning(tmp_path, monkeypatch):
    """An mxnet that fails on import (as 1.9 does with numpy >= 1.24) counts as missing."""
    (tmp_path / "mxnet").mkdir()
    (tmp_path / "mxnet" / "__init__.py").write_text(
        "import mxnet.base\n", encoding="utf-8")
    (tmp_path / "mxnet" / "base.py").write_text(
        "raise AttributeError(\"module 'numpy' has no attribute 'bool'\")\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.warns(RuntimeWarning, match="mxnet is installed but does not import.*'bool'"):
        with mxnet_standin.installed() as did:
            assert did and mxnet_standin.active()
            assert sys.modules["mxnet"].recordio.unpack is mxnet_standin.unpack
    assert not [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]


# --------------------------------------------------------------------------- against real mxnet 1.9.1

MX_DECODE = """
import pickle, sys
import mxnet as mx
imgrec = mx.recordio.MXIndexedRecordIO(sys.argv[1], sys.argv[2], "r")
out = {"keys": list(imgrec.keys), "records": {}}
for key in imgrec.keys:
    header, payload = mx.recordio.unpack(imgrec.read_idx(key))
    label = header.label.tolist() if header.flag > 0 else float(header.label)
    images = {}
    if 1 <= key <= int(sys.argv[3]):
        for name, kwargs in (("rgb", {}), ("bgr", {"to_rgb": 0}), ("grey", {"flag": 0})):
            img = mx.image.imdecode(payload, **kwargs).asnumpy()
            images[name] = (img.shape, str(img.dtype), img.tobytes())
    out["records"][key] = (int(header.flag), label, int(header.id), int(header.id2), payload, images)
pickle.dump(out, open("mx_out.pkl", "wb"))
"""


@pytest.mark.mxnet
def test_same_as_real_mxnet(standin, record_set, images, mxnet_env, tmp_path):
    idx, rec = record_set / "train.idx", record_set / "train.rec"
    mxnet_env.run(MX_DECODE, tmp_path, str(idx), str(rec), str(len(images)))
    real = pickle.loads((tmp_path / "mx_out.pkl").read_bytes())

    imgrec = standin.recordio.MXIndexedRecordIO(str(idx), str(rec), "r")
    assert imgrec.keys == real["keys"]
    decoded = 0
    for key in imgrec.keys:
        header, payload = standin.recordio.unpack(imgrec.read_idx(key))
        flag, label, id_, id2, mx_payload, mx_images = real["records"][key]
        assert (header.flag, header.id, header.id2) == (flag, id_, id2)
        assert (header.label.tolist() if header.flag > 0 else header.label) == label
        assert payload == mx_payload
        for name, kwargs in (("rgb", {}), ("bgr", {"to_rgb": 0}), ("grey", {"flag": 0})):
            if name in mx_images:
                shape, dtype, data = mx_images[name]
                ours = standin.image.imdecode(payload, **kwargs).asnumpy()
                assert (ours.shape, str(ours.dtype)) == (shape, dtype), name
                assert ours.tobytes() == data, f"key {key}, {name}"
                decoded += 1
    assert decoded == 3 * len(images)


# --------------------------------------------------------------------------- against arcface_torch's dataset.py

HOST_SCRIPT = """
import sys, types
root, set_dir, raw_dir, out, stub = sys.argv[1:6]
from fpr_plugin.hosts.arcface_torch import mxnet_standin
assert mxnet_standin.install(), "mxnet imports here: the stand-in was not installed"
if stub == "1":  # torchvision's C ops cannot load beside this torch; its transforms are pure Python
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
sys.path.insert(0, root)
import torch
import dataset
import eval.verification  # `from mxnet import ndarray as nd` at import time
assert dataset.mx is sys.modules["mxnet"] and dataset.mx.__fpr_standin__
results = {}
for name, path in (("set", set_dir), ("raw", raw_dir)):
    ds = dataset.MXFaceDataset(root_dir=path, local_rank=0)
    flip = ds.transform.transforms[1]
    assert type(flip).__name__ == "RandomHorizontalFlip", ds.transform
    res = {"len": len(ds)}
    for p in (0.0, 1.0):
        flip.p = p
        res[p] = [ds[i] for i in range(len(ds))]
    flip.p = 0.5
    torch.manual_seed(0)
    res[0.5] = [ds[i] for i in range(len(ds))]
    results[name] = res
torch.save(results, out)
"""


def _host_root() -> Path:
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("set ARCFACE_TORCH_ROOT to insightface's recognition/arcface_torch folder")
    root = Path(root)
    if not (root / "dataset.py").is_file():
        pytest.fail(f"ARCFACE_TORCH_ROOT={root} has no dataset.py; expected insightface's "
                    "recognition/arcface_torch folder")
    return root


def _torchvision_env() -> tuple[dict, str]:
    """Environment in which ``import torchvision.transforms`` works, and whether to stub its C-op fakes.

    dataset.py imports torchvision. It is not a dependency of fpr_plugin: it is taken from this
    interpreter, else from ``FPR_TORCHVISION_PATH`` or ``<repo>/.venv-torchvision`` (a ``pip install
    --no-deps --target`` folder). PyPI's torchvision beside a CPU-only torch fails at import in
    ``torchvision/_meta_registrations.py`` ('operator torchvision::nms does not exist': its C ops
    need CUDA's libc10_cuda.so); that module only registers fake kernels for those C ops, so it is
    stubbed, and the transforms MXFaceDataset uses (pure Python and PIL) then import.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    extra = os.environ.get("FPR_TORCHVISION_PATH") or str(REPO / ".venv-torchvision")
    probe = "import torchvision.transforms, torchvision.datasets; print(torchvision.__version__)"
    own = importlib.util.find_spec("torchvision") is not None
    for path in ((None,) if own else ()) + (extra,):
        if path is not None:
            if not Path(path).is_dir():
                break
            env["PYTHONPATH"] = path
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode == 0:
            return env, "0"
        if "operator torchvision::" in proc.stderr and "does not exist" in proc.stderr:
            return env, "1"
    torch_version = torch.__version__.split("+")[0]
    major, minor = (int(v) for v in torch_version.split(".")[:2])
    pytest.skip(f"arcface_torch's dataset.py imports torchvision, which does not import here; install "
                f"the release for torch {torch_version} beside it: `{sys.executable} -m pip install "
                f"--no-deps --target {extra} torchvision==0.{minor + 15}.*` (or set FPR_TORCHVISION_PATH)"
                if major == 2 else f"torchvision does not import beside torch {torch.__version__}")


@pytest.mark.host
def test_arcface_torch_mxfacedataset_matches_record_dataset(record_set, images, tmp_path):
    root = _host_root()
    env, stub = _torchvision_env()
    raw = tmp_path / "raw"  # no header record: MXFaceDataset lists imgrec.keys, scalar labels
    raw.mkdir()
    raw_payloads = [cv2.imencode(".png", img)[1].tobytes() for img in images[:3]]
    with IndexedRecordWriter(raw / "train.idx", raw / "train.rec") as writer:
        for key, payload in enumerate(raw_payloads):
            writer.write_idx(key, pack(IRHeader(0, float(key % 2), key, 0), payload))
    out = tmp_path / "host.pt"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HOST_SCRIPT), str(root), str(record_set), str(raw), str(out), stub],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = torch.load(out, weights_only=True)

    ours = RecordDataset(record_set, random_flip=False)
    expected = {"set": [(ours[i][0], ours[i][1]) for i in range(len(ours))],
                "raw": [(to_tensor(decode_image(p, "raw")), key % 2) for key, p in enumerate(raw_payloads)]}
    assert [label for _, label in expected["set"]] == [0, 0, 1, 2, 2]
    assert results["set"]["len"] == len(ours) == len(images) and results["raw"]["len"] == 3
    for name, want in expected.items():
        got = results[name]
        for i, (image, label) in enumerate(want):
            flipped = torch.flip(image, dims=[2])
            assert not torch.allclose(image, flipped)  # the images are not mirror-symmetric
            for p, ref in ((0.0, image), (1.0, flipped)):
                host_image, host_label = got[p][i]
                assert host_label.dtype == torch.long and int(host_label) == label
                assert host_image.shape == ref.shape and host_image.dtype == torch.float32
                torch.testing.assert_close(host_image, ref, rtol=0, atol=1e-6)
            host_image = got[0.5][i][0]
            is_plain = torch.allclose(host_image, image, rtol=0, atol=1e-6)
            assert is_plain or torch.allclose(host_image, flipped, rtol=0, atol=1e-6)
