"""All-or-nothing writes: a temporary name in the same folder, fsync, rename, fsync of the folder.

A reader never sees a half-written file, a failure leaves the old file (or
none) behind, and after the rename a power cut cannot bring back an empty file:
checkpoints, records' indexes, reports and caches all use this. Files get the
user's umask (``0666 & ~umask``), not ``mkstemp``'s 0600.

Temporary names carry the writer's pid (``.<name>.<pid>.<random>.tmp``), so a
later run can tell the leftovers of a killed process from a live writer's:
:func:`clean_stale_temporaries` removes the former.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Callable

__all__ = [
    "atomic_write",
    "fsync_dir",
    "fsync_file",
    "apply_umask",
    "current_umask",
    "pid_alive",
    "temporary_name_pid",
    "temporary_name_parts",
    "clean_stale_temporaries",
    "HOSTNAME",
    "clean_interrupted",
    "partial_folder",
    "replace_folder",
    "recover_folder_swap",
]

HOSTNAME = socket.gethostname()
# .<name>.<pid>.<random>.tmp (atomic_write), .<name>.partial-<pid>-<random> (folders),
# .<name>.<pid>.<random>.partial.onnx (export), .<name>.tmp-<pid> (record writer),
# .<name>.old-<pid> (a folder swap's previous version); group 1 is <name>, group 2 the pid
_TMP_PATTERNS = (
    re.compile(r"^\.(.+)\.(\d+)\.[^.]+\.tmp$"),
    re.compile(r"^\.(.+)\.partial-(\d+)-[^.]+$"),
    re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]+\.partial\.onnx$"),
    re.compile(r"^\.(.+)\.tmp-(\d+)$"),
    re.compile(r"^\.(.+)\.old-(\d+)$"),
)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would: ``0666`` (``0777`` for folders) ``& ~umask``."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync it, rename it to ``path`` (same folder, so atomic), fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        apply_umask(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (signal 0)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temporary_name_parts(name: str) -> tuple[str, int] | None:
    """``(name of the file or folder being written, writer's pid)`` of a temporary name this package makes.

    None for any other name.
    """
    for pattern in _TMP_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1), int(match.group(2))
    return None


def temporary_name_pid(name: str) -> int | None:
    """The writer's pid in a temporary name this package makes, or None for any other name."""
    parts = temporary_name_parts(name)
    return None if parts is None else parts[1]


def clean_stale_temporaries(folder: str | os.PathLike, only_for: str | None = None) -> list[Path]:
    """Remove this package's temporary files/folders in ``folder`` whose writer process is gone.

    Returns what was removed (callers say so). Only names this package makes are
    touched (with ``only_for``: only the temporaries of the file or folder of that
    name), and only when their pid is not a live process on this host.
    """
    import shutil

    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        parts = temporary_name_parts(entry.name)
        if parts is None or (only_for is not None and parts[0] != only_for):
            continue
        pid = parts[1]
        if pid == os.getpid() or pid_alive(pid):
            continue
        if entry.name.endswith(f".old-{pid}"):
            continue  # a folder swap's previous version: the caller decides (see restore_or_drop_old)
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def clean_interrupted(target: str | os.PathLike, what: str) -> None:
    """Restore or drop what an interrupted swap of the folder ``target`` left, and remove the temporaries
    of its dead writers, naming each on stderr (``what``: the kind of run that left them)."""
    target = Path(target)
    for line in recover_folder_swap(target):
        print(f"note: {line}", file=sys.stderr)
    for left in clean_stale_temporaries(target.parent, only_for=target.name):
        print(f"note: removed {left}, left by an interrupted {what}", file=sys.stderr)


def partial_folder(target: str | os.PathLike, what: str) -> Path:
    """A new temporary folder ``.<target>.partial-<pid>-*`` beside ``target`` to build it in.

    First :func:`clean_interrupted`. Finish with :func:`replace_folder` (or remove the folder on failure).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_interrupted(target, what)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))


def replace_folder(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the complete folder ``tmp`` to ``target``, replacing a folder there.

    With no ``target`` yet this is one rename. Otherwise the old folder is first
    renamed to ``.<target>.old-<pid>`` and removed after the new one is in place;
    a crash between the two renames leaves the old folder under that name, which
    :func:`recover_folder_swap` puts back (or drops) on the next run.
    """
    import shutil

    tmp, target = Path(tmp), Path(target)
    apply_umask(tmp, directory=True)
    if not target.exists():
        os.replace(tmp, target)
    else:
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


def recover_folder_swap(target: str | os.PathLike) -> list[str]:
    """Finish a :func:`replace_folder` that a killed process left half done; returns what was done, in words.

    An old version whose writer is gone is put back when ``target`` is missing,
    and removed when ``target`` is there (the swap had completed its second rename).
    """
    import shutil

    target = Path(target)
    done: list[str] = []
    if not target.parent.is_dir():
        return done
    for entry in sorted(target.parent.glob(f".{target.name}.old-*")):
        parts = temporary_name_parts(entry.name)
        if parts is None or parts[0] != target.name or parts[1] == os.getpid() or pid_alive(parts[1]):
            continue
        if target.exists():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}, left by an interrupted replacement of {target}")
        else:
            os.replace(entry, target)
            done.append(f"restored {target} from {entry}, left by an interrupted replacement")
    return done
