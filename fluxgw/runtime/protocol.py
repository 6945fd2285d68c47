"""The gateway <-> worker wire protocol, sans-IO (the h11 habit): bytes in, events out.

Nothing here touches a pipe or a process, so every transition is unit tested without spawning
anything (tests/unit/test_protocol.py). :mod:`fluxgw.runtime.process` does the I/O.

Framing (both directions)::

    uint32 header_length | uint32 body_length | header (UTF-8 JSON object) | body (raw bytes)

Both lengths are big-endian. The body travels as raw bytes, so binary request and response
bodies round-trip without base64. The worker writes its frames on a dedicated pipe (not its
stdout), so whatever a function or its children print cannot corrupt the stream.

Messages, by ``header["type"]``:

- gateway -> worker: ``invoke`` {id, method, url, path, query, headers, request_id, function,
  deadline, traceparent} + request body. Closing the request pipe asks the worker to exit.
- worker -> gateway: ``ready`` {pid, runtime} once the function's module is loaded;
  ``start_failed`` {error, traceback} if loading it failed; ``log`` {stream, text, ts} per line
  printed or logged; ``result`` {id, status, headers} + response body; ``error`` {id, error,
  traceback} when the handler raised (the worker stays usable).

Gateway-side states (:class:`State`)::

    STARTING --ready--> IDLE --send_invoke--> BUSY --result|error--> IDLE
    STARTING --start_failed--> FAILED
    any --protocol violation--> BROKEN        any --end of stream--> CLOSED

``log`` is accepted in STARTING, IDLE and BUSY. A worker in BROKEN, FAILED or CLOSED is never
reused: its process group is killed.
"""

from __future__ import annotations

import enum
import re
import struct
from typing import Any

import attrs
import orjson

PREFIX = struct.Struct(">II")
MAX_HEADER = 1024 * 1024  # headers are small JSON; a bigger one means a corrupt stream
MAX_BODY = 6 * 1024 * 1024  # docs/reference.md#status-codes: bodies up to 6 MiB, both ways
LOG_STREAMS = ("stdout", "stderr", "log", "output")
# RFC 9110 token for header names; values must not smuggle CR/LF/NUL into the gateway's response.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class ProtocolError(Exception):
    """The worker sent something the protocol does not allow: kill it, answer 502."""


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    FAILED = "failed"  # the function's module failed to load
    BROKEN = "broken"  # a protocol violation: the stream can no longer be trusted
    CLOSED = "closed"  # the worker closed its end (exited or crashed)


@attrs.frozen
class Ready:
    pid: int
    runtime: str


@attrs.frozen
class StartFailed:
    error: str  # the error's last line, for the 502 message
    traceback: str  # the whole traceback, for the logs


@attrs.frozen
class Log:
    stream: str
    text: str
    timestamp: float


@attrs.frozen
class Result:
    id: int
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@attrs.frozen
class HandlerError:
    id: int
    error: str
    traceback: str


@attrs.frozen
class Closed:
    """The worker's end of the stream closed (it exited); ``state`` is the state it was in."""

    state: State


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Event = Ready | StartFailed | Log | Result | HandlerError | Closed


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame: prefix, JSON header, raw body."""
    raw = orjson.dumps(header)  # every request: ~10x faster than json.dumps
    if len(raw) > MAX_HEADER:
        raise ValueError(f"frame header too large ({len(raw)} bytes)")
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body too large ({len(body)} bytes, limit {MAX_BODY})")
    return PREFIX.pack(len(raw), len(body)) + raw + body


class FrameDecoder:
    """Splits a byte stream into ``(header, body)`` frames; raises ProtocolError on garbage."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buffer = bytearray()
        self._max_body = max_body

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame (non-zero at EOF = truncated)."""
        return len(self._buffer)

    def next_frame(self) -> tuple[dict[str, Any], bytes] | None:
        if len(self._buffer) < PREFIX.size:
            return None
        header_len, body_len = PREFIX.unpack_from(self._buffer)
        if header_len == 0 or header_len > MAX_HEADER:
            raise ProtocolError(f"bad frame header length {header_len}")
        if body_len > self._max_body:
            raise ProtocolError(f"frame body of {body_len} bytes exceeds {self._max_body}")
        end = PREFIX.size + header_len + body_len
        if len(self._buffer) < end:
            return None
        raw = bytes(self._buffer[PREFIX.size : PREFIX.size + header_len])
        body = bytes(self._buffer[PREFIX.size + header_len : end])
        del self._buffer[:end]
        try:
            header = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"frame header is not JSON: {exc}") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise ProtocolError("frame header is not an object with a 'type'")
        return header, body


def _field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    # bool is an int subclass: a status of `true` is a bug, not 1.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"{header.get('type')!r} frame: field {name!r} is missing or invalid")
    return value


def _headers(raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise ProtocolError("result frame: 'headers' must be a list of [name, value] pairs")
    pairs: list[tuple[str, str]] = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            raise ProtocolError("result frame: each header must be a [name, value] pair")
        name, value = item
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ProtocolError(f"result frame: invalid response header {name!r}")
        pairs.append((name, value))
    return tuple(pairs)


class WorkerProtocol:
    """Gateway-side protocol state of one worker: feed bytes, pull events, build requests."""

    def __init__(self) -> None:
        self.state = State.STARTING
        self._decoder = FrameDecoder()
        self._eof = False
        self._next_id = 1
        self.current_id: int | None = None  # the invocation in flight (BUSY)

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the worker's protocol pipe; ``b""`` means end of stream."""
        if data:
            self._decoder.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA. Raises ProtocolError (state becomes BROKEN)."""
        if self.state in (State.BROKEN, State.CLOSED):
            raise ProtocolError(f"worker protocol is {self.state.value}")
        try:
            frame = self._decoder.next_frame()
        except ProtocolError:
            self.state = State.BROKEN
            raise
        if frame is None:
            if not self._eof:
                return NEED_DATA
            if self._decoder.pending:
                self.state = State.BROKEN
                raise ProtocolError("worker stream ended in the middle of a frame")
            previous, self.state = self.state, State.CLOSED
            return Closed(previous)
        try:
            return self._handle(*frame)
        except ProtocolError:
            self.state = State.BROKEN
            raise

    def _handle(self, header: dict[str, Any], body: bytes) -> Event:
        kind = header["type"]
        if kind == "log" and self.state in (State.STARTING, State.IDLE, State.BUSY):
            stream = _field(header, "stream", str)
            if stream not in LOG_STREAMS:
                raise ProtocolError(f"log frame: unknown stream {stream!r}")
            ts = _field(header, "ts", (int, float))
            return Log(stream, _field(header, "text", str), float(ts))
        if kind == "ready" and self.state is State.STARTING:
            ready = Ready(_field(header, "pid", int), _field(header, "runtime", str))
            self.state = State.IDLE
            return ready
        if kind == "start_failed" and self.state is State.STARTING:
            self.state = State.FAILED
            return StartFailed(_field(header, "error", str), str(header.get("traceback", "")))
        if kind in ("result", "error") and self.state is State.BUSY:
            invocation_id = self.current_id
            if invocation_id is None or header.get("id") != invocation_id:
                raise ProtocolError(f"{kind} frame for invocation {header.get('id')!r}")
            event: Event
            if kind == "result":
                status = _field(header, "status", int)
                if not 100 <= status <= 599:
                    raise ProtocolError(f"result frame: status {status} out of range")
                event = Result(invocation_id, status, _headers(header.get("headers")), body)
            else:
                error = _field(header, "error", str)
                event = HandlerError(invocation_id, error, str(header.get("traceback", "")))
            self.state = State.IDLE
            self.current_id = None
            return event
        raise ProtocolError(f"unexpected {kind!r} frame while {self.state.value}")

    def send_invoke(self, request: dict[str, Any], body: bytes) -> bytes:
        """Frame an invocation (IDLE -> BUSY); ``request`` holds the invoke header fields."""
        if self.state is not State.IDLE:
            raise ProtocolError(f"cannot invoke a worker that is {self.state.value}")
        self.current_id = self._next_id
        self._next_id += 1
        frame = encode_frame({**request, "type": "invoke", "id": self.current_id}, body)
        self.state = State.BUSY
        return frame

    def mark_broken(self) -> None:
        """The I/O layer gave up on this worker (timeout mid-read): never reuse it."""
        self.state = State.BROKEN
