"""IResNet state-dict keys: arcface_torch's names, old ``shortcut`` keys, reading the depth off the keys."""

from __future__ import annotations

import pytest
import torch

from fpr_plugin import build_backbone
from fpr_plugin.backbones import (
    IRESNET_LAYERS,
    IResNetSpec,
    StateDictMismatch,
    infer_iresnet,
    normalize_state_dict,
    rename_legacy_keys,
)

LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def host_keys(layers) -> list[str]:
    """arcface_torch's IResNet state-dict keys, in order, written out from its module layout."""
    keys = ["conv1.weight", *(f"bn1.{p}" for p in BN), "prelu.weight"]
    for stage, blocks in enumerate(layers, start=1):
        for j in range(blocks):
            block = f"layer{stage}.{j}"
            keys += [f"{block}.bn1.{p}" for p in BN] + [f"{block}.conv1.weight"]
            keys += [f"{block}.bn2.{p}" for p in BN] + [f"{block}.prelu.weight", f"{block}.conv2.weight"]
            keys += [f"{block}.bn3.{p}" for p in BN]
            if j == 0:  # stride 2: 1x1 conv + BN projection
                keys += [f"{block}.downsample.0.weight"] + [f"{block}.downsample.1.{p}" for p in BN]
    keys += [f"bn2.{p}" for p in BN] + ["fc.weight", "fc.bias"] + [f"features.{p}" for p in BN]
    return keys


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and affine parameters, PReLU slopes: every tensor matters for the output."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
        if isinstance(module, torch.nn.PReLU):
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=gen) * 0.3 + 0.1)
    return model.eval()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_state_dict_keys_are_arcface_torchs(name):
    with torch.device("meta"):  # keys and shapes only: no memory for r200's weights
        model = build_backbone(name)
    keys = list(model.state_dict())
    assert keys == host_keys(LAYERS[name])
    assert not any("shortcut" in k for k in keys)
    assert sum(".downsample.0.weight" in k for k in keys) == 4


def test_old_shortcut_state_dict_loads_and_gives_the_same_outputs():
    torch.manual_seed(0)
    model = randomised(build_backbone("r18", width=4, embedding_size=16))
    old = {k.replace(".downsample.", ".shortcut."): v.clone() for k, v in model.state_dict().items()}
    assert sum(".shortcut." in k for k in old) == 4 * 6  # conv weight + 5 BN entries per stage
    fresh = build_backbone("r18", width=4, embedding_size=16).eval()
    result = fresh.load_state_dict(old)  # strict by default
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert fresh.layer2[0].downsample[1].num_batches_tracked == model.layer2[0].downsample[1].num_batches_tracked


def test_rename_and_normalize():
    state = {"layer1.0.shortcut.0.weight": torch.ones(1), "layer1.0.conv1.weight": torch.zeros(1)}
    rename_legacy_keys(state)
    assert list(state) == ["layer1.0.conv1.weight", "layer1.0.downsample.0.weight"]
    ddp = {"module.layer1.0.shortcut.1.bias": torch.ones(1), "module.fc.weight": torch.ones(1)}
    assert sorted(normalize_state_dict(ddp)) == ["fc.weight", "layer1.0.downsample.1.bias"]
    # a prefix on only some keys is not a DDP prefix: left alone
    mixed = {"module.fc.weight": torch.ones(1), "fc.bias": torch.ones(1)}
    assert sorted(normalize_state_dict(mixed)) == ["fc.bias", "module.fc.weight"]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_depth_width_and_embedding_size_from_the_keys(name):
    model = build_backbone(name, width=2, embedding_size=24)
    spec = infer_iresnet(model.state_dict())
    assert spec == IResNetSpec(name, LAYERS[name], 24, width=2, stem_stride=1)
    assert spec.backbone_params() == {"width": 2}


def test_stem_stride_and_ddp_prefix_from_the_keys():
    model = build_backbone("r34", width=4, embedding_size=8, stem_stride=2)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    spec = infer_iresnet(state)
    assert (spec.network, spec.width, spec.stem_stride, spec.embedding_size) == ("r34", 4, 2, 8)
    with torch.device("meta"):
        full = build_backbone("r50")
    assert infer_iresnet(full.state_dict()).backbone_params() == {}  # arcface_torch's r50: the defaults


def test_blocks_that_fit_no_depth_name_the_closest_and_the_difference():
    state = build_backbone("r50", width=2, embedding_size=8).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layer3.13.")}
    with pytest.raises(StateDictMismatch) as info:
        infer_iresnet(state, "backbone.pth")
    assert str(info.value) == (
        "backbone.pth: blocks per stage (3, 4, 13, 3) fit no IResNet depth; closest is r50 "
        "(3, 4, 14, 3) (layer3 has 13 blocks where r50 has 14)"
    )
    assert isinstance(info.value, ValueError)


def test_closest_depth_is_by_block_counts():
    r100 = build_backbone("r100", width=1, embedding_size=4).state_dict()
    extra = {k.replace("layer1.0.", "layer1.3."): v for k, v in r100.items() if k.startswith("layer1.0.")}
    with pytest.raises(StateDictMismatch, match=r"\(4, 13, 30, 3\) fit no IResNet depth; closest is r100 "):
        infer_iresnet({**r100, **extra})


def test_not_an_iresnet_and_inconsistent_shapes():
    with pytest.raises(StateDictMismatch, match="m.pt is not an IResNet state dict: it has no layer1-layer4 blocks"):
        infer_iresnet({"conv_1.weight": torch.zeros(1), "linear.weight": torch.zeros(1)}, "m.pt")
    state = build_backbone("r18", width=4, embedding_size=8).state_dict()
    bad_fc = dict(state, **{"fc.weight": torch.zeros(8, 100)})
    with pytest.raises(StateDictMismatch, match="fc.weight takes 100 inputs"):
        infer_iresnet(bad_fc)
    bad_features = dict(state, **{"features.weight": torch.zeros(9)})
    with pytest.raises(StateDictMismatch, match="disagree on the embedding size"):
        infer_iresnet(bad_features)
    gap = {k.replace("layer4.1.", "layer4.2."): v for k, v in state.items()}
    with pytest.raises(StateDictMismatch, match=r"layer4 block indices \[0, 2\]"):
        infer_iresnet(gap)
    assert set(IRESNET_LAYERS) == set(LAYERS)
