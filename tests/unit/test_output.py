"""Bounded function output: the gateway never keeps more than the caps, however it is fed."""

from __future__ import annotations

from fluxgw.runtime.api import LogLine
from fluxgw.runtime.output import MAX_LINE, MAX_LINES, LineSplitter, LogBuffer


def test_log_buffer_keeps_the_cap_then_counts_and_marks_the_rest() -> None:
    buffer = LogBuffer()
    for i in range(MAX_LINES + 250):
        buffer.add(LogLine(1.0, "stdout", f"line {i}"))
    lines = buffer.lines()
    assert len(lines) == MAX_LINES + 1
    assert lines[MAX_LINES - 1].text == f"line {MAX_LINES - 1}"
    assert lines[-1].text.startswith("… 250 lines dropped")


def test_log_buffer_cuts_one_long_line() -> None:
    buffer = LogBuffer()
    buffer.add(LogLine(1.0, "stdout", "x" * (MAX_LINE + 1000)))
    (line,) = buffer.lines()
    assert line.text == "x" * MAX_LINE + "… [1000 characters cut]"


def test_splitter_never_holds_more_than_one_line_of_a_50_mb_line() -> None:
    buffer = LogBuffer()
    splitter = LineSplitter(lambda: buffer, lambda line: None)
    piece = b"z" * (256 * 1024)
    for _ in range(200):  # 50 MiB without a newline, fed like the pipe delivers it
        splitter.feed(piece)
        assert len(splitter._partial) <= MAX_LINE
    splitter.feed(b"tail\nnext\n")
    texts = [line.text for line in buffer.lines()]
    assert texts == ["z" * MAX_LINE + f"… [{200 * len(piece) + 4 - MAX_LINE} bytes cut]", "next"]


def test_splitter_only_counts_once_the_buffer_is_full() -> None:
    buffer = LogBuffer()
    splitter = LineSplitter(lambda: buffer, lambda line: None)
    splitter.feed(b"a\n" * MAX_LINES)
    splitter.feed(b"b\n" * 5000)
    lines = buffer.lines()
    assert len(lines) == MAX_LINES + 1 and lines[-1].text.startswith("… 5000 lines dropped")


def test_splitter_sends_lines_without_an_owner_to_the_fallback() -> None:
    seen: list[LogLine] = []
    splitter = LineSplitter(lambda: None, seen.append)
    splitter.feed(b"one\ntw")
    splitter.feed(b"o\n")
    splitter.feed(b"partial")
    splitter.close()
    assert [line.text for line in seen] == ["one", "two", "partial"]
    assert {line.stream for line in seen} == {"output"}
