"""The model file: model.pt + config.json written by the trainer and read back by export."""

import json

import pytest
import torch

from fpr_plugin import build_backbone
from fpr_plugin.model_file import build_model, load_checkpoint, non_finite_entry, write_model_and_config


def test_model_and_config_files(tmp_path):
    write_model_and_config(tmp_path, {"fc.weight": torch.ones(2, 2)}, {"network": "r18", "lr_steps": [1]})
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["fc.weight"], torch.ones(2, 2))
    assert json.loads((tmp_path / "config.json").read_text())["network"] == "r18"


def test_non_finite_weights_are_never_written(tmp_path):
    weights = {"a.weight": torch.ones(2), "b.weight": torch.tensor([1.0, float("nan")])}
    with pytest.raises(FloatingPointError, match=r"model.pt: backbone weight 'b.weight' is not finite"):
        write_model_and_config(tmp_path, weights, {"network": "r18"})
    assert list(tmp_path.iterdir()) == []


def test_non_finite_entry_names_the_nested_key():
    state = {"head": {"weight": torch.zeros(2)}, "optimizer": {"state": {3: {"momentum_buffer": torch.tensor([float("inf")])}}}}
    assert non_finite_entry(state) == "optimizer.state.3.momentum_buffer"
    assert non_finite_entry({"w": torch.zeros(3), "n": 1, "x": 0.5, "steps": torch.tensor([1, 2])}) is None
    assert non_finite_entry({"lr": float("nan")}) == "lr"


def test_written_model_reads_back_and_builds(tmp_path):
    torch.manual_seed(0)
    config = {"network": "r18", "embedding_size": 16, "backbone_params": {"width": 4, "stem_stride": 2}}
    trained = build_backbone("r18", embedding_size=16, width=4, stem_stride=2).eval()
    write_model_and_config(tmp_path, trained.state_dict(), config)
    state_dict, read = load_checkpoint(tmp_path / "model.pt")
    assert read == config
    model = build_model(state_dict, read)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
