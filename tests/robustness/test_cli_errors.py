"""fpr_plugin.cli_errors: one line and exit 2 for user errors, a traceback and a report request for bugs."""
from __future__ import annotations

import errno

import pytest

from fpr_plugin.cli_errors import DEBUG_ENV, UserError, debug_requested, is_user_error, one_line, run_cli


class NamedKeyError(KeyError):
    def __str__(self):
        return f"unknown thing {self.args[0]!r}; did you mean 'thing'?"


def _raiser(exc):
    def main(argv):
        raise exc
    return main


@pytest.fixture(autouse=True)
def no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


@pytest.mark.parametrize("exc, line", [
    (UserError("recipe r.py, line 3: key 'lr' expects a number, got 'x'"),
     "prog: error: recipe r.py, line 3: key 'lr' expects a number, got 'x'"),
    (ValueError("a message\n  on two lines"), "prog: error: a message on two lines"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.rec"),
     "prog: error: [Errno 2] No such file or directory: '/data/x.rec'"),
    (PermissionError(errno.EACCES, "Permission denied"), "prog: error: [Errno 13] Permission denied"),
    (NamedKeyError("thign"), "prog: error: unknown thing 'thign'; did you mean 'thing'?"),
    (ModuleNotFoundError("No module named 'tensorboard'"), "prog: error: No module named 'tensorboard'"),
])
def test_a_user_error_is_one_line_with_exit_2(exc, line, capsys):
    assert run_cli("prog", _raiser(exc), []) == 2
    out, err = capsys.readouterr()
    assert err == line + "\n" and out == ""


def test_an_oserror_gets_its_file_name_when_the_message_lacks_it(capsys):
    class Terse(OSError):
        def __str__(self):
            return "Input/output error"

    exc = Terse(errno.EIO, "Input/output error", "/disk/train.rec")
    assert run_cli("prog", _raiser(exc), []) == 2
    assert capsys.readouterr().err == "prog: error: /disk/train.rec: Input/output error\n"


def test_a_user_error_subclass_chooses_its_exit_status(capsys):
    class Diverged(UserError):
        exit_code = 1

    assert run_cli("prog", _raiser(Diverged("step 7: loss is nan; last good checkpoint step_6")), []) == 1
    assert capsys.readouterr().err == "prog: error: step 7: loss is nan; last good checkpoint step_6\n"


@pytest.mark.parametrize("exc", [RuntimeError("shape mismatch"), KeyError("weight"), TypeError("bad call"),
                                 AssertionError()])
def test_a_bug_keeps_its_traceback_and_asks_for_a_report(exc, capsys):
    assert not is_user_error(exc)
    assert run_cli("prog", _raiser(exc), []) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)")
    assert f"{type(exc).__name__}" in err
    assert err.rstrip().splitlines()[-1] == ("prog: internal error: this is a bug in fpr_plugin: please report it "
                                            "with the traceback above and the command line")


def test_debug_flag_and_environment_show_the_traceback(capsys, monkeypatch):
    assert run_cli("prog", _raiser(ValueError("bad value")), ["--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and err.endswith("prog: error: bad value\n")
    for value, shown in (("1", True), ("yes", True), ("0", False), ("off", False), ("", False)):
        monkeypatch.setenv(DEBUG_ENV, value)
        assert debug_requested([]) is shown
        assert run_cli("prog", _raiser(ValueError("bad value")), []) == 2
        assert ("Traceback" in capsys.readouterr().err) is shown


def test_interrupt_exits_130_and_usage_errors_pass_through(capsys):
    assert run_cli("prog", _raiser(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "prog: interrupted\n"
    with pytest.raises(SystemExit) as exit_info:
        run_cli("prog", _raiser(SystemExit(2)), [])
    assert exit_info.value.code == 2
    assert run_cli("prog", lambda argv: None, []) == 0
    assert run_cli("prog", lambda argv: 3, []) == 3


def test_a_dataloader_worker_error_is_reduced_to_its_message():
    text = ("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\n    raise ValueError(msg)\n'
            "ValueError: /data/train.rec, key 9: label nan; expected an integer class id in [0, 4)\n")
    assert one_line(ValueError(text)) == "/data/train.rec, key 9: label nan; expected an integer class id in [0, 4)"
    assert one_line(KeyError("plain key")) == "plain key"
    assert one_line(ValueError("")) == "ValueError"
