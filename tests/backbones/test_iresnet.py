"""IResNet backbones: shapes, parameter counts from the architecture formula, strides."""

from __future__ import annotations

import pytest
import torch
from easydict import EasyDict

from fpr_plugin import available_backbones, build_backbone
from fpr_plugin.backbones import backbone_from_config
from fpr_plugin.backbones.iresnet import IBasicBlock, IResNet, output_resolution

LAYERS = {
    "r18": [2, 2, 2, 2],
    "r34": [3, 4, 6, 3],
    "r50": [3, 4, 14, 3],
    "r100": [3, 13, 30, 3],
    "r200": [6, 26, 60, 6],
}


def expected_parameter_count(layers, width=64, embedding_size=512, side=7) -> int:
    """Parameter count of an IResNet written out from the architecture description."""
    bn = lambda c: 2 * c  # noqa: E731  (scale + shift)
    total = 3 * width * 9 + bn(width) + width  # stem conv, BN, PReLU
    in_c = width
    for stage, blocks in enumerate(layers):
        out_c = width * 2**stage
        for b in range(blocks):
            total += bn(in_c) + in_c * out_c * 9 + bn(out_c) + out_c + out_c * out_c * 9 + bn(out_c)
            if b == 0:  # stride 2: projection shortcut
                total += in_c * out_c + bn(out_c)
            in_c = out_c
    total += bn(in_c)  # BN before the FC
    total += in_c * side * side * embedding_size + embedding_size  # FC with bias
    total += bn(embedding_size)  # features BN1d
    return total


def test_all_depths_registered():
    assert set(LAYERS) <= set(available_backbones())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_parameter_count_matches_architecture(name):
    model = build_backbone(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameter_count(LAYERS[name])
    assert sum(isinstance(m, IBasicBlock) for m in model.modules()) == sum(LAYERS[name])


def test_r50_size_is_the_published_one():
    # InsightFace's r50 (width 64, 512-d) is reported as ~43.6M parameters.
    count = sum(p.numel() for p in build_backbone("r50").parameters())
    assert abs(count / 1e6 - 43.6) < 0.1


def test_small_width_scales_the_count():
    model = build_backbone("r34", width=16, embedding_size=128)
    assert sum(p.numel() for p in model.parameters()) == expected_parameter_count(
        LAYERS["r34"], width=16, embedding_size=128
    )


@pytest.mark.parametrize("stem_stride, side", [(1, 7), (2, 4)])
def test_output_shape_and_final_resolution(stem_stride, side):
    model = build_backbone("r18", width=8, embedding_size=32, stem_stride=stem_stride).eval()
    assert model.fc.in_features == 8 * 8 * side * side
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    with torch.no_grad():
        out = model(torch.randn(3, 3, 112, 112))
    assert out.shape == (3, 32)
    assert seen["shape"] == (3, 64, side, side)
    assert output_resolution(112, stem_stride) == side


def test_each_stage_halves_resolution_and_doubles_width():
    model = build_backbone("r18", width=8, embedding_size=16).eval()
    shapes = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        stage.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 112, 112))
    assert shapes == [(8, 56, 56), (16, 28, 28), (32, 14, 14), (64, 7, 7)]


def test_block_computes_the_described_branch():
    torch.manual_seed(0)
    block = IBasicBlock(4, 8, stride=2).eval()
    for bn in (block.bn1, block.bn2, block.bn3, block.downsample[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 4, 10, 10)
    F = torch.nn.functional

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    branch = bn(x, block.bn1)
    branch = F.conv2d(branch, block.conv1.weight, padding=1)
    branch = F.prelu(bn(branch, block.bn2), block.prelu.weight)
    branch = bn(F.conv2d(branch, block.conv2.weight, stride=2, padding=1), block.bn3)
    shortcut = bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])
    with torch.no_grad():
        assert torch.allclose(block(x), branch + shortcut, atol=1e-5)


def test_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = build_backbone("r18", width=8, embedding_size=16, dropout=0.5)
    x = torch.randn(4, 3, 112, 112)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_fp16_is_ignored_on_cpu():
    torch.manual_seed(0)
    plain = build_backbone("r18", width=8, embedding_size=16).eval()
    half = build_backbone("r18", width=8, embedding_size=16, fp16=True).eval()
    half.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = half(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, plain(x).detach())


def test_features_bn_scale_is_frozen():
    model = build_backbone("r18", width=8, embedding_size=16)
    assert not model.features.weight.requires_grad
    assert torch.all(model.features.weight == 1)


def test_backbone_from_config():
    cfg = EasyDict(network="r34", embedding_size=64, dropout=0.1,
                   backbone_params={"width": 8, "stem_stride": 2})
    model = backbone_from_config(cfg)
    assert isinstance(model, IResNet)
    assert model.fc.out_features == 64 and model.dropout.p == 0.1
    assert model.conv1.stride == (2, 2) and model.conv1.out_channels == 8
    assert sum(isinstance(m, IBasicBlock) for m in model.modules()) == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [({"stem_stride": 3}, "stem_stride"), ({"width": 0}, "width"), ({"fp16": "fp8"}, "fp16"),
     ({"dropout": 1.5}, "dropout")],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone("r18", **kwargs)


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match="depth"):
        build_backbone("r18", depth=3)


def test_config_without_network_fails():
    with pytest.raises(KeyError, match="network"):
        backbone_from_config({"embedding_size": 8})
