"""Which TFace checkout a folder is: master's ``recognition`` folder, or the v0.1.0 tree.

- both: ``torchkit/head/__init__.py`` (with ``get_head``) and ``torchkit/task/base_task.py``;
- master: ``train.py`` at the top (the distfc ``TrainTask``) and ``torchkit/head/distfc/partial_fc.py``;
- v0.1.0: ``tasks/localfc/train_localfc.py`` and ``tasks/distfc/train_distfc.py``
  (``tasks/cifp/train_cifp.py`` runs the localfc one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Checkout", "CheckoutError", "detect_checkout", "MASTER", "V0_1_0"]

MASTER = "master"
V0_1_0 = "v0.1.0"

_COMMON = ("torchkit/head/__init__.py", "torchkit/task/base_task.py")
_MARKERS = {
    MASTER: ("train.py", "torchkit/head/distfc/partial_fc.py"),
    V0_1_0: ("tasks/localfc/train_localfc.py", "tasks/distfc/train_distfc.py"),
}


class CheckoutError(ValueError):
    """A folder that is not a TFace checkout; the message names what is missing."""


@dataclass(frozen=True)
class Checkout:
    """A TFace checkout: its root (the folder holding ``torchkit``) and its version."""

    root: Path
    version: str

    def entry(self, dist_fc: bool) -> Path:
        """TFace's own training script for the yaml's ``DIST_FC``."""
        if self.version == MASTER:
            return self.root / "train.py"
        task = "distfc/train_distfc.py" if dist_fc else "localfc/train_localfc.py"
        return self.root / "tasks" / task


def _missing(root: Path, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not (root / name).is_file()]


def detect_checkout(root: str | os.PathLike) -> Checkout:
    """The :class:`Checkout` at ``root``; CheckoutError names the first thing missing."""
    path = Path(root).expanduser()
    expected = "TFace's recognition folder: TFace/recognition on master, the repository's top on v0.1.0"
    if not path.is_dir():
        raise CheckoutError(f"{root}: no such folder; expected {expected}")
    path = path.resolve()
    missing = _missing(path, _COMMON)
    if missing:
        hint = ""
        if not _missing(path / "recognition", _COMMON):
            hint = f"; did you mean {path / 'recognition'}?"
        raise CheckoutError(f"{root} is not a TFace checkout: {missing[0]} is missing; expected {expected}{hint}")
    head_init = (path / "torchkit/head/__init__.py").read_text(encoding="utf-8", errors="replace")
    if "def get_head(" not in head_init:
        raise CheckoutError(f"{root} is not a TFace checkout: torchkit/head/__init__.py defines no get_head(key, dist_fc)")
    for version, markers in _MARKERS.items():
        if not _missing(path, markers):
            return Checkout(path, version)
    master_missing = _missing(path, _MARKERS[MASTER])[0]
    old_missing = _missing(path, _MARKERS[V0_1_0])[0]
    raise CheckoutError(
        f"{root} has TFace's torchkit but neither master's {master_missing} nor v0.1.0's {old_missing}; "
        f"expected {expected}"
    )
