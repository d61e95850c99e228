"""``kill -9`` of fpr-build-rec while it writes, closes, swaps a record set in, or rebuilds an index.

After each kill the target folder is absent or one complete set (the previous one, or the new one once the
swap has happened), never a mix; the leftovers are hidden names beside it, and the next run removes them
and names each one. One test SIGKILLs a real ``fpr-build-rec --workers 2`` from outside and checks that its
encoding processes go away too.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fpr_plugin.data.build_rec import main
from fpr_plugin.data.record_set import read_record_set

DRIVER = Path(__file__).with_name("build_rec_kill_driver.py")


def write_tree(root: Path, identities: int, per_identity: int, size: int = 140, seed: int = 0) -> Path:
    """``root/<group>/<identity>/<n>.jpg``: JPEGs that are not 112x112, so every one is decoded and re-encoded."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        folder = root / "AB"[i % 2] / f"id{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (4, 4, 3))
        for n in range(per_identity):
            img = cv2.resize(base.astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{n}.jpg"), img)
    return root


def files(folder: Path) -> dict[str, bytes]:
    """Every file of a folder tree but hidden ones (relative name -> bytes); :func:`hidden` lists those."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def hidden(base: Path) -> list[str]:
    """Every hidden entry under ``base`` (temporaries, partial and old folders, locks), relative names."""
    return sorted(str(p.relative_to(base)) for p in base.rglob(".*"))


def build(*argv) -> int:
    return main([str(a) for a in argv] + ["--workers", "0", "--no-progress"])


def killed(phase: str, *argv) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(DRIVER), phase, *map(str, argv), "--workers", "0", "--no-progress"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == -signal.SIGKILL, run.stderr
    return run


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two image trees (the new set's, 120 images; the previous set's, 24) and their uninterrupted builds."""
    root = tmp_path_factory.mktemp("kill_sources")
    new_src, old_src = write_tree(root / "new", 12, 10), write_tree(root / "old", 4, 6, seed=1)
    assert build(new_src, root / "new_set") == 0 and build(old_src, root / "old_set") == 0
    return {"src": new_src, "new": files(root / "new_set"), "old_set": root / "old_set",
            "old": files(root / "old_set")}


@pytest.mark.parametrize("phase", ["writing", "closing"])
def test_killed_first_build_leaves_no_set_and_the_next_run_cleans_up(tmp_path, sources, capsys, phase):
    out = tmp_path / "out"
    killed(phase, sources["src"], out)
    assert not out.exists(), "no target folder, not even a partial one"
    left = hidden(tmp_path)
    partial = [n for n in left if "/" not in n]
    assert len(partial) == 1 and partial[0].startswith(".out.partial-"), left
    inside = [n.split("/", 1)[1] for n in left if "/" in n]
    assert inside == ([".train.idx.tmp-" + partial[0].split("-")[1], ".train.rec.tmp-" + partial[0].split("-")[1]]
                      if phase == "writing" else [".train.idx.tmp-" + partial[0].split("-")[1]]), inside
    capsys.readouterr()
    assert build(sources["src"], out) == 0
    assert f"removed {tmp_path / partial[0]}, left by an interrupted build" in capsys.readouterr().err
    assert hidden(tmp_path) == []
    assert files(out) == sources["new"]


@pytest.mark.parametrize("phase", ["writing", "closing", "swap", "after-swap"])
def test_killed_rebuild_keeps_one_whole_set_and_the_next_run_cleans_up(tmp_path, sources, capsys, phase):
    out = tmp_path / "out"
    shutil.copytree(sources["old_set"], out)
    (out / "notes.txt").write_text("a user's file beside the set\n")
    old = {**sources["old"], "notes.txt": (out / "notes.txt").read_bytes()}
    new = {**sources["new"], "notes.txt": old["notes.txt"]}
    killed(phase, sources["src"], out, "--overwrite")
    left = [n for n in hidden(tmp_path) if "/" not in n]
    if phase in ("writing", "closing"):
        assert files(out) == old, "the previous set, byte for byte"
        assert len(left) == 1 and left[0].startswith(".out.partial-"), left
    elif phase == "swap":  # between the two renames: the old set waits whole under a hidden name, the new one too
        assert not out.exists()
        assert len(left) == 2 and left[0].startswith(".out.old-") and left[1].startswith(".out.partial-"), left
        assert files(tmp_path / left[0]) == old and files(tmp_path / left[1]) == new
    else:  # the new set is in place; the old one is left to remove
        assert files(out) == new
        assert len(left) == 1 and left[0].startswith(".out.old-") and files(tmp_path / left[0]) == old, left
    capsys.readouterr()
    assert build(sources["src"], out, "--overwrite") == 0
    err = capsys.readouterr().err
    if phase == "swap":
        assert f"restored {out} from {tmp_path / left[0]}, left by an interrupted replacement" in err
        assert f"removed {tmp_path / left[1]}, left by an interrupted build" in err
    elif phase == "after-swap":
        assert f"removed {tmp_path / left[0]}, left by an interrupted replacement of {out}" in err
    else:
        assert f"removed {tmp_path / left[0]}, left by an interrupted build" in err
    assert hidden(tmp_path) == []
    assert files(out) == new


def test_killed_rebuild_without_overwrite_is_still_refused_after_recovery(tmp_path, sources, capsys):
    """A swap killed half-way: the next run puts the old set back first, so it is not replaced without --overwrite."""
    out = tmp_path / "out"
    shutil.copytree(sources["old_set"], out)
    killed("swap", sources["src"], out, "--overwrite")
    assert not out.exists()
    capsys.readouterr()
    assert build(sources["src"], out) == 2
    err = capsys.readouterr().err
    assert "restored" in err and f"{out} already holds a record set; pass --overwrite to replace it" in err
    assert files(out) == sources["old"] and hidden(tmp_path) == []


def test_killed_reindex_keeps_the_old_index_and_the_next_run_cleans_up(tmp_path, sources, capsys):
    out = tmp_path / "out"
    shutil.copytree(sources["old_set"], out)
    killed("reindex", "--reindex", out)
    assert files(out) == sources["old"], "train.idx untouched until the new one is complete"
    left = hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith("out/.train.idx.") and left[0].endswith(".tmp"), left
    capsys.readouterr()
    assert main(["--reindex", str(out)]) == 0
    assert f"removed {tmp_path / left[0]}, left by an interrupted index rebuild" in capsys.readouterr().err
    assert hidden(tmp_path) == [] and files(out) == sources["old"]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_sigkill_from_outside_with_workers_leaves_no_process_and_no_partial_set(tmp_path, capsys):
    src = write_tree(tmp_path / "src", 60, 20, size=150)  # 1,200 images to re-encode: time to kill it
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("fpr-build-rec")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "fpr_plugin.data.build_rec"]
    proc = subprocess.Popen([*command, str(src), str(out), "--workers", "2", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline, workers = time.monotonic() + 120, []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            partial = list(tmp_path.glob(".out.partial-*/.train.rec.tmp-*"))
            if partial and partial[0].stat().st_size > 20_000:  # a few dozen images written
                workers = _children(proc.pid)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and not workers:
            proc.kill()
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed mid-write"
    assert len(workers) == 2, workers
    gone = time.monotonic() + 20
    while time.monotonic() < gone and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "the encoding processes outlived the killed build"
    assert not out.exists()
    left = [n for n in hidden(tmp_path) if "/" not in n]
    assert len(left) == 1 and left[0].startswith(f".out.partial-{proc.pid}-"), left
    capsys.readouterr()
    assert main([str(src), str(out), "--workers", "2", "--no-progress"]) == 0
    assert f"removed {tmp_path / left[0]}, left by an interrupted build" in capsys.readouterr().err
    assert hidden(tmp_path) == [] and read_record_set(out).num_image == 1200
