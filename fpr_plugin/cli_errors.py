"""One error convention for every command-line tool (design.md, "Errors (every CLI)").

* A user error (bad file, key, value; :class:`UserError`, ``ValueError``, the
  ``OSError`` family) prints one line ``prog: error: <what, where, expected>``
  and exits 2, without a traceback.
* ``--debug`` on the command line, or ``FPR_DEBUG=1`` in the environment, also
  prints the traceback.
* Anything else is a bug of this package: its traceback is printed, followed by
  a line asking for a report, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Sequence

__all__ = [
    "UserError",
    "DEBUG_ENV",
    "USER_ERRORS",
    "is_user_error",
    "add_debug_flag",
    "debug_requested",
    "one_line",
    "run_cli",
]

DEBUG_ENV = "FPR_DEBUG"
REPORT_URL_HINT = "this is a bug in fpr_plugin: please report it with the traceback above and the command line"


class UserError(ValueError):
    """An error in what the user gave (file, key, value); the message names it and what was expected.

    ``exit_code`` is 2 unless a subclass says otherwise.
    """

    exit_code = 2


# Exceptions whose message, by this package's convention, already names the file/key/value
# (a missing optional dependency included: its message names the module).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, ModuleNotFoundError)


def is_user_error(exc: BaseException) -> bool:
    """True for :data:`USER_ERRORS` and for KeyError subclasses with their own message (registry names)."""
    if isinstance(exc, USER_ERRORS):
        return True
    return isinstance(exc, KeyError) and type(exc).__str__ is not KeyError.__str__


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug`` (show the traceback of an error) to a parser; returns it."""
    parser.add_argument(
        "--debug", action="store_true",
        help=f"show the Python traceback of an error (also: {DEBUG_ENV}=1)",
    )
    return parser


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True when ``--debug`` is among the arguments or ``FPR_DEBUG`` is set to a true value."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line.

    A DataLoader worker's re-raised exception carries the worker's traceback in
    its message: only its last line (the original message) is kept.
    """
    if isinstance(exc, KeyError) and len(exc.args) == 1 and type(exc).__str__ is KeyError.__str__:
        text = str(exc.args[0])
    else:
        text = str(exc)
    if "Original Traceback (most recent call last)" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else text
        head, sep, rest = text.partition(": ")
        if sep and head.replace(".", "").replace("_", "").isalnum() and head[:1].isupper():
            text = rest  # drop the "ValueError: " the traceback text adds
    text = " ".join(text.split())
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text or type(exc).__name__


def run_cli(prog: str, main_fn: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Call ``main_fn(argv)`` under the error convention; returns the exit status.

    ``SystemExit`` (argparse's usage errors, ``--help``) passes through unchanged.
    """
    debug = debug_requested(argv)
    try:
        status = main_fn(argv)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if is_user_error(exc):
            if debug:
                traceback.print_exc()
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
            return int(getattr(exc, "exit_code", 2))
        traceback.print_exc()  # a bug: keep the traceback
        print(f"{prog}: internal error: {REPORT_URL_HINT}", file=sys.stderr)
        return 1
    return 0 if status is None else int(status)
