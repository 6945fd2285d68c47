"""One exception type per user-facing failure, each carrying the text a user should read.

The CLI turns a :class:`FluxError` into one stderr line and exit code 1; the gateway turns an
:class:`HttpError` into the JSON error body
(docs/reference.md#status-codes).
"""

from __future__ import annotations


class FluxError(Exception):
    """A failure the user caused or can fix; ``str(exc)`` is the one line they see."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(FluxError):
    """A flux.json (or other project file) is invalid: names the file and the field."""

    def __init__(self, file: str, field: str | None, problem: str) -> None:
        where = f"{file}: field '{field}'" if field else file
        super().__init__(f"{where}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem


class StateError(FluxError):
    """A file under .flux/ is corrupt or unreadable; never silently overwritten."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class ProjectNotFound(FluxError):
    """No project folder (with functions/ or .flux/) at or above the working directory."""


class HttpError(Exception):
    """An answer the gateway gives instead of calling a function
    (docs/reference.md#status-codes)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []
