"""fpr_plugin.atomic: fsync before the rename, the user's umask, folder swaps, and the leftovers of dead writers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpr_plugin import atomic


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(proc.stdout)
    assert not atomic.pid_alive(pid)
    return pid


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(atomic, "fsync_file", lambda p: events.append(("fsync file", Path(p).name)))
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: events.append(("fsync dir", Path(p))))
    replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(("rename", Path(b).name)), replace(a, b)))
    atomic.atomic_write(tmp_path / "ckpt.pt", lambda tmp: Path(tmp).write_bytes(b"weights"))
    assert [e[0] for e in events] == ["fsync file", "rename", "fsync dir"]
    assert events[0][1].startswith(f".ckpt.pt.{os.getpid()}.") and events[0][1].endswith(".tmp")
    assert events[1][1] == "ckpt.pt" and events[2][1] == tmp_path
    assert (tmp_path / "ckpt.pt").read_bytes() == b"weights"


def test_atomic_write_gives_the_umask_mode_and_a_failure_keeps_the_old_file(tmp_path, umask_027):
    path = tmp_path / "report.json"
    atomic.atomic_write(path, lambda tmp: Path(tmp).write_text("old"))
    assert path.stat().st_mode & 0o777 == 0o640, "0666 & ~027, not mkstemp's 0600"

    def failing(tmp):
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.atomic_write(path, failing)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize("name, parts", [
    (".model.pt.123.k2j_9a.tmp", ("model.pt", 123)),
    (".out.partial-77-abc_1", ("out", 77)),
    (".cosface.4242.0a1b2c3d.partial.onnx", ("cosface", 4242)),
    (".train.rec.tmp-9", ("train.rec", 9)),
    (".my.set.old-31", ("my.set", 31)),
    ("model.pt", None), (".hidden", None), (".out.partial-x-1", None), ("out.old-3", None),
])
def test_temporary_names_carry_the_target_and_the_writer_pid(name, parts):
    assert atomic.temporary_name_parts(name) == parts
    assert atomic.temporary_name_pid(name) == (None if parts is None else parts[1])


def test_only_dead_writers_temporaries_are_removed(tmp_path, dead_pid):
    live = os.getppid()
    names = {
        f".out.partial-{dead_pid}-x1": "dir",  # dead writer: removed
        f".out.{dead_pid}.ab.tmp": "file",  # dead writer: removed
        f".out.partial-{live}-x2": "dir",  # a live writer: kept
        f".out.x.partial-{dead_pid}-x3": "dir",  # another target (out.x): kept with only_for="out"
        f".out.old-{dead_pid}": "dir",  # a swap's old version: left to recover_folder_swap
        "out": "dir", ".gitignore": "file", f"notes.{dead_pid}.ab.tmp": "file",  # not ours
    }
    for name, kind in names.items():
        (tmp_path / name).mkdir() if kind == "dir" else (tmp_path / name).write_text("x")
    removed = atomic.clean_stale_temporaries(tmp_path, only_for="out")
    assert sorted(p.name for p in removed) == sorted([f".out.partial-{dead_pid}-x1", f".out.{dead_pid}.ab.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {p.name for p in removed})
    assert [p.name for p in atomic.clean_stale_temporaries(tmp_path)] == [f".out.x.partial-{dead_pid}-x3"]


def test_replace_folder_swaps_a_whole_folder_with_the_umask(tmp_path, umask_027):
    target = tmp_path / "set"
    target.mkdir()
    (target / "a").write_text("old")
    new = tmp_path / f".set.partial-{os.getpid()}-1"
    new.mkdir(mode=0o700)
    (new / "a").write_text("new")
    atomic.replace_folder(new, target)
    assert (target / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert target.stat().st_mode & 0o777 == 0o750


def test_a_swap_killed_between_its_renames_is_recovered(tmp_path, dead_pid):
    target = tmp_path / "set"
    old = tmp_path / f".set.old-{dead_pid}"
    old.mkdir()
    (old / "a").write_text("old")
    assert atomic.recover_folder_swap(target) == [f"restored {target} from {old}, left by an interrupted replacement"]
    assert (target / "a").read_text() == "old" and not old.exists()
    old.mkdir()  # killed after the second rename: the new folder is in place, the old one is dropped
    assert atomic.recover_folder_swap(target) == [f"removed {old}, left by an interrupted replacement of {target}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    live = tmp_path / f".set.old-{os.getppid()}"
    live.mkdir()
    assert atomic.recover_folder_swap(target) == [] and live.exists(), "a live writer's swap is left alone"


def test_pid_alive():
    assert atomic.pid_alive(os.getpid()) and atomic.pid_alive(os.getppid())
    assert not atomic.pid_alive(0) and not atomic.pid_alive(-5)
