"""An opt-in stand-in for ``dareblopy``, for TFace master runs on plain image lists.

TFace master's ``torchkit/data/parser.py`` runs ``import dareblopy as db`` at
the top, but only ``TFRecordSampleParser`` uses it (``db.RecordReader``), and
TFace picks that parser only for a dataset whose name contains ``TFR``. An
image-list dataset (index lines ``path<TAB>label``) never touches dareblopy.

:func:`install` puts this module in ``sys.modules["dareblopy"]`` only when the
real package cannot be found; anything taken from it raises
:class:`DareblopyStandinError` with a message that says to install dareblopy.
The launcher installs it only for configs without TFRecord datasets.
"""

from __future__ import annotations

import importlib.util
import sys
import types

__all__ = ["DareblopyStandinError", "available", "install", "installed", "uninstall"]

_MARK = "__fpr_plugin_standin__"
MESSAGE = (
    "dareblopy is not installed and fpr_plugin's stand-in for it reads no TFRecords: TFace master reads "
    "datasets whose name contains 'TFR' with dareblopy.RecordReader; pip install dareblopy for those"
)


class DareblopyStandinError(RuntimeError):
    """Something of dareblopy was used, but only the stand-in is there."""


class _Missing:
    """Raises on construction: the stand-in reads nothing."""

    def __init__(self, *args, **kwargs) -> None:
        raise DareblopyStandinError(MESSAGE)


def available() -> bool:
    """True when the real dareblopy can be imported (without importing it)."""
    module = sys.modules.get("dareblopy")
    if module is not None:
        return not getattr(module, _MARK, False)
    return importlib.util.find_spec("dareblopy") is not None


def _make_module() -> types.ModuleType:
    module = types.ModuleType("dareblopy", __doc__)
    setattr(module, _MARK, True)
    module.RecordReader = _Missing

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise DareblopyStandinError(f"dareblopy.{name}: {MESSAGE}")

    module.__getattr__ = __getattr__
    return module


def install() -> bool:
    """Put the stand-in in ``sys.modules`` when dareblopy is missing; True when it did."""
    if available() or installed():
        return False
    sys.modules["dareblopy"] = _make_module()
    return True


def installed() -> bool:
    """True when ``sys.modules["dareblopy"]`` is the stand-in."""
    return bool(getattr(sys.modules.get("dareblopy"), _MARK, False))


def uninstall() -> None:
    """Remove the stand-in from ``sys.modules`` (the real package is left alone)."""
    if installed():
        del sys.modules["dareblopy"]
