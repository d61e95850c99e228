"""An evaluation output folder: owned while a run writes into it, its embedding cache in ``cache/``, and the report
put in place as a whole folder.

``publish`` builds the new folder beside the old one (``.<name>.partial-<pid>-<random>``):
the report's files, and hard links to everything else the old folder holds (the
cache, the lock, anything of the user's) but the old report. One
:func:`~fpr_plugin.atomic.replace_folder` then swaps it in. A reader sees the old
report or the new one, never a mix (no plot of an earlier run beside a newer
``report.json``); a run killed at any point leaves the old folder as it was,
plus leftovers that the next run removes and names.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fpr_plugin.atomic import clean_stale_temporaries, recover_folder_swap, replace_folder, temporary_name_pid
from fpr_plugin.cli_errors import UserError
from fpr_plugin.run_lock import OutputLock

if TYPE_CHECKING:
    from fpr_plugin.eval.runner import Report

__all__ = ["ReportFolder", "check_output", "is_report_file"]

_REPORT_NAMES = ("report.json", "report.md")
_FIGURE = re.compile(r"^.+_(pairs|dense)_(roc|fpr_vs_threshold)\.png$")


def is_report_file(name: str) -> bool:
    """True for the names a report is made of (``report.json``, ``report.md``, ``<set>_<protocol>_<plot>.png``)."""
    return name in _REPORT_NAMES or bool(_FIGURE.match(name))


def check_output(output: Path, flag: str = "--output") -> None:
    """``output`` can become a report folder: not a file, under folders, not holding the current folder."""
    if output.exists() and not output.is_dir():
        raise UserError(f"{flag} {output} exists and is not a folder; expected a folder for the report")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {output}: {parent} is a file, not a folder")
            break
    here, target = Path.cwd().resolve(), output.resolve()
    if here == target or target in here.parents:
        raise UserError(f"{flag} {output} holds the current folder; expected a folder of its own for the report "
                        "(it is replaced as a whole)")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst, follow_symlinks=False)


def _skip_temporaries(_folder: str, names: list[str]) -> set[str]:
    return {n for n in names if temporary_name_pid(n) is not None}


def _carry_over(old: Path, new: Path) -> None:
    """Everything in ``old`` but its report and temporaries, into ``new``: hard links (the old folder stays whole)."""
    for entry in old.iterdir():
        if is_report_file(entry.name) or temporary_name_pid(entry.name) is not None or (new / entry.name).exists():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy,
                            ignore=_skip_temporaries)
        else:
            _link_or_copy(str(entry), str(new / entry.name))


class ReportFolder:
    """``with ReportFolder(out) as folder: ...; folder.publish(report)``: the lock held, leftovers cleaned.

    On entry: a half-done swap of an interrupted run is finished, the folder's
    lock taken (:class:`~fpr_plugin.run_lock.OutputLock`), and stale temporaries
    of dead runs removed (each named on stderr). On exit the lock is released,
    and a folder this run made but left empty is removed.
    """

    def __init__(self, path: str | os.PathLike, prog: str = "fpr-eval") -> None:
        self.path = Path(path)
        self.prog = prog
        self._lock: OutputLock | None = None
        self._created = False

    @property
    def cache_dir(self) -> Path:
        """Where the embeddings are cached (kept across runs and reports)."""
        return self.path / "cache"

    def _note(self, text: str) -> None:
        print(f"{self.prog}: note: {text}", file=sys.stderr)

    def __enter__(self) -> "ReportFolder":
        check_output(self.path)
        for done in recover_folder_swap(self.path.resolve()):
            self._note(done)
        self._created = not self.path.exists()
        self._lock = OutputLock(self.path, self.prog).acquire()
        try:
            target = self.path.resolve()
            leftovers = clean_stale_temporaries(target.parent, only_for=target.name)
            for folder in (target, target / "cache"):
                leftovers += clean_stale_temporaries(folder)
            for left in leftovers:
                self._note(f"removed {left}, left by an interrupted run")
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
        if self._created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()  # a run that failed before writing anything leaves no empty folder behind

    def publish(self, report: "Report") -> dict[str, Path]:
        """Write ``report`` into a new folder and swap it in for the old one; returns the files' final paths."""
        if self._lock is None or not self._lock.held:
            raise RuntimeError("ReportFolder.publish is only allowed inside its with block")
        target = self.path.resolve()
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
        partial.mkdir()
        try:
            written = report.write(partial)
            mode = None
            if target.is_dir():
                _carry_over(target, partial)
                mode = stat.S_IMODE(target.stat().st_mode)
            replace_folder(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if mode is not None:
            os.chmod(target, mode)
        return {name: self.path / path.name for name, path in written.items()}
