"""The gateway <-> worker wire protocol, sans-IO (the h11 habit): bytes in, events out.

Nothing here touches a pipe or a process, so every transition is unit tested without spawning
anything (tests/unit/test_protocol.py). :mod:`fluxgw.runtime.process` does the I/O. The
contract a function author sees is in docs/runtimes.md; this is the wire underneath it.

Framing (both directions)::

    uint32 header_length | uint32 body_length | header (UTF-8 JSON object) | body (raw bytes)

Both lengths are big-endian; bodies travel as raw bytes (no base64). The worker writes on a
dedicated pipe (not its stdout), so whatever a function prints cannot corrupt the stream.

One worker serves many invocations at once: every invocation frame carries the invocation
``id`` the gateway chose, and frames of different invocations interleave freely.

gateway -> worker
  ``invoke``  {id, method, url, path, query, headers, request_id, function, deadline,
              traceparent} + request body
  ``cancel``  {id, reason}: the gateway gave up (deadline, client gone); the worker stops the
              invocation and answers ``cancelled`` (or whatever it was about to send)
  ``credit``  {id, bytes}: the gateway delivered that many streamed bytes to its client; the
              worker may send that many more (flow control, see :data:`WINDOW`)
  closing the request pipe asks the worker to exit.

worker -> gateway
  ``ready``        {pid, runtime, concurrency}: module loaded; ``concurrency`` is how many
                   invocations the worker itself can run at once (null = no limit of its own)
  ``start_failed`` {error, traceback}: loading the module failed
  ``log``          {id | null, stream, text, ts}: one line; ``id`` names the invocation it was
                   printed in (null: the worker itself, or an invocation already finished)
  ``response``     {id, status, headers} + the whole body: a complete, unstreamed answer
  ``start``        {id, status, headers} + first chunk: a streamed answer begins
  ``chunk``        {id} + bytes
  ``end``          {id}: the stream is complete
  ``error``        {id, error, traceback, code?}: the handler raised (before or during a stream)
  ``cancelled``    {id}: a cancelled invocation has stopped

Per-invocation states, every allowed move written once in :data:`TRANSITIONS`::

    SENT --response|error--> DONE          SENT --start--> STREAMING --chunk--> STREAMING
    STREAMING --end|error--> DONE          SENT|STREAMING --cancel (gateway)--> CANCELLING
    CANCELLING --start|chunk--> CANCELLING (late frames, dropped)
    CANCELLING --response|end|error|cancelled--> DONE

Worker states (:data:`WORKER_TRANSITIONS`)::

    STARTING --ready--> READY       STARTING --start_failed--> FAILED
    any --protocol violation--> BROKEN        any --end of stream--> CLOSED

Flow control: a streaming invocation may have at most ``WINDOW`` bytes sent but not yet
credited, so a slow client slows its own stream only (never the other invocations sharing the
pipe) and the gateway never buffers more than ``WINDOW`` per stream. A worker that overruns its
window is BROKEN.
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
MAX_BODY = 6 * 1024 * 1024  # unstreamed bodies up to 6 MiB, both ways
MAX_CHUNK = 64 * 1024  # one streamed chunk frame; workers split bigger writes
WINDOW = 1024 * 1024  # streamed bytes in flight per invocation (docs/runtimes.md)
LOG_STREAMS = ("stdout", "stderr", "log", "output")
ERROR_CODES = ("memory_limit_exceeded",)  # an ``error`` frame's optional ``code``
# RFC 9110 token for header names; values must not smuggle CR/LF/NUL into the gateway's response.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class ProtocolError(Exception):
    """The worker sent something the protocol does not allow: kill it, answer 502."""


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"  # the function's module failed to load
    BROKEN = "broken"  # a protocol violation: the stream can no longer be trusted
    CLOSED = "closed"  # the worker closed its end (exited or crashed)


class InvState(enum.Enum):
    SENT = "sent"  # invoke framed, nothing answered yet
    STREAMING = "streaming"  # start received, chunks flowing
    CANCELLING = "cancelling"  # the gateway sent cancel; waiting for the worker to let go
    DONE = "done"  # terminal: the worker is no longer running it


_S, _ST, _C, _D = InvState.SENT, InvState.STREAMING, InvState.CANCELLING, InvState.DONE
# (state, frame type or gateway action) -> next state. Anything absent is a protocol error.
TRANSITIONS: dict[tuple[InvState, str], InvState] = {
    (_S, "response"): _D,
    (_S, "start"): _ST,
    (_S, "error"): _D,
    (_S, "cancel"): _C,
    (_ST, "chunk"): _ST,
    (_ST, "end"): _D,
    (_ST, "error"): _D,
    (_ST, "cancel"): _C,
    (_C, "start"): _C,
    (_C, "chunk"): _C,
    (_C, "cancel"): _C,
    (_C, "response"): _D,
    (_C, "end"): _D,
    (_C, "error"): _D,
    (_C, "cancelled"): _D,
}
WORKER_TRANSITIONS: dict[tuple[WorkerState, str], WorkerState] = {
    (WorkerState.STARTING, "ready"): WorkerState.READY,
    (WorkerState.STARTING, "start_failed"): WorkerState.FAILED,
}
INVOCATION_FRAMES = frozenset(kind for _, kind in TRANSITIONS if kind != "cancel")


@attrs.frozen
class Ready:
    pid: int
    runtime: str
    concurrency: int | None  # the worker's own limit (a sync python handler: 1)


@attrs.frozen
class StartFailed:
    error: str  # the error's last line, for the 502 message
    traceback: str  # the whole traceback, for the logs


@attrs.frozen
class Log:
    id: int | None  # None: not attributable to a running invocation
    stream: str
    text: str
    timestamp: float


@attrs.frozen
class Response:
    """A complete answer (``response`` frame), or the head + first chunk (``start``)."""

    id: int
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    streaming: bool = False


@attrs.frozen
class Chunk:
    id: int
    data: bytes


@attrs.frozen
class End:
    id: int


@attrs.frozen
class HandlerError:
    id: int
    error: str
    traceback: str
    code: str | None = None  # "memory_limit_exceeded" when the worker ran out of memory


@attrs.frozen
class Cancelled:
    id: int


@attrs.frozen
class Closed:
    """The worker's end of the stream closed (it exited); ``state`` is the state it was in."""

    state: WorkerState


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Event = Ready | StartFailed | Log | Response | Chunk | End | HandlerError | Cancelled | Closed
# Events that end an invocation: after one of these its id is free and its slot released.
FINAL = (HandlerError, End, Cancelled)


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
        raise ProtocolError("response frame: 'headers' must be a list of [name, value] pairs")
    pairs: list[tuple[str, str]] = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            raise ProtocolError("response frame: each header must be a [name, value] pair")
        name, value = item
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ProtocolError(f"response frame: invalid response header {name!r}")
        pairs.append((name, value))
    return tuple(pairs)


@attrs.define
class _Invocation:
    state: InvState = InvState.SENT
    unacked: int = 0  # streamed bytes received and not yet credited back


class WorkerProtocol:
    """Gateway-side protocol state of one worker: feed bytes, pull events, frame requests."""

    def __init__(self, window: int = WINDOW) -> None:
        self.state = WorkerState.STARTING
        self.concurrency: int | None = None  # the worker's own limit, from ``ready``
        self._window = window
        self._decoder = FrameDecoder()
        self._eof = False
        self._next_id = 1
        self._invocations: dict[int, _Invocation] = {}

    # -- introspection ----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Invocations the worker is still running (cancelling ones included)."""
        return len(self._invocations)

    def invocation_state(self, invocation_id: int) -> InvState:
        entry = self._invocations.get(invocation_id)
        return entry.state if entry is not None else InvState.DONE

    def active_ids(self) -> list[int]:
        return list(self._invocations)

    # -- worker -> gateway ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the worker's protocol pipe; ``b""`` means end of stream."""
        if data:
            self._decoder.feed(data)
        else:
            self._eof = True

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA. Raises ProtocolError (state becomes BROKEN)."""
        if self.state in (WorkerState.BROKEN, WorkerState.CLOSED):
            raise ProtocolError(f"worker protocol is {self.state.value}")
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                if not self._eof:
                    return NEED_DATA
                if self._decoder.pending:
                    raise ProtocolError("worker stream ended in the middle of a frame")
                previous, self.state = self.state, WorkerState.CLOSED
                return Closed(previous)
            return self._handle(*frame)
        except ProtocolError:
            self.state = WorkerState.BROKEN
            raise

    def _handle(self, header: dict[str, Any], body: bytes) -> Event:
        kind = header["type"]
        if kind == "log":
            return self._log(header)
        if self.state is WorkerState.STARTING:
            next_state = WORKER_TRANSITIONS.get((self.state, kind))
            if next_state is None:
                raise ProtocolError(f"unexpected {kind!r} frame while starting")
            self.state = next_state
            if kind == "ready":
                concurrency = header.get("concurrency")
                if concurrency is not None and (
                    not isinstance(concurrency, int) or isinstance(concurrency, bool)
                ):
                    raise ProtocolError("ready frame: 'concurrency' must be an int or null")
                self.concurrency = concurrency if concurrency is None else max(1, concurrency)
                return Ready(
                    _field(header, "pid", int), _field(header, "runtime", str), concurrency
                )
            return StartFailed(_field(header, "error", str), str(header.get("traceback", "")))
        if kind not in INVOCATION_FRAMES or self.state is not WorkerState.READY:
            raise ProtocolError(f"unexpected {kind!r} frame while {self.state.value}")
        invocation_id = _field(header, "id", int)
        entry = self._invocations.get(invocation_id)
        if entry is None:
            raise ProtocolError(f"{kind!r} frame for unknown invocation {invocation_id}")
        previous = entry.state
        target = TRANSITIONS.get((previous, kind))
        if target is None:
            raise ProtocolError(
                f"{kind!r} frame for invocation {invocation_id} while {previous.value}"
            )
        event = self._event(kind, invocation_id, header, body)
        if kind in ("start", "chunk") and previous is not InvState.CANCELLING:
            entry.unacked += len(body)
            if entry.unacked > self._window + MAX_CHUNK:
                raise ProtocolError(
                    f"invocation {invocation_id} sent {entry.unacked} bytes past its window"
                )
        entry.state = target
        if target is InvState.DONE:
            del self._invocations[invocation_id]
        return event

    def _log(self, header: dict[str, Any]) -> Log:
        stream = _field(header, "stream", str)
        if stream not in LOG_STREAMS:
            raise ProtocolError(f"log frame: unknown stream {stream!r}")
        ts = _field(header, "ts", (int, float))
        raw_id = header.get("id")
        # A line of a finished invocation (a background task printing late) belongs to no one.
        owner = raw_id if isinstance(raw_id, int) and raw_id in self._invocations else None
        return Log(owner, stream, _field(header, "text", str), float(ts))

    def _event(self, kind: str, invocation_id: int, header: dict[str, Any], body: bytes) -> Event:
        if kind in ("response", "start"):
            status = _field(header, "status", int)
            if not 100 <= status <= 599:
                raise ProtocolError(f"{kind} frame: status {status} out of range")
            headers = _headers(header.get("headers"))
            return Response(invocation_id, status, headers, body, streaming=kind == "start")
        if kind == "chunk":
            if len(body) > MAX_CHUNK:
                raise ProtocolError(f"chunk of {len(body)} bytes exceeds {MAX_CHUNK}")
            return Chunk(invocation_id, body)
        if kind == "end":
            return End(invocation_id)
        if kind == "cancelled":
            return Cancelled(invocation_id)
        code = header.get("code")
        if code is not None and code not in ERROR_CODES:
            raise ProtocolError(f"error frame: unknown code {code!r}")
        error = _field(header, "error", str)
        return HandlerError(invocation_id, error, str(header.get("traceback", "")), code)

    # -- gateway -> worker ------------------------------------------------------------------

    def send_invoke(self, request: dict[str, Any], body: bytes) -> tuple[int, bytes]:
        """Frame a new invocation; returns its id and the bytes to write."""
        if self.state is not WorkerState.READY:
            raise ProtocolError(f"cannot invoke a worker that is {self.state.value}")
        if self.concurrency is not None and self.in_flight >= self.concurrency:
            raise ProtocolError(f"worker already runs {self.in_flight} of {self.concurrency}")
        invocation_id = self._next_id
        self._next_id += 1
        frame = encode_frame({**request, "type": "invoke", "id": invocation_id}, body)
        self._invocations[invocation_id] = _Invocation()
        return invocation_id, frame

    def send_cancel(self, invocation_id: int, reason: str) -> bytes:
        """Ask the worker to stop an invocation; ``b""`` when it is already done."""
        entry = self._invocations.get(invocation_id)
        if entry is None:
            return b""
        entry.state = TRANSITIONS[(entry.state, "cancel")]
        return encode_frame({"type": "cancel", "id": invocation_id, "reason": reason})

    def consumed(self, invocation_id: int, nbytes: int) -> bytes:
        """The I/O layer delivered ``nbytes`` of a stream: the credit frame to write (or b"")."""
        entry = self._invocations.get(invocation_id)
        if entry is None or entry.state is not InvState.STREAMING or nbytes <= 0:
            return b""
        entry.unacked = max(0, entry.unacked - nbytes)
        return encode_frame({"type": "credit", "id": invocation_id, "bytes": nbytes})

    def mark_broken(self) -> None:
        """The I/O layer gave up on this worker: never reuse it."""
        self.state = WorkerState.BROKEN
