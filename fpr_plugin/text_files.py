"""Reading the small text files users hand in (CSV, pair lists, landmarks, property, config.json).

One rule for all of them: a file that is not UTF-8 text (a binary file, another
encoding, NUL bytes) is refused with one line naming the file, the first bad byte
and what the file should hold, instead of a bare codec error.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

__all__ = ["read_text", "open_text"]


def read_text(path: str | os.PathLike, expected: str, error: type[Exception] = ValueError) -> str:
    """The contents of the UTF-8 text file ``path``; ``error`` naming it and ``expected`` when it is not text."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a UTF-8 text file (byte {exc.start} is 0x{data[exc.start]:02x}); "
                    f"expected {expected}") from None
    if "\0" in text:
        raise error(f"{path}: holds NUL bytes, a binary file; expected {expected}")
    return text


def open_text(path: str | os.PathLike, expected: str, error: type[Exception] = ValueError) -> io.StringIO:
    """:func:`read_text` as a file object (for ``csv`` readers); newlines are kept as they are in the file."""
    return io.StringIO(read_text(path, expected, error), newline="")
