"""The robustness corpus (tests/robustness/robustness_corpus.py): every bad input gets exit status 2, one
line naming the file/key/value, no traceback, and leaves its folder exactly as it was."""
from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from robustness_corpus import (CASES, KNOWN_FAILING, PROGS, RESULTS, SUBPROCESS_CASES, changes, error_problems,
                               snapshot)

BY_ID = {c.id: c for c in CASES}


def _skip_known(case):
    if case.id in KNOWN_FAILING:
        RESULTS.skipped += 1
        pytest.skip(f"known failing corpus case {case.id} (robustness_corpus.KNOWN_FAILING): "
                    f"{KNOWN_FAILING[case.id]}")


def _call(case, argv):
    module, function, _ = PROGS[case.cli]
    main = getattr(importlib.import_module(module), function)
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse
        return exc.code


@pytest.fixture
def host_imports():
    """Forget the modules a fake host checkout put on sys.path and in sys.modules."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name, module in list(sys.modules.items()):
        if "robustness" in str(getattr(module, "__file__", "") or "") and name.split(".")[0] in ("configs", "utils",
                                                                                                    "torchkit"):
            del sys.modules[name]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the raw-pickle checkpoint
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_and_leaves_nothing(case, assets, tmp_path, capsys, caplog, monkeypatch, host_imports):
    _skip_known(case)
    argv = case.make(tmp_path, assets)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    status = _call(case, argv)
    stdout, stderr = capsys.readouterr()
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    problems = error_problems(case, status, stdout, stderr, tmp_path, logged)
    left = changes(before, snapshot(tmp_path), hidden_only=case.warned)
    RESULTS.tried += 1
    RESULTS.clear += not problems
    RESULTS.warned += case.warned and not problems
    RESULTS.left_behind += bool(left)
    assert not problems and not left, f"{problems} {left}\nstderr:\n{stderr}"


def _entry_point(case) -> list[str]:
    module, _, prog = PROGS[case.cli]
    script = Path(sys.executable).with_name(case.cli)
    if case.cli.startswith("fpr-") and script.is_file():
        return [str(script)]
    return [sys.executable, "-m", prog.split()[-1] if prog.startswith("python -m") else module]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_real_entry_point_prints_no_traceback(case_id, assets, tmp_path):
    case = BY_ID[case_id]
    _skip_known(case)
    argv = case.make(tmp_path, assets)
    before = snapshot(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FPR_DEBUG", None)
    run = subprocess.run([*_entry_point(case), *map(str, argv)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=env)
    problems = error_problems(case, run.returncode, run.stdout, run.stderr, tmp_path)
    left = changes(before, snapshot(tmp_path), hidden_only=case.warned)
    RESULTS.subprocess_tried += 1
    RESULTS.subprocess_clear += not problems and not left
    assert not problems and not left, f"{problems} {left}\nstderr:\n{run.stderr}"


DEBUG_CASES = ("train-header-claims-1e9-images", "eval-bin-malicious-pickle-os-system", "export-zero-byte-model",
               "build-rec-workers-negative", "make-synthetic-output-is-a-file", "demo-output-is-a-file")


@pytest.mark.parametrize("case_id", DEBUG_CASES)
def test_debug_shows_the_traceback_and_still_one_error_line(case_id, assets, tmp_path, capsys, monkeypatch):
    case = BY_ID[case_id]
    _skip_known(case)
    argv = case.make(tmp_path, assets)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    status = _call(case, [*argv, "--debug"])
    _, stderr = capsys.readouterr()
    assert status == 2
    assert "Traceback (most recent call last)" in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"{case.prog}: error: ")
    assert changes(before, snapshot(tmp_path)) == []


def test_debug_environment_variable_shows_the_traceback(assets, tmp_path, capsys, monkeypatch):
    case = BY_ID["build-rec-quality-zero"]
    argv = case.make(tmp_path, assets)
    monkeypatch.setenv("FPR_DEBUG", "1")
    capsys.readouterr()
    assert _call(case, argv) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_corpus_covers_every_command_and_the_issue_cases():
    """The corpus holds the issue's cases (by id) and runs every command at least three times."""
    commands = {c.cli for c in CASES}
    assert commands == set(PROGS)
    for cli in PROGS:
        assert sum(c.cli == cli for c in CASES) >= 3, cli
    wanted = ["train-header-claims-1e9-images", "train-set-lr-1e999", "train-recipe-syntax-error",
              "train-set-gamma_u-2", "train-set-network-r999", "train-resume-changed-key", "train-label-nan-first-image",
              "train-property-binary", "train-groups-binary", "train-resume-zero-byte-checkpoint",
              "train-resume-truncated-checkpoint", "train-resume-malicious-checkpoint", "train-property-wrong-image-size",
              "train-set-workers-negative", "build-rec-workers-negative", "eval-bin-50x50-images",
              "eval-model-zip-file", "eval-output-is-a-file", "eval-pairs-csv-absolute-path-to-missing-image",
              "eval-dense-csv-absolute-path-to-missing-image", "train-output-holds-another-run"]
    assert [w for w in wanted if w not in BY_ID] == []
    assert set(KNOWN_FAILING) <= set(BY_ID), "a known failing id that is no case"
