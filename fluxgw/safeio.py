"""Reading files and JSON we did not write ourselves, without trusting them.

A project file (``flux.json``) or a state file (``.flux/*.json``) can hold anything: a symlink
to ``/dev/zero``, a FIFO, 100 MB, 100,000 nested brackets, a 5,000-digit number, ``NaN``.
Everything here either returns a value or raises :class:`UnsafeInput` with a short message;
callers add the file's name (see docs/limits.md).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

CLIP = 60  # characters of an offending value shown in a message


class UnsafeInput(ValueError):
    """Input refused: ``str(exc)`` is one short line that never echoes more than CLIP chars."""


def clip(value: object, limit: int = CLIP) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length noted, so a 100 KB
    value never ends up in a message, a log line or an HTTP answer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:limit]}... ({size} characters)"


def shorten(text: str, limit: int = CLIP) -> str:
    """``text`` itself (not its repr, but control characters escaped), cut like :func:`clip`."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Opened non-blocking (a FIFO never hangs the reader) and checked with fstat on the open
    descriptor (no swap between check and read); reads at most ``limit + 1`` bytes (a
    device like /dev/zero never exhausts memory). FileNotFoundError passes through.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeInput(f"is not a regular file ({file_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeInput(f"is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """A word for what a non-regular file is, for messages."""
    for test, word in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return word
    return "not a regular file"


def _refuse_constant(name: str) -> Any:
    raise UnsafeInput(f"{name} is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnsafeInput(f"number {clip(text, 20)} is out of range")
    return value


def loads(raw: bytes | str) -> Any:
    """Strict JSON: no NaN/Infinity, finite floats, integers of at most 4,300 digits
    (Python's own limit); nesting deeper than the interpreter's recursion limit is refused
    (the C parser raises RecursionError cleanly, before using much stack)."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafeInput(f"is not UTF-8 (byte {exc.start})") from None
    else:
        text = raw
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise UnsafeInput(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except UnsafeInput:
        raise
    except RecursionError:
        raise UnsafeInput("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        message = str(exc).split(";")[0].split(":")[0]
        raise UnsafeInput(f"invalid JSON: {clip(message, 80)[1:-1]}") from None
