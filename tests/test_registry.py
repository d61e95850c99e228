"""The loss registry: built-ins, helpful errors, entry-point plugins."""

from __future__ import annotations

import textwrap

import pytest

from fpr_plugin.registry import LOSSES, Registry, UnknownNameError, available_losses, build_loss, register_loss


def test_builtin_losses_are_registered():
    assert {"cosface", "arcface", "combined", "fpr_penalty", "fpr_penalty_tface"} <= set(available_losses())
    assert build_loss("fpr_penalty", gamma_u=1e-3, alpha=0.5).alpha == 0.5


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(UnknownNameError) as info:
        build_loss("cosfase")
    message = str(info.value)
    assert "unknown loss 'cosfase'" in message and "Did you mean 'cosface'?" in message
    for name in ("arcface", "combined", "fpr_penalty", "fpr_penalty_tface"):
        assert name in message
    assert isinstance(info.value, KeyError)


def test_unknown_parameter_is_named():
    with pytest.raises(TypeError, match="'fpr_penalty' got an unknown parameter 'gama_u'; did you mean 'gamma_u'"):
        build_loss("fpr_penalty", gama_u=0.1)
    with pytest.raises(TypeError, match="unknown parameter 'margin'"):
        build_loss("cosface", margin=0.3)


def test_register_decorator_and_duplicate_names():
    registry = Registry("loss", "fpr_plugin.losses", "no.such.group")

    @registry.register("my_margin")
    class MyMargin:
        def __init__(self, s: float = 1.0):
            self.s = s

    assert registry.build("my_margin", s=3.0).s == 3.0
    with pytest.raises(ValueError, match="already registered"):
        registry.register("my_margin")(object)
    assert register_loss("cosface")(LOSSES.get("cosface")) is LOSSES.get("cosface")  # re-registering itself is fine


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    """A third-party distribution declaring the fpr_plugin.losses group, found by importlib.metadata."""
    (tmp_path / "thirdparty_loss.py").write_text(
        textwrap.dedent(
            """
            import torch

            class ScaledCosine(torch.nn.Module):
                def __init__(self, s: float = 2.0):
                    super().__init__()
                    self.s = s

                def forward(self, cos, labels):
                    return cos * self.s
            """
        )
    )
    dist_info = tmp_path / "thirdparty_loss-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-loss\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[fpr_plugin.losses]\nscaled_cosine = thirdparty_loss:ScaledCosine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("loss", "fpr_plugin.losses", "fpr_plugin.losses")  # fresh: not yet loaded
    assert "scaled_cosine" in registry.names()
    assert registry.build("scaled_cosine", s=5.0).s == 5.0
    with pytest.raises(TypeError, match="unknown parameter 'm'"):
        registry.build("scaled_cosine", m=0.1)


def test_broken_plugin_fails_with_its_name(tmp_path, monkeypatch):
    dist_info = tmp_path / "broken_loss-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-loss\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[fpr_plugin.losses]\nbroken = no_such_module_xyz:Loss\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="loss plugin 'broken' from entry point 'no_such_module_xyz:Loss'"):
        Registry("loss", "fpr_plugin.losses", "fpr_plugin.losses").names()
