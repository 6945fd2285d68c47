"""Python worker: load one function's module once, then serve invocations until its input closes.

Run as ``python -I -B python_worker.py ENTRY`` with ``FLUX_PROTOCOL_FD`` naming the pipe the
gateway reads (see fluxgw/runtime/protocol.py for the framing). Deliberately stdlib-only and
import-light: its cold start is measured against bare ``python3 -c pass``, so asyncio, logging
and traceback are imported only when a function needs them.

Why the fd juggling: the protocol must survive anything a function prints. Requests arrive on
the pipe named by ``FLUX_REQUEST_FD``, made non-inheritable (without it, on fd 0, moved to a
private descriptor; fd 0 becomes /dev/null, so ``input()`` or a child process cannot eat
frames); answers go out on a dedicated pipe that children do not inherit.
``print``/``sys.stderr``/``ctx.logger`` become per-line ``log`` frames; raw writes to fd 1/2
go to a separate pipe the gateway drains.
"""

from __future__ import annotations

import _thread
import json
import os
import struct
import sys
import time
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: collections is not worth importing at cold start
    from collections.abc import Callable

PREFIX = struct.Struct(">II")
MAX_BODY = 6 * 1024 * 1024
MAX_LINE = 16 * 1024  # split very long lines so one print cannot make a huge frame
CO_COROUTINE = 0x80

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
    """The next frame from the gateway, or None when it closed our stdin (time to exit)."""
    prefix = _read_exact(PREFIX.size)
    if prefix is None:
        return None
    header_len, body_len = PREFIX.unpack(prefix)
    raw = _read_exact(header_len + body_len)
    if raw is None:
        return None
    return _decode_frame_header(raw[:header_len]), raw[header_len:]


def log(stream: str, text: str) -> None:
    for start in range(0, max(len(text), 1), MAX_LINE):
        send(
            {
                "type": "log",
                "stream": stream,
                "text": text[start : start + MAX_LINE],
                "ts": time.time(),
            }
        )


class CaptureStream:
    """A text stream that turns every complete line into a ``log`` frame."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, stream: str, fd: int) -> None:
        self._stream = stream
        self._fd = fd
        self._partial = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            log(self._stream, line)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send a pending partial line (called at the end of each invocation)."""
        if self._partial:
            text, self._partial = self._partial, ""
            log(self._stream, text)

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
                outer.flush()

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
        """Seconds left before the gateway kills this invocation."""
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
                        for line in self.format(record).split("\n"):
                            log("log", line)
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


def to_response(value: Any) -> tuple[int, list[list[str]], bytes]:
    """A handler's return value as (status, header pairs, body bytes)."""
    runtime = sys.modules.get("fluxgw.runtime")  # only imported if the function used Response
    response_type = getattr(runtime, "Response", None)
    if response_type is None or not isinstance(value, response_type):
        return 200, [["content-type", "application/json"]], _json(value)
    raw_headers = value.headers or []
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers: list[list[str]] = []
    for item in items:
        name, header_value = item
        if not isinstance(name, str) or not name or any(c in name for c in " :\r\n\t\x00"):
            raise ValueError(f"invalid response header name {name!r}")
        header_value = str(header_value)
        if any(c in header_value for c in "\r\n\x00"):
            raise ValueError(f"response header {name!r} has a line break in its value")
        headers.append([name, header_value])
    has_type = any(name.lower() == "content-type" for name, _ in headers)
    body = value.body
    default_type: str | None
    if body is None:
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
    return value.status, headers, data


def _error_summary(exc: BaseException) -> tuple[str, str]:
    import traceback

    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return (summary[-1] if summary else type(exc).__name__), "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    )


class AsyncRunner:
    """One asyncio loop for the worker's life: async handlers keep their clients/pools warm."""

    def __init__(self) -> None:
        import asyncio

        self._runner = asyncio.Runner()

    def run(self, awaitable: Any) -> Any:
        return self._runner.run(_await(awaitable))


async def _await(awaitable: Any) -> Any:
    return await awaitable


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
        stdout.flush()
        stderr.flush()
        summary, trace = _error_summary(exc)
        send({"type": "start_failed", "error": summary, "traceback": trace})
        sys.exit(1)
    runner: AsyncRunner | None = None
    if getattr(getattr(handler, "__code__", None), "co_flags", 0) & CO_COROUTINE:
        runner = AsyncRunner()  # pay asyncio's import before "ready", not on the first request
    stdout.flush()
    stderr.flush()
    send({"type": "ready", "pid": os.getpid(), "runtime": "python"})
    while True:
        frame = receive()
        if frame is None:
            return
        header, body = frame
        if header.get("type") != "invoke":
            continue
        invocation_id = header["id"]
        try:
            value = handler(build_request(header, body), Context(header))
            if hasattr(value, "__await__"):
                if runner is None:
                    runner = AsyncRunner()
                value = runner.run(value)
            status, headers, data = to_response(value)
        except Exception as exc:
            stdout.flush()
            stderr.flush()
            summary, trace = _error_summary(exc)
            send({"type": "error", "id": invocation_id, "error": summary, "traceback": trace})
            continue
        finally:
            # SystemExit/KeyboardInterrupt propagate and end the worker (the gateway sees it
            # exit and answers 502), but its last partial line is still sent.
            stdout.flush()
            stderr.flush()
        send({"type": "result", "id": invocation_id, "status": status, "headers": headers}, data)


if __name__ == "__main__":
    main()
