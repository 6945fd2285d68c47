"""The worker wire protocol as a state machine: bytes in, events out, no processes."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fluxgw.runtime import Response, protocol
from fluxgw.runtime.protocol import (
    NEED_DATA,
    Closed,
    FrameDecoder,
    HandlerError,
    Log,
    ProtocolError,
    Ready,
    Result,
    StartFailed,
    State,
    WorkerProtocol,
    encode_frame,
)

SHIM = Path(protocol.__file__).parent / "shims" / "python_worker.py"


def ready_worker() -> WorkerProtocol:
    proto = WorkerProtocol()
    proto.receive_data(encode_frame({"type": "ready", "pid": 42, "runtime": "python"}))
    assert proto.next_event() == Ready(42, "python")
    return proto


def busy_worker() -> tuple[WorkerProtocol, int]:
    proto = ready_worker()
    proto.send_invoke({"method": "GET"}, b"")
    assert proto.state is State.BUSY and proto.current_id is not None
    return proto, proto.current_id


def test_frame_round_trip_binary_body_fed_byte_by_byte() -> None:
    body = bytes(range(256)) * 3
    data = encode_frame({"type": "x", "text": "héllo"}, body)
    decoder = FrameDecoder()
    frames = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        frame = decoder.next_frame()
        if frame is not None:
            frames.append(frame)
    assert frames == [({"type": "x", "text": "héllo"}, body)]
    assert decoder.pending == 0


def test_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame({"type": "a"}) + encode_frame({"type": "b"}, b"1"))
    assert decoder.next_frame() == ({"type": "a"}, b"")
    assert decoder.next_frame() == ({"type": "b"}, b"1")
    assert decoder.next_frame() is None


def test_full_lifecycle_states() -> None:
    proto = WorkerProtocol()
    assert proto.state is State.STARTING
    assert proto.next_event() is NEED_DATA
    proto.receive_data(encode_frame({"type": "log", "stream": "stdout", "text": "import", "ts": 1}))
    assert proto.next_event() == Log("stdout", "import", 1.0)
    proto.receive_data(encode_frame({"type": "ready", "pid": 7, "runtime": "node"}))
    assert isinstance(proto.next_event(), Ready)
    assert proto.state is State.IDLE
    frame = proto.send_invoke({"method": "POST", "path": "/f"}, b"\x00body")
    decoder = FrameDecoder()
    decoder.feed(frame)
    header, body = decoder.next_frame()  # type: ignore[misc]
    assert header["type"] == "invoke" and header["id"] == proto.current_id
    assert header["path"] == "/f" and body == b"\x00body"
    invocation_id = proto.current_id
    proto.receive_data(
        encode_frame({"type": "log", "stream": "stderr", "text": "warn", "ts": 2.5})
        + encode_frame(
            {"type": "result", "id": invocation_id, "status": 201, "headers": [["a", "b"]]}, b"ok"
        )
    )
    assert proto.next_event() == Log("stderr", "warn", 2.5)
    assert proto.next_event() == Result(invocation_id, 201, (("a", "b"),), b"ok")  # type: ignore[arg-type]
    assert proto.state is State.IDLE and proto.current_id is None
    # A second invocation gets a new id.
    proto.send_invoke({}, b"")
    assert proto.current_id == invocation_id + 1  # type: ignore[operator]


def test_handler_error_returns_to_idle() -> None:
    proto, ident = busy_worker()
    proto.receive_data(
        encode_frame({"type": "error", "id": ident, "error": "E: x", "traceback": "T"})
    )
    assert proto.next_event() == HandlerError(ident, "E: x", "T")
    assert proto.state is State.IDLE


def test_start_failed() -> None:
    proto = WorkerProtocol()
    proto.receive_data(encode_frame({"type": "start_failed", "error": "SyntaxError: x"}))
    assert proto.next_event() == StartFailed("SyntaxError: x", "")
    assert proto.state is State.FAILED


def test_clean_end_of_stream_is_closed_event() -> None:
    proto, _ = busy_worker()
    proto.receive_data(b"")
    assert proto.next_event() == Closed(State.BUSY)
    assert proto.state is State.CLOSED
    with pytest.raises(ProtocolError):
        proto.next_event()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_frame({"type": "result", "id": 1})[:-3], id="truncated"),
        pytest.param(b"\x00\x00\x00\x05\x00\x00\x00\x00{bad}", id="header not json"),
        pytest.param(b"\x00\x00\x00\x02\x00\x00\x00\x00[]", id="header not object"),
        pytest.param(b"\xff\xff\xff\xff\x00\x00\x00\x00", id="huge header"),
        pytest.param(b"\x00\x00\x00\x02\x7f\xff\xff\xff{}", id="huge body"),
        pytest.param(b"\x00\x00\x00\x00\x00\x00\x00\x00", id="empty header"),
    ],
)
def test_malformed_bytes_break_the_worker(data: bytes) -> None:
    proto, _ = busy_worker()
    proto.receive_data(data)
    proto.receive_data(b"")
    with pytest.raises(ProtocolError):
        proto.next_event()
    assert proto.state is State.BROKEN


@pytest.mark.parametrize(
    "header",
    [
        {"type": "result", "id": 999, "status": 200, "headers": []},  # wrong id
        {"type": "result", "status": 200, "headers": []},  # no id
        {"type": "result", "id": 1, "status": True, "headers": []},
        {"type": "result", "id": 1, "status": 700, "headers": []},
        {"type": "result", "id": 1, "status": 200, "headers": [["bad name", "v"]]},
        {"type": "result", "id": 1, "status": 200, "headers": [["x", "a\r\nb"]]},
        {"type": "result", "id": 1, "status": 200, "headers": {"x": "y"}},
        {"type": "ready", "pid": 1, "runtime": "python"},  # ready twice
        {"type": "log", "stream": "nope", "text": "x", "ts": 1},
        {"type": "log", "stream": "stdout", "ts": 1},
        {"type": "whatever"},
    ],
)
def test_protocol_violations_while_busy(header: dict) -> None:
    proto, ident = busy_worker()
    assert ident == 1
    proto.receive_data(encode_frame(header))
    with pytest.raises(ProtocolError):
        proto.next_event()
    assert proto.state is State.BROKEN


def test_result_while_idle_is_a_violation() -> None:
    proto = ready_worker()
    proto.receive_data(encode_frame({"type": "result", "id": 1, "status": 200, "headers": []}))
    with pytest.raises(ProtocolError):
        proto.next_event()


def test_cannot_invoke_unless_idle() -> None:
    with pytest.raises(ProtocolError):
        WorkerProtocol().send_invoke({}, b"")
    proto, _ = busy_worker()
    with pytest.raises(ProtocolError):
        proto.send_invoke({}, b"")
    proto.mark_broken()
    assert proto.state is State.BROKEN


def test_encode_refuses_oversized_body() -> None:
    with pytest.raises(ValueError):
        encode_frame({"type": "invoke"}, b"x" * (protocol.MAX_BODY + 1))


# -- the python shim speaks the same protocol --------------------------------------------------


@pytest.fixture
def shim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flux_python_worker_under_test", SHIM)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_shim_frames_decode_with_protocol(shim: ModuleType) -> None:
    read_fd, write_fd = os.pipe()
    try:
        shim._out_fd = write_fd
        shim.send({"type": "ready", "pid": 5, "runtime": "python"})
        shim.log("stdout", "x" * (shim.MAX_LINE + 5))
        proto = WorkerProtocol()
        proto.receive_data(os.read(read_fd, 1 << 20))
        assert proto.next_event() == Ready(5, "python")
        first, second = proto.next_event(), proto.next_event()
        assert isinstance(first, Log) and isinstance(second, Log)
        assert len(first.text) == shim.MAX_LINE and second.text == "xxxxx"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_python_shim_reads_invoke_frames(shim: ModuleType) -> None:
    read_fd, write_fd = os.pipe()
    try:
        shim._in_fd = read_fd
        proto = ready_worker()
        os.write(write_fd, proto.send_invoke({"path": "/p"}, b"\x00\x01"))
        header, body = shim.receive()
        assert header["path"] == "/p" and header["type"] == "invoke" and body == b"\x00\x01"
        os.close(write_fd)
        write_fd = -1
        assert shim.receive() is None  # gateway closed stdin: the worker exits
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_python_shim_builds_request(shim: ModuleType) -> None:
    header = {
        "method": "POST",
        "path": "/f",
        "url": "http://h/f?a=1&a=2",
        "query": [["a", "1"], ["a", "2"]],
        "headers": [["Content-Type", "application/json"], ["authorization", "Bearer x"]],
    }
    request = shim.build_request(header, b'{"k": [1]}')
    assert request["query"] == {"a": "2"} and request["query_list"] == {"a": ["1", "2"]}
    assert request["headers"] == {"content-type": "application/json"}
    assert request["body"] == {"k": [1]} and request["raw_body"] == b'{"k": [1]}'
    assert shim.build_request({"headers": []}, b"")["body"] is None
    assert shim.build_request({"headers": []}, b"plain")["body"] == "plain"


def test_python_shim_converts_responses(shim: ModuleType) -> None:
    assert sys.modules.get("fluxgw.runtime") is not None
    assert shim.to_response("hi") == (200, [["content-type", "application/json"]], b'"hi"')
    status, headers, body = shim.to_response(
        Response(status=201, body=b"\x00", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    )
    assert status == 201 and body == b"\x00"
    assert headers == [
        ["Set-Cookie", "a=1"],
        ["Set-Cookie", "b=2"],
        ["content-type", "application/octet-stream"],
    ]
    assert shim.to_response(Response(404, "nope"))[1] == [
        ["content-type", "text/plain; charset=utf-8"]
    ]
    assert shim.to_response(Response(204))[1:] == ([], b"")
    with pytest.raises(ValueError):
        shim.to_response(Response(200, "x", {"bad name": "v"}))
    with pytest.raises(TypeError):
        shim.to_response({"x": object()})
    with pytest.raises(ValueError):
        Response(status=42)
