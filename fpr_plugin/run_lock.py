"""Ownership of an output folder while a command writes into it: ``<folder>/.fpr.lock`` (pid, host).

A second run into a folder in use fails and names the holder; a lock left by a
process that no longer exists on this host is taken over, with a message.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from fpr_plugin.atomic import HOSTNAME, pid_alive
from fpr_plugin.cli_errors import UserError

__all__ = ["LOCK_NAME", "OutputInUseError", "OutputLock"]

LOCK_NAME = ".fpr.lock"


class OutputInUseError(UserError):
    """Another live process holds the output folder's lock."""


class OutputLock:
    """``with OutputLock(folder, "fpr-train"):`` holds ``folder/.fpr.lock`` for the block."""

    def __init__(self, folder: str | os.PathLike, prog: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.prog = prog
        self.held = False

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "OutputLock":
        """Take the lock (creating the folder); OutputInUseError naming the holder when it is live."""
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"output {self.folder} exists and is not a folder; expected a folder (or a new name)")
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": HOSTNAME, "prog": self.prog,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.folder / f".fpr.lock.{os.getpid()}.new.tmp"
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails when a lock exists
                    self.held = True
                    return self
                except FileExistsError:
                    pass
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                pid, host = holder.get("pid"), holder.get("host")
                if not isinstance(pid, int) or host is None:
                    age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
                    if age < 10:  # being written: give its writer a moment
                        time.sleep(0.5)
                        continue
                elif host != HOSTNAME or pid_alive(pid):
                    raise OutputInUseError(
                        f"output {self.folder} is in use by {holder.get('prog', 'another run')} (pid {pid} on host "
                        f"{host}, since {holder.get('started', '?')}); wait for it to finish, choose another "
                        f"output, or delete {self.path} if that process is gone")
                print(f"{self.prog}: note: taking over the stale lock {self.path} of "
                      f"{holder.get('prog', 'a run')} (pid {pid} on {host}, no longer running)", file=sys.stderr)
                self.path.unlink(missing_ok=True)
            raise OutputInUseError(f"output {self.folder}: could not take the lock {self.path}; "
                                   "another run keeps taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock when this process holds it."""
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == HOSTNAME:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
