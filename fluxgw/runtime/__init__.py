"""Function runtimes: the worker pool (``fluxgw.runtime.pool``) and what handlers import.

This module is imported INSIDE python workers (``from fluxgw.runtime import Response``), so it
must stay stdlib-only and cheap: cold start is measured against bare ``python3 -c pass``. The
pool lives in :mod:`fluxgw.runtime.pool` and is imported from there, never re-exported here.
"""

from __future__ import annotations

__all__ = ["Response"]


class Response:
    """What a python handler returns to set the status and headers (docs/runtimes.md).

    ``body`` may be ``bytes`` (sent as is, ``application/octet-stream`` unless a content type
    is given), ``str`` (``text/plain; charset=utf-8``), ``None`` (empty), any JSON-able value
    (``application/json``), or a generator / async generator of ``str``/``bytes`` chunks,
    which streams. ``headers`` is a dict or a list of ``(name, value)`` pairs; use
    pairs to send one name several times (``Set-Cookie``).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: object = None,  # no `typing` import: it costs ~3 ms of cold start
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"Response status must be an int in 100-599, got {status!r}")
        self.status = status
        self.body = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"Response(status={self.status!r}, body={self.body!r}, headers={self.headers!r})"
