"""``kill -9`` of fpr-eval while it embeds, writes the cache, writes the report or swaps the folder: no partial
report, and the next run cleans (and names) every leftover. Bad --model / --output: exit 2, one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_fixtures import aligned_faces, write_bin
from test_eval_cli import tiny_model

DRIVER = Path(__file__).with_name("eval_kill_driver.py")


def _eval(phase, *argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(DRIVER), phase, *map(str, argv), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_inputs")
    write_bin(root / "lfw.bin", aligned_faces(40), [i % 2 == 0 for i in range(20)])
    tiny_model(root / "tiny.onnx")
    ref = root / "ref"
    for fpr in ("0.1", "0.2"):
        run = _eval("none", "--model", root / "tiny.onnx", "--bin", root / "lfw.bin", "--output", ref / fpr,
                    "--fpr", fpr, "--batch-size", 8)
        assert run.returncode == 0, run.stderr
    return root


def _argv(inputs, out, fpr="0.1"):
    return ("--model", inputs / "tiny.onnx", "--bin", inputs / "lfw.bin", "--output", out, "--fpr", fpr,
            "--batch-size", 8)


def _numbers(folder):
    report = json.loads((folder / "report.json").read_text())
    return {name: {"pairs": d["pairs"], "notes": d["notes"]}
            for name, d in report["models"]["tiny"]["datasets"].items()}


def _hidden(folder):
    """Every hidden entry under ``folder`` (locks, temporaries, partial folders), relative names."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def _report_files(folder):
    return sorted(p.name for p in folder.glob("*") if p.name.startswith("report") or p.suffix == ".png")


def _rerun_and_check(inputs, base, out, fpr="0.1"):
    """The next run: exit 0, leftovers named on stderr, nothing hidden left, the uninterrupted run's numbers."""
    run = _eval("none", *_argv(inputs, out, fpr))
    assert run.returncode == 0, run.stderr
    assert _hidden(base) == [], "no lock, temporary or partial folder left"
    assert _numbers(out) == _numbers(inputs / "ref" / fpr)
    assert _report_files(out) == ["bin-lfw_pairs_fpr_vs_threshold.png", "bin-lfw_pairs_roc.png", "report.json",
                                  "report.md"]
    return run.stderr


@pytest.mark.parametrize("phase", ["embedding", "cache-write", "writing"])
def test_killed_first_run_leaves_no_report_and_the_next_run_cleans_up(tmp_path, inputs, phase):
    out = tmp_path / "out"
    killed = _eval(phase, *_argv(inputs, out))
    assert killed.returncode == -9, killed.stderr
    assert _report_files(out) == [], "no partial report"
    left = _hidden(tmp_path)
    assert "out/.fpr.lock" in left  # the dead run's lock
    if phase == "cache-write":
        assert [n for n in left if n.startswith("out/cache/.") and n.endswith(".tmp")]
    if phase == "writing":
        partial = [n for n in left if n.startswith(".out.partial-") and "/" not in n]
        assert partial and list((tmp_path / partial[0]).glob("*.png")), "the report was being built beside out/"
    err = _rerun_and_check(inputs, tmp_path, out)
    assert "taking over the stale lock" in err
    if phase == "cache-write":
        assert "cache/." in err and ".tmp, left by an interrupted run" in err
    if phase == "writing":
        assert f"removed {tmp_path / partial[0]}, left by an interrupted run" in err


@pytest.mark.parametrize("phase", ["writing", "swap"])
def test_killed_rerun_keeps_the_old_report_whole(tmp_path, inputs, phase):
    out = tmp_path / "out"
    assert _eval("none", *_argv(inputs, out)).returncode == 0
    old = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    killed = _eval(phase, *_argv(inputs, out, fpr="0.2"))
    assert killed.returncode == -9, killed.stderr
    if phase == "writing":
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".fpr.lock"} == old
    else:  # between the two renames: the old folder waits under a hidden name, the new one is complete
        assert not out.exists()
        aside = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
        assert len(aside) == 1 and (aside[0] / "report.json").read_bytes() == old["report.json"]
    err = _rerun_and_check(inputs, tmp_path, out, fpr="0.2")
    if phase == "swap":
        assert f"restored {out} from {aside[0]}" in err
    assert ", left by an interrupted run" in err


def _one_line_error(run):
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("fpr-eval: error: "), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    return lines[0]


def test_non_onnx_model_and_file_output_exit_2_in_one_line(tmp_path, inputs):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"PK\x03\x04 this is a zip file, not an ONNX graph")
    out = tmp_path / "out"
    line = _one_line_error(_eval("none", "--model", fake, "--bin", inputs / "lfw.bin", "--output", out))
    assert f"{fake} is not an ONNX model onnxruntime can load" in line
    assert not out.exists(), "nothing written, not even an empty folder"
    line = _one_line_error(_eval("none", "--compare", inputs / "tiny.onnx", fake, "--bin", inputs / "lfw.bin",
                                 "--output", out))
    assert str(fake) in line and not out.exists(), "every model is loaded before any set is embedded"
    taken = tmp_path / "report.txt"
    taken.write_text("keep me")
    line = _one_line_error(_eval("none", *_argv(inputs, taken)))
    assert line == f"fpr-eval: error: --output {taken} exists and is not a folder; expected a folder for the report"
    assert taken.read_text() == "keep me"
    line = _one_line_error(_eval("none", *_argv(inputs, taken / "sub")))
    assert f"{taken} is a file, not a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "report.txt"]
