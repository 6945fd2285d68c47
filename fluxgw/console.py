"""One voice for what a running flux says on its terminal: status lines, warnings, errors.

Every line flux itself writes while serving starts with ``flux: `` (the CLI's errors already
read ``flux: error: ...``), so it cannot be mistaken for a request line (those start with the
time) or a function's output (indented):

    flux: serving /home/ada/shop at http://127.0.0.1:4000
    flux: warning: nothing is deployed yet, every route answers 404: run 'flux deploy'

:func:`say` writes a status line (stdout); :func:`warn` a warning (stderr), once per process
for the same message or ``once`` key, so a condition noticed again and again (a corrupt state
file, the sandbox being unavailable) is reported once. Log records of fluxgw and hypercorn go
through the same style (:func:`configure_logging`), and hypercorn's own chatter (its
``Running on ...`` line) is not shown: flux says where it serves. See docs/logs.md.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

from .logline import use_color

__all__ = ["configure_logging", "say", "status_stream", "warn"]

PREFIX = "flux: "
_YELLOW, _RED = "33", "31"

_warned: set[str] = set()
_lock = threading.Lock()
_status_to_stderr = False


def status_stream() -> TextIO:
    """Where status lines go: stdout, unless stdout carries JSON request lines."""
    return sys.stderr if _status_to_stderr else sys.stdout


def say(text: str) -> None:
    """A status line: ``flux: serving ... at URL``, ``flux: redeployed version 3 ...``."""
    _write(status_stream(), PREFIX + text)


def warn(message: str, *, once: str | None = None) -> bool:
    """``flux: warning: message`` on stderr, the first time only; True if it was written.

    ``once`` names the condition when the message itself varies (e.g. a path): a warning
    with the same key is not repeated. Thread-safe (state files are read in worker threads).
    """
    key = once if once is not None else message
    with _lock:
        if key in _warned:
            return False
        _warned.add(key)
    _write(sys.stderr, PREFIX + _label("warning:", _YELLOW, sys.stderr) + " " + message)
    return True


def error(message: str) -> None:
    """``flux: error: message`` on stderr (every time: errors are not deduplicated)."""
    _write(sys.stderr, PREFIX + _label("error:", _RED, sys.stderr) + " " + message)


def _label(text: str, color: str, stream: TextIO) -> str:
    return f"\x1b[{color}m{text}\x1b[0m" if use_color(stream, os.environ) else text


def _write(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


class _OneVoice(logging.Handler):
    """Log records in flux's style: warnings through :func:`warn` (once each), errors through
    :func:`error`, with the traceback of a logged exception indented under it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                trace = logging.Formatter().formatException(record.exc_info)
                message += "\n" + "\n".join("    " + line for line in trace.splitlines())
            if record.levelno >= logging.ERROR:
                error(message)
            else:
                warn(message)
        except Exception:
            self.handleError(record)


def configure_logging(*, json_requests: bool = False) -> None:
    """Route log records through flux's voice; with ``json_requests`` status lines go to
    stderr so stdout holds only JSON request lines (for log shippers)."""
    global _status_to_stderr
    _status_to_stderr = json_requests
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OneVoice):
            root.removeHandler(handler)
    root.addHandler(_OneVoice())
    root.setLevel(logging.WARNING)
    # hypercorn logs "Running on http://... (CTRL + C to quit)" at INFO: flux says it instead.
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.access").disabled = True
