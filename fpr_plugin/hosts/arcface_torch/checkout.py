"""Find and import an arcface_torch checkout (``recognition/arcface_torch``) without copying or editing it.

arcface_torch is not a package: its modules are flat (``losses``,
``partial_fc_v2``, ``dataset``, ``backbones``, ``utils.*``, ``configs.*``) and
are imported with the checkout's folder first on ``sys.path``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["HostError", "REQUIRED_FILES", "check_root", "import_host_module", "use_root"]

#: What a checkout must hold for the launcher to run it.
REQUIRED_FILES = ("train_v2.py", "losses.py", "partial_fc_v2.py", "lr_scheduler.py", "configs/base.py", "utils/utils_config.py")


class HostError(ValueError):
    """A user error about the host (its checkout, its config): printed as one line, exit 2."""


def check_root(root: str | os.PathLike) -> Path:
    """``root`` as an absolute path after checking it is an arcface_torch checkout (HostError naming what is missing)."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise HostError(f"--root {root}: no such folder (expected a checkout's recognition/arcface_torch)")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        hint = ""
        if (path / "recognition" / "arcface_torch").is_dir():
            hint = f"; did you mean {path / 'recognition' / 'arcface_torch'}?"
        elif (path / "arcface_torch").is_dir():
            hint = f"; did you mean {path / 'arcface_torch'}?"
        raise HostError(
            f"--root {root} is not an arcface_torch checkout: it lacks {', '.join(missing)}"
            f" (expected insightface's recognition/arcface_torch folder){hint}"
        )
    return path


def use_root(root: Path) -> None:
    """Put the checkout first on ``sys.path`` (its flat module names must win)."""
    text = str(root)
    if text in sys.path:
        sys.path.remove(text)
    sys.path.insert(0, text)


def import_host_module(root: Path, name: str) -> ModuleType:
    """Import the host's module ``name`` from ``root``; HostError if a module of that name comes from elsewhere."""
    use_root(root)
    module = importlib.import_module(name)
    origin = Path(getattr(module, "__file__", "") or "").resolve()
    if root not in origin.parents:
        raise HostError(
            f"module {name!r} was imported from {origin}, not from the arcface_torch checkout {root}: "
            "another module of that name shadows the host's (run from another folder)"
        )
    return module
