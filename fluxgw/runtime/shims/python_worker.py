"""Python worker: load one function's module once, then serve invocations until its input closes.

Run as ``python -I -B python_worker.py ENTRY`` with ``FLUX_PROTOCOL_FD`` naming the pipe the
gateway reads and ``FLUX_REQUEST_FD`` the pipe it writes (fluxgw/runtime/protocol.py has the
framing and messages). Deliberately stdlib-only and import-light: its cold start is measured
against bare ``python3 -c pass``, so asyncio, logging and traceback are imported only when a
function needs them.

Concurrency (docs/runtimes.md): an ``async def`` handler (or async generator) runs every
invocation as its own task on one asyncio loop, so one worker serves many at once; a plain
``def`` handler runs one invocation at a time (the worker announces ``concurrency: 1``).

Why the fd juggling: the protocol must survive anything a function prints. Requests arrive on
their own pipe, made non-inheritable; fd 0 becomes /dev/null, so ``input()`` or a child process
cannot eat frames; answers go out on a dedicated pipe that children do not inherit.
``print``/``sys.stderr``/``ctx.logger`` become per-line ``log`` frames tagged with the running
invocation (a context variable, so concurrent tasks never mix their lines); raw writes to fd 1/2
go to a separate pipe the gateway drains.

Output is bounded here already (the gateway enforces the same caps): per invocation at most
MAX_LINES lines / MAX_BYTES bytes, then one "... N lines dropped" line; one line is cut at
MAX_LINE characters.
"""

from __future__ import annotations

import _thread
import contextvars
import json
import os
import select
import struct
import sys
import time
import types
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:  # annotations only: collections is not worth importing at cold start
    from collections.abc import Callable

PREFIX = struct.Struct(">II")
MAX_BODY = 6 * 1024 * 1024
MAX_CHUNK = 64 * 1024  # one chunk frame (protocol.MAX_CHUNK)
WINDOW = 1024 * 1024  # streamed bytes in flight per invocation (protocol.WINDOW)
MAX_LINE = 16 * 1024  # characters kept of one line
MAX_LINES = 1000  # lines kept per invocation
MAX_BYTES = 1024 * 1024  # bytes of text kept per invocation
CO_COROUTINE = 0x80
CO_ASYNC_GENERATOR = 0x200

_encode_frame_header: Callable[[dict[str, Any]], bytes]
_decode_frame_header: Callable[[bytes], Any]
try:  # frames only; a function's own return value keeps json's semantics (see _json)
    import orjson

    _encode_frame_header = orjson.dumps
    _decode_frame_header = orjson.loads
except ImportError:  # fluxgw depends on orjson, but the shim must not

    def _json_frame_header(header: dict[str, Any]) -> bytes:
        return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()

    _encode_frame_header = _json_frame_header
    _decode_frame_header = json.loads

_write_lock = _thread.allocate_lock()  # user threads may print while we answer
_out_fd = -1
_in_fd = -1


def send(header: dict[str, Any], body: bytes = b"") -> None:
    raw = _encode_frame_header(header)
    data = memoryview(PREFIX.pack(len(raw), len(body)) + raw + body)
    with _write_lock:
        while data:
            data = data[os.write(_out_fd, data) :]


def _read_exact(n: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = os.read(_in_fd, n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def receive() -> tuple[dict[str, Any], bytes] | None:
    """The next frame from the gateway (blocking), or None when it closed our input (exit)."""
    prefix = _read_exact(PREFIX.size)
    if prefix is None:
        return None
    header_len, body_len = PREFIX.unpack(prefix)
    raw = _read_exact(header_len + body_len)
    if raw is None:
        return None
    return _decode_frame_header(raw[:header_len]), raw[header_len:]


def _input_waiting() -> bool:
    return bool(select.select([_in_fd], [], [], 0)[0])


# -- output: per-invocation, bounded ----------------------------------------------------------


class Output:
    """What one invocation (or the worker itself, id None) printed: partial lines and caps."""

    def __init__(self, invocation_id: int | None) -> None:
        self.id = invocation_id
        self.lines = 0
        self.size = 0
        self.dropped = 0
        self.partial: dict[str, str] = {}
        self.window_start = time.monotonic()

    def emit(self, stream: str, text: str) -> None:
        if self.id is None and time.monotonic() - self.window_start > 60:
            # The worker's own lines (import time, threads) are capped per minute, not forever.
            self.flush_dropped()
            self.lines = self.size = 0
            self.window_start = time.monotonic()
        if self.lines >= MAX_LINES or self.size >= MAX_BYTES:
            self.dropped += 1
            return
        if len(text) > MAX_LINE:
            text = f"{text[:MAX_LINE]}… [{len(text) - MAX_LINE} characters cut]"
        self.lines += 1
        self.size += len(text)
        send({"type": "log", "id": self.id, "stream": stream, "text": text, "ts": time.time()})

    def write(self, stream: str, text: str) -> None:
        if self.lines >= MAX_LINES or self.size >= MAX_BYTES:
            self.dropped += text.count("\n")  # a flood costs a count, not a split
            return
        partial = self.partial.get(stream, "")
        if "\n" not in text:
            partial += text
            if len(partial) > MAX_LINE * 2:  # no newline in sight: keep what a line may keep
                partial = partial[: MAX_LINE + 1]
            self.partial[stream] = partial
            return
        lines = (partial + text).split("\n")
        self.partial[stream] = lines.pop()
        for line in lines:
            self.emit(stream, line)

    def flush(self) -> None:
        for stream in list(self.partial):
            text = self.partial.pop(stream)
            if text:
                self.emit(stream, text)

    def flush_dropped(self) -> None:
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            text = (
                f"… {dropped} lines dropped (output is capped at {MAX_LINES} lines / "
                f"{MAX_BYTES // 1024} KiB per invocation)"
            )
            send({"type": "log", "id": self.id, "stream": "log", "text": text, "ts": time.time()})

    def finish(self) -> None:
        """Before the invocation's final frame: partial lines, then the dropped count."""
        self.flush()
        self.flush_dropped()


_worker_output = Output(None)
_current: contextvars.ContextVar[Output] = contextvars.ContextVar("flux_output")


def current_output() -> Output:
    return _current.get(_worker_output)


def log(stream: str, text: str) -> None:
    """One line (or several, split on newlines) to the running invocation's trace."""
    output = current_output()
    for line in text.split("\n"):
        output.emit(stream, line)


class CaptureStream:
    """A text stream that turns every complete line into a ``log`` frame."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, stream: str, fd: int) -> None:
        self._stream = stream
        self._fd = fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        current_output().write(self._stream, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Lines are sent as they complete; partial ones at the end of the invocation."""

    def fileno(self) -> int:
        # Code passing sys.stdout to a subprocess gets the drained fd 1/2 pipe.
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    @property
    def buffer(self) -> Any:
        outer = self

        class _Bytes:
            def write(self, data: bytes) -> int:
                outer.write(bytes(data).decode("utf-8", "replace"))
                return len(data)

            def flush(self) -> None:
                pass

        return _Bytes()


class Context:
    """``ctx``: request_id, function, deadline (epoch seconds), traceparent, auth, logger."""

    __slots__ = ("auth", "deadline", "function", "request_id", "traceparent")

    _loggers: dict[str, Any] = {}

    def __init__(self, header: dict[str, Any]) -> None:
        self.request_id: str = header.get("request_id", "")
        self.function: str = header.get("function", "")
        self.deadline: float = float(header.get("deadline", 0.0))
        self.traceparent: str | None = header.get("traceparent")
        # who called: {"type": "key", "key_name"} or {"type": "jwt", "subject", "issuer", "claims"}
        self.auth: dict[str, Any] | None = header.get("auth")

    def remaining(self) -> float:
        """Seconds left before the gateway gives up on this invocation."""
        return max(0.0, self.deadline - time.time())

    @property
    def logger(self) -> Any:
        # Built on first use: importing logging costs a few ms of cold start.
        found = Context._loggers.get(self.function)
        if found is None:
            import logging

            class FrameHandler(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    try:
                        log("log", self.format(record))
                    except Exception:
                        self.handleError(record)

            handler = FrameHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
            found = logging.getLogger(f"flux.function.{self.function}")
            found.addHandler(handler)
            found.setLevel(logging.DEBUG)
            found.propagate = False
            Context._loggers[self.function] = found
        return found


def build_request(header: dict[str, Any], body: bytes) -> dict[str, Any]:
    query: dict[str, str] = {}
    query_list: dict[str, list[str]] = {}
    for name, value in header.get("query", []):
        query[name] = value
        query_list.setdefault(name, []).append(value)
    headers: dict[str, str] = {}
    # never an API key, even if sent by mistake; a verified user token is meant to reach us
    token_auth = (header.get("auth") or {}).get("type") == "jwt"
    for name, value in header.get("headers", []):
        name = name.lower()
        if name == "authorization" and not token_auth:
            continue
        if name in headers:
            headers[name] += ("; " if name == "cookie" else ", ") + value
        else:
            headers[name] = value
    parsed: Any = None
    if body:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        text = body.decode("utf-8", "replace")
        parsed = text
        if content_type == "application/json" or content_type.endswith("+json"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text  # the function can still look at raw_body
    return {
        "method": header.get("method", "GET"),
        "path": header.get("path", "/"),
        "url": header.get("url", ""),
        "query": query,
        "query_list": query_list,
        "headers": headers,
        "body": parsed,
        "raw_body": body,
        "request_id": header.get("request_id", ""),
    }


def _json(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"handler returned a value that is not JSON-serialisable: {exc}") from None


def _response_type() -> Any:
    runtime = sys.modules.get("fluxgw.runtime")  # only imported if the function used Response
    return getattr(runtime, "Response", None)


def _is_stream(value: Any) -> bool:
    """Generators, async generators and other (async) iterators stream; str/bytes/dicts do not."""
    if isinstance(value, str | bytes | bytearray | memoryview | dict | list | tuple):
        return False
    return hasattr(value, "__anext__") or hasattr(value, "__next__")


def _headers(raw_headers: Any) -> list[list[str]]:
    items = raw_headers.items() if isinstance(raw_headers, dict) else (raw_headers or [])
    headers: list[list[str]] = []
    for item in items:
        name, header_value = item
        if not isinstance(name, str) or not name or any(c in name for c in " :\r\n\t\x00"):
            raise ValueError(f"invalid response header name {name!r}")
        header_value = str(header_value)
        if any(c in header_value for c in "\r\n\x00"):
            raise ValueError(f"response header {name!r} has a line break in its value")
        headers.append([name, header_value])
    return headers


def split_response(value: Any) -> tuple[int, list[list[str]], Any]:
    """(status, headers, body-or-iterator): what a handler returned, before encoding the body."""
    response_type = _response_type()
    if response_type is not None and isinstance(value, response_type):
        return value.status, _headers(value.headers), value.body
    if _is_stream(value):
        return 200, [], value
    return 200, [["content-type", "application/json"]], _JsonValue(value)


class _JsonValue:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def to_response(value: Any) -> tuple[int, list[list[str]], bytes]:
    """A handler's non-streamed return value as (status, header pairs, body bytes)."""
    status, headers, body = split_response(value)
    has_type = any(name.lower() == "content-type" for name, _ in headers)
    default_type: str | None
    if isinstance(body, _JsonValue):
        data, default_type = _json(body.value), None
    elif body is None:
        data, default_type = b"", None
    elif isinstance(body, bytes | bytearray | memoryview):
        data, default_type = bytes(body), "application/octet-stream"
    elif isinstance(body, str):
        data, default_type = body.encode(), "text/plain; charset=utf-8"
    else:
        data, default_type = _json(body), "application/json"
    if default_type and not has_type:
        headers.append(["content-type", default_type])
    if len(data) > MAX_BODY:
        raise ValueError(f"response body of {len(data)} bytes exceeds the {MAX_BODY} byte limit")
    return status, headers, data


def chunk_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, str):
        return chunk.encode()
    if isinstance(chunk, bytes | bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"a streamed chunk must be bytes or str, not {type(chunk).__name__}")


def stream_headers(headers: list[list[str]], first: Any) -> list[list[str]]:
    if not any(name.lower() == "content-type" for name, _ in headers):
        kind = "text/plain; charset=utf-8" if isinstance(first, str) else "application/octet-stream"
        headers = [*headers, ["content-type", kind]]
    return headers


def _error_summary(exc: BaseException) -> tuple[str, str]:
    import traceback

    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return (summary[-1] if summary else type(exc).__name__), "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    )


def error_frame(invocation_id: int, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        frame = {"type": "error", "id": invocation_id, "error": "MemoryError", "traceback": ""}
        frame["code"] = "memory_limit_exceeded"
        return frame
    summary, trace = _error_summary(exc)
    return {"type": "error", "id": invocation_id, "error": summary, "traceback": trace}


def fatal(invocation_id: int, exc: BaseException, output: Output) -> NoReturn:
    """Out of memory: say so for this invocation, then exit (the next call gets a fresh
    worker; a heap that hit its limit cannot be trusted with other invocations)."""
    try:
        output.finish()
        send(error_frame(invocation_id, exc))
    finally:
        os._exit(1)


class Stream:
    """Sends one invocation's streamed chunks under the gateway's flow-control window."""

    def __init__(self, invocation_id: int, status: int, headers: list[list[str]]) -> None:
        self.id = invocation_id
        self.status = status
        self.headers = headers
        self.started = False
        self.unacked = 0

    def frames(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        out: list[tuple[dict[str, Any], bytes]] = []
        for start in range(0, max(len(data), 1), MAX_CHUNK):
            piece = data[start : start + MAX_CHUNK]
            if not self.started:
                self.started = True
                head = {"type": "start", "id": self.id, "status": self.status}
                out.append(({**head, "headers": self.headers}, piece))
            elif piece:
                out.append(({"type": "chunk", "id": self.id}, piece))
        return out


# -- sync handlers: one invocation at a time, on the main thread ------------------------------


class Cancel(Exception):
    """The gateway cancelled the invocation running on the main thread."""


class SyncServer:
    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.runner: Any = None
        self.running: int | None = None
        self.closed = False

    def loop_runner(self) -> Any:
        if self.runner is None:
            import asyncio

            self.runner = asyncio.Runner()
        return self.runner

    def serve(self) -> None:
        while not self.closed:
            frame = receive()
            if frame is None:
                return
            header, body = frame
            if header.get("type") == "invoke":
                self.invoke(header, body)
            # cancel/credit for an invocation already answered: nothing to do

    def control(self, stream: Stream | None, block: bool) -> None:
        """Handle frames that arrive while an invocation runs (credit, cancel)."""
        while block or _input_waiting():
            frame = receive()
            if frame is None:
                self.closed = True
                raise Cancel()
            header, _ = frame
            if header.get("id") != self.running:
                continue
            if header.get("type") == "cancel":
                raise Cancel()
            if header.get("type") == "credit" and stream is not None:
                stream.unacked -= int(header.get("bytes", 0))
                block = False

    def invoke(self, header: dict[str, Any], body: bytes) -> None:
        invocation_id = header["id"]
        output = Output(invocation_id)
        token = _current.set(output)
        self.running = invocation_id
        final: tuple[dict[str, Any], bytes]
        try:
            value = self.handler(build_request(header, body), Context(header))
            if hasattr(value, "__await__"):
                value = self.loop_runner().run(_await(value))
            status, headers, payload = split_response(value)
            if _is_stream(payload):
                final = self.stream(invocation_id, status, headers, payload)
            else:
                status, headers, data = to_response(value)
                final = {"type": "response", "id": invocation_id, "status": status}, data
                final[0]["headers"] = headers
        except Cancel:
            final = {"type": "cancelled", "id": invocation_id}, b""
        except MemoryError as exc:
            fatal(invocation_id, exc, output)
        except Exception as exc:
            final = error_frame(invocation_id, exc), b""
        finally:
            # SystemExit/KeyboardInterrupt end the worker (the gateway answers 502), but its
            # last partial line is still sent.
            output.finish()
            _current.reset(token)
            self.running = None
        send(*final)

    def stream(
        self, invocation_id: int, status: int, headers: list[list[str]], payload: Any
    ) -> tuple[dict[str, Any], bytes]:
        stream: Stream | None = None
        is_async = hasattr(payload, "__anext__")
        try:
            while True:
                try:
                    step = self.loop_runner().run(_anext(payload)) if is_async else next(payload)
                except (StopIteration, StopAsyncIteration):
                    break
                if stream is None:
                    stream = Stream(invocation_id, status, stream_headers(headers, step))
                data = chunk_bytes(step)
                for frame, piece in stream.frames(data):
                    while stream.unacked + len(piece) > WINDOW:
                        self.control(stream, block=True)  # a slow client slows us down
                    stream.unacked += len(piece)
                    send(frame, piece)
                self.control(stream, block=False)
        except BaseException:
            self.close(payload, is_async)
            raise
        if stream is None or not stream.started:
            head = {"type": "response", "id": invocation_id, "status": status}
            return {**head, "headers": stream_headers(headers, "")}, b""
        return {"type": "end", "id": invocation_id}, b""

    def close(self, payload: Any, is_async: bool) -> None:
        """Run the generator's finally blocks (a client that left must stop the function)."""
        try:
            if is_async and hasattr(payload, "aclose"):
                self.loop_runner().run(payload.aclose())
            elif hasattr(payload, "close"):
                payload.close()
        except Exception as exc:
            log("stderr", f"closing the stream raised {exc!r}")


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _anext(iterator: Any) -> Any:
    return await iterator.__anext__()


# -- async handlers: every invocation a task on one loop --------------------------------------


class AsyncServer:
    """Reads frames on the loop, runs each invocation as a task with its own Output."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.tasks: dict[int, Any] = {}
        self.streams: dict[int, Stream] = {}
        self.credit: dict[int, Any] = {}  # id -> asyncio.Event set when credit arrives
        self.cancelled: set[int] = set()
        self.buffer = bytearray()

    async def serve(self) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        os.set_blocking(_in_fd, False)
        loop.add_reader(_in_fd, self.readable)
        try:
            await self.done
        finally:
            loop.remove_reader(_in_fd)
            for task in list(self.tasks.values()):
                task.cancel()

    def readable(self) -> None:
        try:
            data = os.read(_in_fd, 256 * 1024)
        except BlockingIOError:
            return
        if not data:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.buffer += data
        while len(self.buffer) >= PREFIX.size:
            header_len, body_len = PREFIX.unpack_from(self.buffer)
            end = PREFIX.size + header_len + body_len
            if len(self.buffer) < end:
                return
            header = _decode_frame_header(
                bytes(self.buffer[PREFIX.size : PREFIX.size + header_len])
            )
            body = bytes(self.buffer[PREFIX.size + header_len : end])
            del self.buffer[:end]
            self.dispatch(header, body)

    def dispatch(self, header: dict[str, Any], body: bytes) -> None:
        import asyncio

        kind, invocation_id = header.get("type"), header.get("id")
        if not isinstance(invocation_id, int):
            return  # every frame the gateway sends names its invocation
        if kind == "invoke":
            output = Output(invocation_id)
            context = contextvars.copy_context()
            context.run(_current.set, output)
            task = asyncio.get_running_loop().create_task(
                self.invoke(header, body, output), context=context
            )
            self.tasks[invocation_id] = task
        elif kind == "cancel" and invocation_id in self.tasks:
            self.cancelled.add(invocation_id)
            self.tasks[invocation_id].cancel()
        elif kind == "credit" and invocation_id in self.streams:
            self.streams[invocation_id].unacked -= int(header.get("bytes", 0))
            event = self.credit.get(invocation_id)
            if event is not None:
                event.set()

    async def invoke(self, header: dict[str, Any], body: bytes, output: Output) -> None:
        import asyncio

        invocation_id = header["id"]
        final: tuple[dict[str, Any], bytes]
        try:
            value = self.handler(build_request(header, body), Context(header))
            if hasattr(value, "__await__"):
                value = await value
            status, headers, payload = split_response(value)
            if _is_stream(payload):
                final = await self.stream(invocation_id, status, headers, payload)
            else:
                status, headers, data = to_response(value)
                head = {"type": "response", "id": invocation_id, "status": status}
                final = {**head, "headers": headers}, data
        except asyncio.CancelledError:
            if invocation_id not in self.cancelled:
                raise  # the worker is shutting down
            final = {"type": "cancelled", "id": invocation_id}, b""
        except MemoryError as exc:
            fatal(invocation_id, exc, output)
        except Exception as exc:
            final = error_frame(invocation_id, exc), b""
        finally:
            self.tasks.pop(invocation_id, None)
            self.streams.pop(invocation_id, None)
            self.credit.pop(invocation_id, None)
            self.cancelled.discard(invocation_id)
        output.finish()
        send(*final)

    async def stream(
        self, invocation_id: int, status: int, headers: list[list[str]], payload: Any
    ) -> tuple[dict[str, Any], bytes]:
        import asyncio

        is_async = hasattr(payload, "__anext__")
        stream: Stream | None = None
        done = object()
        try:
            while True:
                if is_async:
                    try:
                        chunk = await payload.__anext__()
                    except StopAsyncIteration:
                        break
                else:
                    # A sync generator may block: run each step in a thread, never on the loop.
                    chunk = await asyncio.to_thread(next, payload, done)
                    if chunk is done:
                        break
                if stream is None:
                    stream = Stream(invocation_id, status, stream_headers(headers, chunk))
                    self.streams[invocation_id] = stream
                for frame, piece in stream.frames(chunk_bytes(chunk)):
                    while stream.unacked + len(piece) > WINDOW:
                        event = self.credit[invocation_id] = asyncio.Event()
                        await event.wait()
                    stream.unacked += len(piece)
                    send(frame, piece)
        except BaseException:
            try:
                if is_async and hasattr(payload, "aclose"):
                    await payload.aclose()
                elif hasattr(payload, "close"):
                    payload.close()
            except Exception as exc:
                log("stderr", f"closing the stream raised {exc!r}")
            raise
        if stream is None:
            head = {"type": "response", "id": invocation_id, "status": status}
            return {**head, "headers": stream_headers(headers, "")}, b""
        return {"type": "end", "id": invocation_id}, b""


def load(entry: str) -> Any:
    folder = os.path.dirname(entry)
    sys.path.insert(0, folder)  # the function may import sibling modules
    name = os.path.splitext(os.path.basename(entry))[0]
    module = types.ModuleType(name)
    module.__file__ = entry
    sys.modules[name] = module
    with open(entry, "rb") as handle:
        code = compile(handle.read(), entry, "exec")
    exec(code, module.__dict__)
    handler = getattr(module, "handler", None)
    if not callable(handler):
        raise LookupError(f"{os.path.basename(entry)} defines no handler(request, ctx) function")
    return handler


def is_async_handler(handler: Any) -> bool:
    flags = getattr(getattr(handler, "__code__", None), "co_flags", 0)
    return bool(flags & (CO_COROUTINE | CO_ASYNC_GENERATOR))


def main() -> None:
    global _in_fd, _out_fd
    _out_fd = int(os.environ.pop("FLUX_PROTOCOL_FD"))
    os.set_inheritable(_out_fd, False)  # a child process must not hold our answers' pipe open
    request_fd = os.environ.pop("FLUX_REQUEST_FD", None)
    if request_fd is not None:  # the gateway's request pipe (stdin is /dev/null)
        _in_fd = int(request_fd)
        os.set_inheritable(_in_fd, False)
    else:
        _in_fd = os.dup(0)  # non-inheritable by default (PEP 446)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    stdout, stderr = CaptureStream("stdout", 1), CaptureStream("stderr", 2)
    sys.stdout = sys.__stdout__ = stdout  # type: ignore[misc, assignment]
    sys.stderr = sys.__stderr__ = stderr  # type: ignore[misc, assignment]
    entry = os.path.abspath(sys.argv[1])
    try:
        handler = load(entry)
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit at import...
        _worker_output.flush()
        summary, trace = _error_summary(exc)
        send({"type": "start_failed", "error": summary, "traceback": trace})
        sys.exit(1)
    concurrent = is_async_handler(handler)
    if concurrent:
        import asyncio  # before "ready": its import is not the first request's cost

    _worker_output.flush()
    ready = {"type": "ready", "pid": os.getpid(), "runtime": "python"}
    send({**ready, "concurrency": None if concurrent else 1})
    if concurrent:
        asyncio.run(AsyncServer(handler).serve())
    else:
        SyncServer(handler).serve()


if __name__ == "__main__":
    main()
