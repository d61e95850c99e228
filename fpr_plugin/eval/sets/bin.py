"""insightface ``.bin`` verification files (one file, or RFW as ``<Race>_test.bin``), read with an allow-list
unpickler: a crafted file cannot run code."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fpr_plugin.eval.sets.base import EvalSet, ImageSet, PairList, fold_ids
from fpr_plugin.eval.sets.rfw import RFW_RACES, missing_races_note


class UnsafePickleError(ValueError):
    """A ``.bin`` file's pickle names a global outside the allow-list (nothing was executed)."""


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes for protocol < 3 as _codecs.encode(str, "latin1"); nothing else is allowed
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding={encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only bytes, str, lists, tuples, dicts, bools, ints, floats and numpy arrays.

    ``find_class`` allows the numpy array reconstructors and nothing else, so a
    crafted file cannot run code; any other global raises :class:`UnsafePickleError` naming it.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    })

    def __init__(self, file: Any, source: str = "<pickle>"):
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """The allowed numpy reconstructors; anything else is refused by name."""
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"{self.source}: refusing to load global '{module}.{name}': a .bin verification "
                                "file may only hold image bytes, same-person flags and numpy arrays")

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are never allowed."""
        raise UnsafePickleError(f"{self.source}: refusing persistent id {pid!r}")


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """insightface ``.bin`` verification file -> ``(encoded images, issame [len/2])`` (restricted unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".bin file not found: {path}")
    with open(path, "rb") as handle:
        try:
            obj = RestrictedUnpickler(handle, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated / not a pickle
            raise ValueError(f"{path}: not a readable insightface .bin pickle ({type(exc).__name__}: {exc})") from None
    expected = "a pickled (list of encoded images, list of same-person flags)"
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected {expected}, got {type(obj).__name__}")
    bins, flags = obj
    images = []
    for i, item in enumerate(bins):
        if isinstance(item, (bytes, bytearray)):
            images.append(bytes(item))
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
            images.append(item.tobytes())
        else:
            raise ValueError(f"{path}: image {i} is {type(item).__name__}, expected encoded image bytes")
    issame = np.asarray(flags)
    binary = issame.dtype == bool or (issame.dtype.kind in "iu" and np.all((issame == 0) | (issame == 1)))
    if issame.ndim != 1 or not binary:
        raise ValueError(f"{path}: same-person flags must be a list of booleans, got {issame.dtype} {issame.shape}")
    if len(images) != 2 * issame.shape[0]:
        raise ValueError(f"{path}: {len(images)} images for {issame.shape[0]} pairs; expected 2 images per pair")
    return images, issame.astype(bool)


def _aligned_images(sources: list[bytes], names: list[str]) -> ImageSet:
    """The images of ``.bin`` files: every one an aligned 112x112 face (sizes checked now), the first decoded."""
    image_set = ImageSet(sources, names=names, aligned=True)
    image_set.load([0])  # the first image decoded before any model runs
    return image_set


def load_bin(path: str | Path, group: str | None = None, n_folds: int = 10, name: str | None = None) -> EvalSet:
    """One ``.bin`` file: pairs ``(2i, 2i+1)``, folds = ``n_folds`` consecutive blocks, one group."""
    path = Path(path)
    images, issame = read_bin(path)
    group = group or path.stem
    n = issame.shape[0]
    pairs = PairList(np.arange(2 * n, dtype=np.int64).reshape(n, 2), issame,
                     np.array([group] * n, dtype=object), fold_ids(n, n_folds, str(path)))
    pairs.check(str(path))
    image_set = _aligned_images(images, [f"{path}, image #{i}" for i in range(len(images))])
    return EvalSet(name or f"bin-{path.stem}", image_set, pairs)


def load_rfw_bin(directory: str | Path, races: Sequence[str] | None = None, n_folds: int = 10) -> EvalSet:
    """RFW as ``<Race>_test.bin`` files in one folder (aligned JPEGs), one group per race."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"RFW .bin folder not found: {directory}")
    races = list(races) if races is not None else [r for r in RFW_RACES if (directory / f"{r}_test.bin").is_file()]
    if not races:
        raise FileNotFoundError(f"{directory}: no <Race>_test.bin files (African, Asian, Caucasian, Indian)")
    sources, rows, names, notes = [], [], [], []
    missing = [r for r in RFW_RACES if r not in races]
    if missing:
        notes.append(missing_races_note(directory, missing, "<Race>_test.bin"))
    for race in races:
        images, issame = read_bin(directory / f"{race}_test.bin")
        folds = fold_ids(issame.shape[0], n_folds, str(directory / f"{race}_test.bin"))
        base = len(sources)
        sources.extend(images)
        names.extend(f"{directory / f'{race}_test.bin'}, image #{i}" for i in range(len(images)))
        rows.extend((base + 2 * i, base + 2 * i + 1, bool(same), race, int(fold))
                    for i, (same, fold) in enumerate(zip(issame, folds)))
    pairs = PairList.from_rows(rows)
    pairs.check(str(directory))
    return EvalSet("rfw-bin", _aligned_images(sources, names), pairs, notes=notes)
