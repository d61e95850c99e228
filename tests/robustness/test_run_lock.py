"""fpr_plugin.run_lock: one run per output folder, the holder named, stale locks taken over."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fpr_plugin.atomic import HOSTNAME
from fpr_plugin.cli_errors import UserError
from fpr_plugin.run_lock import LOCK_NAME, OutputInUseError, OutputLock


def _write_lock(folder, **record):
    folder.mkdir(exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(record) + "\n")


def test_the_lock_names_pid_and_host_and_a_second_run_is_refused(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out, "fpr-train"):
        record = json.loads((out / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == HOSTNAME and record["prog"] == "fpr-train"
        with pytest.raises(OutputInUseError) as refused:
            OutputLock(out, "fpr-eval").acquire()
        message = str(refused.value)
        assert f"output {out} is in use by fpr-train (pid {os.getpid()} on host {HOSTNAME}" in message
        assert str(out / LOCK_NAME) in message
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME], "no temporary left by the refused run"
    assert list(out.iterdir()) == [], "released"


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / "out"
    _write_lock(out, pid=pid, host=HOSTNAME, prog="fpr-eval", started="yesterday")
    with OutputLock(out, "fpr-train"):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert capsys.readouterr().err == (f"fpr-train: note: taking over the stale lock {out / LOCK_NAME} of fpr-eval "
                                       f"(pid {pid} on {HOSTNAME}, no longer running)\n")


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    _write_lock(out, pid=1, host="gpu-node-7", prog="fpr-train", started="now")
    with pytest.raises(OutputInUseError, match="pid 1 on host gpu-node-7"):
        OutputLock(out, "fpr-train").acquire()
    assert json.loads((out / LOCK_NAME).read_text())["host"] == "gpu-node-7"


def test_an_unreadable_old_lock_is_taken_over_and_release_keeps_other_holders_locks(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_bytes(b"\x00garbage")
    os.utime(out / LOCK_NAME, (0, 0))  # written long ago: not a lock being written right now
    lock = OutputLock(out, "fpr-eval").acquire()
    assert "taking over the stale lock" in capsys.readouterr().err
    _write_lock(out, pid=os.getppid(), host=HOSTNAME, prog="other")  # someone else's lock now
    lock.release()
    assert json.loads((out / LOCK_NAME).read_text())["prog"] == "other", "release removes only its own lock"


def test_an_output_that_is_a_file_is_a_user_error(tmp_path):
    taken = tmp_path / "out"
    taken.write_text("keep")
    with pytest.raises(UserError, match="exists and is not a folder"):
        OutputLock(taken, "fpr-eval").acquire()
    assert taken.read_text() == "keep"
