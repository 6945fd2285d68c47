"""Bounded function output: what the gateway keeps of the lines a function prints.

The worker shims already cap what they send (same numbers), but a worker is untrusted code: the
gateway enforces the caps itself, on both the protocol's ``log`` frames and the raw fd 1/2 pipe,
and never holds more than the cap per invocation (docs/runtimes.md, "Limits").
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .api import LogLine

MAX_LINE = 16 * 1024  # characters kept of one line
MAX_LINES = 1000  # lines kept per invocation
MAX_BYTES = 1024 * 1024  # characters kept per invocation
_MARKER_ROOM = 64  # a line already cut by the worker ends with "… [N characters cut]"


def cut(text: str) -> str:
    if len(text) <= MAX_LINE:
        return text
    return f"{text[:MAX_LINE]}… [{len(text) - MAX_LINE} characters cut]"


class LogBuffer:
    """One invocation's log lines, at most MAX_LINES / MAX_BYTES, then a count of the rest."""

    __slots__ = ("_lines", "_size", "dropped")

    def __init__(self) -> None:
        self._lines: list[LogLine] = []
        self._size = 0
        self.dropped = 0

    def add(self, line: LogLine) -> None:
        if len(self._lines) >= MAX_LINES or self._size >= MAX_BYTES:
            self.dropped += 1
            return
        if len(line.text) > MAX_LINE + _MARKER_ROOM:
            line = LogLine(line.timestamp, line.stream, cut(line.text))
        self._lines.append(line)
        self._size += len(line.text)

    def count_dropped(self, n: int) -> None:
        self.dropped += n

    @property
    def full(self) -> bool:
        return len(self._lines) >= MAX_LINES or self._size >= MAX_BYTES

    def lines(self) -> tuple[LogLine, ...]:
        if not self.dropped:
            return tuple(self._lines)
        marker = LogLine(
            time.time(),
            "log",
            f"… {self.dropped} lines dropped (output is capped at {MAX_LINES} lines / "
            f"{MAX_BYTES // 1024} KiB per invocation)",
        )
        return (*self._lines, marker)


class LineSplitter:
    """Splits a raw byte stream (fd 1/2) into lines without ever holding more than MAX_LINE.

    ``target()`` says where lines go at this moment: a LogBuffer (which may be full: then the
    data is only counted, never split), or None (the gateway's own log, via ``fallback``).
    """

    def __init__(
        self,
        target: Callable[[], LogBuffer | None],
        fallback: Callable[[LogLine], None],
    ) -> None:
        self._target = target
        self._fallback = fallback
        self._partial = bytearray()
        self._cut = 0  # bytes of the current line beyond MAX_LINE, discarded

    def feed(self, data: bytes) -> None:
        buffer = self._target()
        if buffer is not None and buffer.full:
            # A flood: count lines with one C call instead of splitting 200 MB in python.
            buffer.count_dropped(data.count(b"\n"))
            self._partial.clear()
            return
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            room = MAX_LINE - len(self._partial)
            if len(piece) > room:
                self._partial += piece[: max(room, 0)]
                self._cut += len(piece) - max(room, 0)
            else:
                self._partial += piece
            if newline < 0:
                return
            self._emit(buffer)
            start = newline + 1

    def _emit(self, buffer: LogBuffer | None) -> None:
        text = self._partial.decode("utf-8", "replace")
        if self._cut:
            text += f"… [{self._cut} bytes cut]"
        self._partial.clear()
        self._cut = 0
        line = LogLine(time.time(), "output", text)
        if buffer is not None:
            buffer.add(line)
        else:
            self._fallback(line)

    def close(self) -> None:
        if self._partial or self._cut:
            self._emit(self._target())
