"""Replace secret values in function output with ``[secret:NAME]`` (docs/secrets.md).

Each value is looked for in its plain form, URL-encoded (``quote`` and ``quote_plus``) and
base64 (standard and URL-safe alphabets, at each of the three byte alignments a value can have
inside a longer encoded string, so ``base64("user:" + value)`` is caught too). All forms of all
secrets are compiled into one regular expression shaped like a trie (common prefixes factored
out), so a scan costs about one pass over the text whatever the number of secrets.

Line and chunk boundaries: a worker's output arrives as lines, and a long line may be cut into
pieces. :func:`Redactor.redact_lines` matches over consecutive lines of one stream joined with
a newline (a multi-line value, e.g. a PEM key) and joined with nothing (a value cut at a chunk
boundary), and masks every line a match touches.
"""

from __future__ import annotations

import base64
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence

from .runtime.api import FunctionFailed, InvocationResult, LogLine

MIN_LENGTH = 4  # shorter values (and encoded forms) are not searched: they would mask noise


def encoded_forms(value: str) -> set[str]:
    """The strings that give ``value`` away: itself, URL-encoded, base64 fragments."""
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
    raw = value.encode("utf-8", "surrogatepass")
    for shift in range(3):
        # Encode with ``shift`` filler bytes in front, keep only the characters that depend on
        # the value alone: those appear whenever the value sits at that alignment.
        padded = b"\0" * shift + raw
        total = len(padded)
        start = (0, 2, 3)[shift]
        end = (total // 3) * 4 + (0, 1, 2)[total % 3]
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            fragment = encode(padded).decode()[start:end]
            if len(fragment) >= 8:
                forms.add(fragment)
    return {f for f in forms if len(f) >= MIN_LENGTH}


def _trie_pattern(words: Iterable[str], depth: int = 0) -> str:
    """A regex matching any of ``words``, longest first, with shared prefixes factored.

    Only the first few characters are factored (a trie of whole 64 KiB values would cost
    megabytes): that is what lets a scan skip a position after a character or two.
    """
    words = sorted(set(words), key=lambda w: (-len(w), w))
    if depth >= 3 or len(words) == 1:
        return "|".join(re.escape(w) for w in words)
    groups: dict[str, list[str]] = {}
    ends = False
    for word in words:
        if word:
            groups.setdefault(word[0], []).append(word[1:])
        else:
            ends = True
    branches = []
    for char, rests in groups.items():
        rest = _trie_pattern(rests, depth + 1)
        branches.append(re.escape(char) + (f"(?:{rest})" if rest else ""))
    body = "|".join(branches)
    # A word ending here while longer ones go on: the optional group is greedy (longest wins).
    return f"(?:{body})?" if ends else body


class Redactor:
    """Masks the values of ``secrets`` (name -> value); cheap to call when there are none."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._names: dict[str, str] = {}
        for name, value in sorted(secrets.items()):
            for form in encoded_forms(value):
                self._names.setdefault(form, name)
        self._pattern = re.compile(_trie_pattern(self._names)) if self._names else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def _label(self, match: re.Match[str]) -> str:
        return f"[secret:{self._lookup(match.group())}]"

    def _lookup(self, text: str) -> str:
        return self._names.get(text) or next(n for f, n in self._names.items() if f in text)

    def redact(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(self._label, text)

    def redact_lines(self, lines: Sequence[LogLine]) -> tuple[LogLine, ...]:
        """Redacted copies of ``lines``; runs of one stream are matched as a whole."""
        if self._pattern is None or not lines:
            return tuple(lines)
        out: list[LogLine] = []
        start = 0
        for index in range(1, len(lines) + 1):
            if index == len(lines) or lines[index].stream != lines[start].stream:
                out.extend(self._redact_run(lines[start:index]))
                start = index
        return tuple(out)

    def _redact_run(self, run: Sequence[LogLine]) -> list[LogLine]:
        assert self._pattern is not None
        texts = [line.text for line in run]
        # Per line: (start, end, label or "") edits; a label goes where a match starts.
        edits: list[list[tuple[int, int, str]]] = [[] for _ in texts]
        for separator in ("\n", "") if len(texts) > 1 else ("\n",):
            joined = separator.join(texts)
            offsets, position = [], 0
            for text in texts:
                offsets.append(position)
                position += len(text) + len(separator)
            for match in self._pattern.finditer(joined):
                label = f"[secret:{self._lookup(match.group())}]"
                for i, (base, text) in enumerate(zip(offsets, texts, strict=True)):
                    lo, hi = max(match.start(), base), min(match.end(), base + len(text))
                    if lo < hi or (lo == hi == match.start()):
                        first = lo == match.start()
                        edits[i].append((lo - base, hi - base, label if first else ""))
        out = []
        for line, text, line_edits in zip(run, texts, edits, strict=True):
            if not line_edits:
                out.append(line)
                continue
            new = _apply(text, line_edits)
            if new or not text:
                out.append(LogLine(line.timestamp, line.stream, new))
        return out

    def redact_result(self, result: InvocationResult) -> InvocationResult:
        if self._pattern is None or not result.logs:
            return result
        import attrs

        return attrs.evolve(result, logs=self.redact_lines(result.logs))

    def redact_failure(self, failure: FunctionFailed) -> FunctionFailed:
        if self._pattern is None:
            return failure
        return FunctionFailed(
            failure.status,
            failure.code,
            self.redact(failure.message),
            self.redact_lines(failure.logs),
            failure.worker_pid,
            failure.retry_after,
        )


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Replace the (merged) edited spans of ``text``: each span by its first label."""
    edits.sort()
    parts, cursor = [], 0
    for lo, hi, label in edits:
        if hi <= cursor and lo < cursor:
            continue  # inside a span already replaced (the other separator found it too)
        lo = max(lo, cursor)
        parts.append(text[cursor:lo])
        parts.append(label)
        cursor = max(cursor, hi)
    parts.append(text[cursor:])
    return "".join(parts)


EMPTY = Redactor({})


class LogRedactionFilter(logging.Filter):
    """Redacts records of the loggers that carry function output (the gateway's own log)."""

    def __init__(self, current: Callable[[], Redactor]) -> None:
        super().__init__()
        self._current = current

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self._current()
        if redactor:
            message = record.getMessage()
            redacted = redactor.redact(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True
