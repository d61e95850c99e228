"""An opt-in stand-in for ``mxnet``, covering only what arcface_torch's ``MXFaceDataset`` uses.

arcface_torch's ``dataset.py`` imports mxnet at the top, and mxnet 1.9 does not import with
numpy >= 1.24. ``MXFaceDataset`` needs three things of it:

* ``mx.recordio.MXIndexedRecordIO(idx, rec, 'r')`` with ``read_idx`` and ``keys``: here
  :class:`fpr_plugin.data.recordio.IndexedRecordReader`, which reads mxnet's format byte for byte;
* ``mx.recordio.unpack``: :func:`fpr_plugin.data.recordio.unpack` (same ``IRHeader`` fields);
* ``mx.image.imdecode(buf).asnumpy()``: OpenCV's decoder, RGB ``[H, W, 3]`` uint8 by default
  like mxnet's (``flag=0``: grey ``[H, W, 1]``; ``to_rgb=0``: BGR).

``eval/verification.py`` (the verification callback) runs ``from mxnet import ndarray as nd`` at
import time, so ``mxnet.ndarray`` exists here as an empty namespace: importing the callback works,
using it does not (``val_targets = []`` keeps it unused). Every other attribute or submodule
raises :class:`MXNetStandinError` (an ``AttributeError``) or :class:`MXNetStandinImportError`
naming what was asked for.

:func:`install` puts the stand-in in ``sys.modules`` only when mxnet itself cannot be imported;
:func:`uninstall` and :func:`installed` undo it.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Iterator

import numpy as np

from fpr_plugin.data.recordio import IndexedRecordReader
from fpr_plugin.data.recordio import unpack as _unpack

__all__ = ["MXNetStandinError", "MXNetStandinImportError", "MXIndexedRecordIO", "unpack",
           "imdecode", "make_module", "install", "uninstall", "installed", "active"]

__version__ = "0.0+fpr_plugin.standin"
COVERED = ("mx.recordio.MXIndexedRecordIO(idx, rec, 'r') (read_idx, keys), "
           "mx.recordio.unpack, mx.image.imdecode(...).asnumpy()")


def _message(what: str) -> str:
    return (f"{what}: fpr_plugin's mxnet stand-in covers only what arcface_torch's MXFaceDataset "
            f"uses ({COVERED}); install mxnet (mxnet==1.9.1 with numpy<1.24) for anything else, "
            "or, for the verification callback, set val_targets = [] in the config")


class MXNetStandinError(AttributeError):
    """An attribute of mxnet that the stand-in does not provide."""


class MXNetStandinImportError(ImportError):
    """A submodule of mxnet that the stand-in does not provide."""


def _missing(owner: str, name: str) -> AttributeError:
    """The error for ``owner.name``: plain for private and dunder names, which tools probe."""
    if name.startswith("_"):
        return AttributeError(f"module {owner!r} has no attribute {name!r}")
    return MXNetStandinError(_message(f"{owner}.{name}"))


# --------------------------------------------------------------------------- mx.recordio

class MXIndexedRecordIO(IndexedRecordReader):
    """``mx.recordio.MXIndexedRecordIO`` for reading (``flag='r'``): ``read_idx(key)``, ``keys``."""

    def __init__(self, idx_path, uri, flag: str = "r", key_type: type = int):
        if flag != "r":
            raise MXNetStandinError(_message(
                f"mxnet.recordio.MXIndexedRecordIO(..., flag={flag!r}): only flag 'r' (reading) is "
                "covered; write record sets with fpr-build-rec or fpr_plugin.data.recordio.IndexedRecordWriter"))
        if key_type is not int:
            raise MXNetStandinError(_message(
                f"mxnet.recordio.MXIndexedRecordIO(..., key_type={key_type!r}): only int keys are covered"))
        super().__init__(idx_path, uri)
        self.flag = flag
        self.key_type = key_type

    def __getattr__(self, name: str):  # called only for names the reader does not have
        if name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise MXNetStandinError(_message(f"mxnet.recordio.MXIndexedRecordIO.{name}"))


def unpack(s: bytes):
    """``mx.recordio.unpack``: ``(IRHeader(flag, label, id, id2), payload)``; array label when flag > 0."""
    return _unpack(s)


# --------------------------------------------------------------------------- mx.image

class _DecodedImage:
    """What ``imdecode`` returns: only ``asnumpy()`` of mxnet's ``NDArray`` is covered."""

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray):
        self._array = array

    def asnumpy(self) -> np.ndarray:
        """A copy of the decoded image as a uint8 ``[H, W, C]`` numpy array (mxnet copies too)."""
        return self._array.copy()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(f"'NDArray' stand-in has no attribute {name!r}")
        raise MXNetStandinError(_message(f"mxnet.ndarray.NDArray.{name} (on the result of mx.image.imdecode)"))

    def __repr__(self) -> str:
        return "\n<NDArray (stand-in) {} @cpu(0)>".format("x".join(map(str, self._array.shape)))


def imdecode(buf, flag: int = 1, to_rgb: int = 1, out=None) -> _DecodedImage:
    """``mx.image.imdecode`` with OpenCV: ``flag=1`` colour ``[H, W, 3]`` (RGB if ``to_rgb``), 0 grey ``[H, W, 1]``."""
    import cv2

    if out is not None:
        raise MXNetStandinError(_message("mxnet.image.imdecode(..., out=...)"))
    if not isinstance(buf, (bytes, bytearray, np.ndarray)):
        raise ValueError(f"mx.image.imdecode (fpr_plugin stand-in): buf must be bytes, bytearray or "
                         f"numpy.ndarray, got {type(buf).__name__}")
    if flag not in (0, 1):
        raise ValueError(f"mx.image.imdecode (fpr_plugin stand-in): flag must be 1 (colour) or 0 "
                         f"(grey), got {flag!r}")
    data = np.frombuffer(buf, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR if flag else cv2.IMREAD_GRAYSCALE) if data.size else None
    if img is None:
        raise ValueError(f"mx.image.imdecode (fpr_plugin stand-in): {data.size} bytes that OpenCV "
                         "cannot decode as an image (expected JPEG/PNG/BMP data)")
    if not flag:
        img = img[:, :, None]
    elif to_rgb:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return _DecodedImage(img)


# --------------------------------------------------------------------------- module objects

class _Namespace(types.ModuleType):
    """A module of the stand-in: its attributes, and the coverage error for every other name."""

    def __getattr__(self, name: str):
        raise _missing(self.__name__, name)

    def __dir__(self):
        return sorted(self.__dict__)


def _namespace(name: str, doc: str, **attrs) -> _Namespace:
    module = _Namespace(name, doc)
    module.__file__ = __file__
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=__file__, is_package=name == "mxnet")
    module.__package__ = "mxnet"
    module.__fpr_standin__ = True
    module.__dict__.update(attrs)
    return module


def make_module() -> types.ModuleType:
    """A fresh ``mxnet`` stand-in module, with ``recordio``, ``image`` and ``ndarray`` as attributes."""
    recordio = _namespace("mxnet.recordio", "Stand-in: MXIndexedRecordIO (reading) and unpack.",
                          MXIndexedRecordIO=MXIndexedRecordIO, unpack=unpack)
    image = _namespace("mxnet.image", "Stand-in: imdecode (OpenCV) with .asnumpy().", imdecode=imdecode)
    ndarray = _namespace("mxnet.ndarray", "Stand-in: empty, so that `from mxnet import ndarray` imports.")
    mx = _namespace("mxnet", __doc__, recordio=recordio, image=image, ndarray=ndarray,
                    __version__=__version__)
    mx.__path__ = []  # a package, so that `import mxnet.x` asks _SubmoduleFinder (and gets our error)
    return mx


class _SubmoduleFinder(importlib.abc.MetaPathFinder):
    """Answers ``import mxnet.<other>`` with the coverage error while the stand-in is installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("mxnet.") and active():
            raise MXNetStandinImportError(_message(fullname), name=fullname)
        return None


_FINDER = _SubmoduleFinder()
_SUBMODULES = ("recordio", "image", "ndarray")


def active() -> bool:
    """Whether ``sys.modules['mxnet']`` is this stand-in."""
    return getattr(sys.modules.get("mxnet"), "__fpr_standin__", False) is True


def _mxnet_importable() -> bool:
    """Whether the real mxnet imports; a failed import is cleaned out of ``sys.modules``."""
    if "mxnet" in sys.modules:
        return True
    if importlib.util.find_spec("mxnet") is None:
        return False
    try:
        importlib.import_module("mxnet")
    except Exception as err:  # mxnet 1.x with numpy >= 1.24 fails here (np.bool and the like)
        for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
            del sys.modules[name]
        warnings.warn(f"mxnet is installed but does not import ({type(err).__name__}: {err}); "
                      "using fpr_plugin's mxnet stand-in for arcface_torch's MXFaceDataset",
                      RuntimeWarning, stacklevel=3)
        return False
    return True


def install() -> bool:
    """Put the stand-in in ``sys.modules`` if mxnet cannot be imported; return whether this call did.

    False when the real mxnet imports (it is then left in use) or the stand-in is already in place
    (see :func:`active`).
    """
    if active() or _mxnet_importable():
        return False
    mx = make_module()
    sys.modules["mxnet"] = mx
    for name in _SUBMODULES:
        sys.modules[f"mxnet.{name}"] = getattr(mx, name)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return True


def uninstall() -> bool:
    """Take the stand-in out of ``sys.modules``; return whether it was installed."""
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_FINDER)
    if not active():
        return False
    for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
        if getattr(sys.modules[name], "__fpr_standin__", False) is True:
            del sys.modules[name]
    return True


@contextlib.contextmanager
def installed() -> Iterator[bool]:
    """``with installed() as did:`` the stand-in for the block (if mxnet is missing); removed after."""
    did = install()
    try:
        yield did
    finally:
        if did:
            uninstall()
