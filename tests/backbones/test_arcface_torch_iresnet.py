"""Checkpoints both ways against arcface_torch's real ``backbones`` package (marker ``host``).

Gated on ``ARCFACE_TORCH_ROOT`` (a checkout's ``recognition/arcface_torch`` folder). The
host's package is imported from that folder under a private module name, so nothing
is put on ``sys.path`` and no host file is copied or edited.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fpr_plugin import build_backbone
from fpr_plugin.backbones import infer_iresnet

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
HOST_NAME = "_arcface_torch_backbones"  # the host's `backbones` package, under a private name
DEPTHS = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100", "r200": "iresnet200"}


@pytest.fixture(scope="module")
def host():
    """arcface_torch's ``backbones`` package from ``$ARCFACE_TORCH_ROOT``."""
    root = os.environ.get("ARCFACE_TORCH_ROOT")
    if not root:
        pytest.skip("set ARCFACE_TORCH_ROOT to an insightface checkout's recognition/arcface_torch folder")
    package = Path(root) / "backbones"
    if not (package / "iresnet.py").is_file():
        pytest.fail(f"ARCFACE_TORCH_ROOT={root} has no backbones/iresnet.py: not an arcface_torch folder")
    if HOST_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            HOST_NAME, package / "__init__.py", submodule_search_locations=[str(package)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[HOST_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[HOST_NAME]


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights, BN statistics and PReLU slopes, at a scale that keeps the outputs finite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.in_features**0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            elif isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
                if module.weight.requires_grad:
                    module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                module.num_batches_tracked.fill_(17)
            elif isinstance(module, torch.nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 0.3 + 0.1)
    return model.eval()


def host_model(host, name: str, **kwargs) -> torch.nn.Module:
    return getattr(host, DEPTHS[name])(False, **kwargs)


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the host's torch.cuda.amp.autocast(False) deprecation
        return model.eval()(x)


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_the_same_keys_and_shapes_at_every_depth(host, name):
    with torch.device("meta"):
        theirs = host_model(host, name, num_features=512).state_dict()
        ours = build_backbone(name).state_dict()
    assert list(theirs) == list(ours)
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert infer_iresnet(theirs).network == name


@pytest.mark.parametrize("name", ["r34", "r50"])
def test_arcface_torch_loads_our_model_pt(host, name, tmp_path):
    ours = randomised(build_backbone(name, embedding_size=512), seed=1)
    torch.save(ours.state_dict(), tmp_path / "model.pt")  # what fpr-train writes
    theirs = host_model(host, name, num_features=512)
    theirs.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    expected, got = outputs(ours, x), outputs(theirs, x)
    assert torch.isfinite(expected).all() and expected.abs().max() > 1e-3
    assert torch.equal(got, expected), float((got - expected).abs().max())


@pytest.mark.parametrize("name", ["r34", "r50"])
def test_we_load_arcface_torchs_state_dict(host, name):
    theirs = randomised(host_model(host, name, num_features=512), seed=3)
    ours = build_backbone(name, embedding_size=512)
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(4))
    expected, got = outputs(theirs, x), outputs(ours, x)
    assert torch.isfinite(expected).all() and expected.abs().max() > 1e-3
    assert torch.equal(got, expected), float((got - expected).abs().max())


def test_export_of_arcface_torchs_backbone_pth(host, tmp_path):
    """``python export/to_onnx.py backbone.pth --network r50 --output model.onnx``, as a user runs it."""
    import onnx
    import onnxruntime as ort

    theirs = randomised(host_model(host, "r50", num_features=512), seed=5)
    torch.save(theirs.state_dict(), tmp_path / "backbone.pth")  # no config.json beside it
    command = [sys.executable, str(REPO / "export" / "to_onnx.py"), "backbone.pth", "--network", "r50",
               "--output", "model.onnx"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "ArcFaceONNX" in done.stdout and "network r50 {}, embedding 512" in done.stdout
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert (meta["network"], meta["embedding_size"]) == ("r50", "512")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(6).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    expected = outputs(theirs, torch.from_numpy(x)).numpy()
    got = session.run(None, {"data": x})[0]
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))

    wrong = subprocess.run(command[:4] + ["r34", "--output", "m34.onnx"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "--network r34 does not fit backbone.pth: its keys are an IResNet r50" in wrong.stderr
