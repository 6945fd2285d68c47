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
    MAX_CHUNK,
    NEED_DATA,
    TRANSITIONS,
    Cancelled,
    Chunk,
    Closed,
    End,
    FrameDecoder,
    HandlerError,
    InvState,
    Log,
    ProtocolError,
    Ready,
    StartFailed,
    WorkerProtocol,
    WorkerState,
    encode_frame,
)
from fluxgw.runtime.protocol import Response as Answer

SHIM = Path(protocol.__file__).parent / "shims" / "python_worker.py"


def ready_worker(concurrency: int | None = None, window: int = protocol.WINDOW) -> WorkerProtocol:
    proto = WorkerProtocol(window=window)
    ready = {"type": "ready", "pid": 42, "runtime": "python", "concurrency": concurrency}
    proto.receive_data(encode_frame(ready))
    assert proto.next_event() == Ready(42, "python", concurrency)
    return proto


def invoke(proto: WorkerProtocol) -> int:
    ident, frame = proto.send_invoke({"method": "GET"}, b"")
    assert frame
    return ident


def feed(proto: WorkerProtocol, header: dict, body: bytes = b"") -> object:
    proto.receive_data(encode_frame(header, body))
    return proto.next_event()


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


def test_startup_then_one_complete_answer() -> None:
    proto = WorkerProtocol()
    assert proto.state is WorkerState.STARTING
    assert proto.next_event() is NEED_DATA
    assert feed(proto, {"type": "log", "stream": "stdout", "text": "import", "ts": 1}) == Log(
        None, "stdout", "import", 1.0
    )
    assert isinstance(feed(proto, {"type": "ready", "pid": 7, "runtime": "node"}), Ready)
    assert proto.state is WorkerState.READY and proto.concurrency is None
    ident, frame = proto.send_invoke({"method": "POST", "path": "/f"}, b"\x00body")
    decoder = FrameDecoder()
    decoder.feed(frame)
    header, body = decoder.next_frame()  # type: ignore[misc]
    assert header["type"] == "invoke" and header["id"] == ident
    assert header["path"] == "/f" and body == b"\x00body"
    assert feed(
        proto, {"type": "log", "id": ident, "stream": "stderr", "text": "w", "ts": 2.5}
    ) == Log(ident, "stderr", "w", 2.5)
    answer = feed(
        proto, {"type": "response", "id": ident, "status": 201, "headers": [["a", "b"]]}, b"ok"
    )
    assert answer == Answer(ident, 201, (("a", "b"),), b"ok")
    assert proto.in_flight == 0 and proto.invocation_state(ident) is InvState.DONE
    assert invoke(proto) == ident + 1


def test_interleaved_invocations_each_follow_their_own_state() -> None:
    proto = ready_worker()
    a, b, c = invoke(proto), invoke(proto), invoke(proto)
    assert proto.in_flight == 3
    assert feed(proto, {"type": "start", "id": b, "status": 200, "headers": []}, b"b1") == Answer(
        b, 200, (), b"b1", streaming=True
    )
    assert feed(proto, {"type": "log", "id": a, "stream": "stdout", "text": "a", "ts": 1}) == Log(
        a, "stdout", "a", 1.0
    )
    assert feed(proto, {"type": "chunk", "id": b}, b"b2") == Chunk(b, b"b2")
    assert feed(
        proto, {"type": "error", "id": c, "error": "E: x", "traceback": "T"}
    ) == HandlerError(c, "E: x", "T")
    assert feed(proto, {"type": "response", "id": a, "status": 200, "headers": []}) == Answer(
        a, 200, (), b""
    )
    assert proto.invocation_state(b) is InvState.STREAMING and proto.in_flight == 1
    assert feed(proto, {"type": "end", "id": b}) == End(b)
    assert proto.in_flight == 0


def test_error_after_start_ends_the_stream() -> None:
    proto = ready_worker()
    ident = invoke(proto)
    feed(proto, {"type": "start", "id": ident, "status": 200, "headers": []}, b"x")
    event = feed(
        proto, {"type": "error", "id": ident, "error": "boom", "code": "memory_limit_exceeded"}
    )
    assert event == HandlerError(ident, "boom", "", "memory_limit_exceeded")
    assert proto.in_flight == 0


def test_cancel_drops_late_frames_until_the_worker_lets_go() -> None:
    proto = ready_worker()
    ident, other = invoke(proto), invoke(proto)
    feed(proto, {"type": "start", "id": ident, "status": 200, "headers": []}, b"x")
    cancel = proto.send_cancel(ident, "disconnect")
    decoder = FrameDecoder()
    decoder.feed(cancel)
    assert decoder.next_frame() == ({"type": "cancel", "id": ident, "reason": "disconnect"}, b"")
    assert proto.invocation_state(ident) is InvState.CANCELLING
    # Chunks already on their way are still legal (and not counted against the window).
    assert feed(proto, {"type": "chunk", "id": ident}, b"y" * MAX_CHUNK) == Chunk(
        ident, b"y" * MAX_CHUNK
    )
    assert proto.consumed(ident, 10) == b""  # no credit for a cancelled stream
    assert feed(proto, {"type": "cancelled", "id": ident}) == Cancelled(ident)
    assert proto.in_flight == 1 and proto.invocation_state(other) is InvState.SENT
    assert proto.send_cancel(ident, "timeout") == b""  # already done: nothing to send


def test_a_cancel_racing_the_answer_still_frees_the_slot() -> None:
    proto = ready_worker()
    ident = invoke(proto)
    proto.send_cancel(ident, "timeout")
    assert isinstance(
        feed(proto, {"type": "response", "id": ident, "status": 200, "headers": []}), Answer
    )
    assert proto.in_flight == 0


def test_flow_control_window_is_enforced_and_credited() -> None:
    proto = ready_worker(window=100)
    ident = invoke(proto)
    feed(proto, {"type": "start", "id": ident, "status": 200, "headers": []}, b"a" * 100)
    credit = proto.consumed(ident, 100)
    decoder = FrameDecoder()
    decoder.feed(credit)
    assert decoder.next_frame() == ({"type": "credit", "id": ident, "bytes": 100}, b"")
    # Credit restored the window: a full window plus one maximal chunk is the most in flight.
    feed(proto, {"type": "chunk", "id": ident}, b"b" * MAX_CHUNK)
    feed(proto, {"type": "chunk", "id": ident}, b"c" * 100)
    proto.receive_data(encode_frame({"type": "chunk", "id": ident}, b"d"))
    with pytest.raises(ProtocolError, match="window"):
        proto.next_event()
    assert proto.state is WorkerState.BROKEN


def test_worker_concurrency_limit_is_respected() -> None:
    proto = ready_worker(concurrency=1)
    ident = invoke(proto)
    with pytest.raises(ProtocolError):
        proto.send_invoke({}, b"")
    feed(proto, {"type": "response", "id": ident, "status": 200, "headers": []})
    invoke(proto)


def test_late_log_of_a_finished_invocation_is_unattributed() -> None:
    proto = ready_worker()
    ident = invoke(proto)
    feed(proto, {"type": "response", "id": ident, "status": 200, "headers": []})
    assert feed(
        proto, {"type": "log", "id": ident, "stream": "log", "text": "late", "ts": 3}
    ) == Log(None, "log", "late", 3.0)


def test_start_failed() -> None:
    proto = WorkerProtocol()
    assert feed(proto, {"type": "start_failed", "error": "SyntaxError: x"}) == StartFailed(
        "SyntaxError: x", ""
    )
    assert proto.state is WorkerState.FAILED


def test_clean_end_of_stream_is_closed_event() -> None:
    proto = ready_worker()
    invoke(proto)
    proto.receive_data(b"")
    assert proto.next_event() == Closed(WorkerState.READY)
    assert proto.state is WorkerState.CLOSED
    with pytest.raises(ProtocolError):
        proto.next_event()


def test_every_transition_in_the_table_is_reachable_and_nothing_else_is() -> None:
    answers = {
        "response": ({"status": 200, "headers": []}, b""),
        "start": ({"status": 200, "headers": []}, b""),
        "chunk": ({}, b"x"),
        "end": ({}, b""),
        "error": ({"error": "E"}, b""),
        "cancelled": ({}, b""),
    }

    def reach(state: InvState) -> tuple[WorkerProtocol, int]:
        proto = ready_worker()
        ident = invoke(proto)
        if state is InvState.STREAMING:
            feed(proto, {"type": "start", "id": ident, "status": 200, "headers": []})
        if state is InvState.CANCELLING:
            proto.send_cancel(ident, "timeout")
        return proto, ident

    for state in (InvState.SENT, InvState.STREAMING, InvState.CANCELLING):
        for kind, (fields, body) in answers.items():
            proto, ident = reach(state)
            proto.receive_data(encode_frame({"type": kind, "id": ident, **fields}, body))
            if (state, kind) in TRANSITIONS:
                proto.next_event()
                assert proto.invocation_state(ident) is TRANSITIONS[(state, kind)]
            else:
                with pytest.raises(ProtocolError):
                    proto.next_event()
                assert proto.state is WorkerState.BROKEN


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_frame({"type": "response", "id": 1})[:-3], id="truncated"),
        pytest.param(b"\x00\x00\x00\x05\x00\x00\x00\x00{bad}", id="header not json"),
        pytest.param(b"\x00\x00\x00\x02\x00\x00\x00\x00[]", id="header not object"),
        pytest.param(b"\xff\xff\xff\xff\x00\x00\x00\x00", id="huge header"),
        pytest.param(b"\x00\x00\x00\x02\x7f\xff\xff\xff{}", id="huge body"),
        pytest.param(b"\x00\x00\x00\x00\x00\x00\x00\x00", id="empty header"),
    ],
)
def test_malformed_bytes_break_the_worker(data: bytes) -> None:
    proto = ready_worker()
    invoke(proto)
    proto.receive_data(data)
    proto.receive_data(b"")
    with pytest.raises(ProtocolError):
        proto.next_event()
    assert proto.state is WorkerState.BROKEN


@pytest.mark.parametrize(
    "header",
    [
        {"type": "response", "id": 999, "status": 200, "headers": []},  # unknown id
        {"type": "response", "status": 200, "headers": []},  # no id
        {"type": "response", "id": 1, "status": True, "headers": []},
        {"type": "response", "id": 1, "status": 700, "headers": []},
        {"type": "response", "id": 1, "status": 200, "headers": [["bad name", "v"]]},
        {"type": "response", "id": 1, "status": 200, "headers": [["x", "a\r\nb"]]},
        {"type": "response", "id": 1, "status": 200, "headers": {"x": "y"}},
        {"type": "error", "id": 1, "error": "E", "code": "made_up"},
        {"type": "chunk", "id": 1},  # before start
        {"type": "cancelled", "id": 1},  # never cancelled
        {"type": "ready", "pid": 1, "runtime": "python"},  # ready twice
        {"type": "log", "stream": "nope", "text": "x", "ts": 1},
        {"type": "log", "stream": "stdout", "ts": 1},
        {"type": "whatever"},
    ],
)
def test_protocol_violations(header: dict) -> None:
    proto = ready_worker()
    assert invoke(proto) == 1
    proto.receive_data(encode_frame(header))
    with pytest.raises(ProtocolError):
        proto.next_event()
    assert proto.state is WorkerState.BROKEN


def test_oversized_chunk_is_a_violation() -> None:
    proto = ready_worker()
    ident = invoke(proto)
    feed(proto, {"type": "start", "id": ident, "status": 200, "headers": []})
    proto.receive_data(encode_frame({"type": "chunk", "id": ident}, b"x" * (MAX_CHUNK + 1)))
    with pytest.raises(ProtocolError):
        proto.next_event()


def test_cannot_invoke_unless_ready() -> None:
    with pytest.raises(ProtocolError):
        WorkerProtocol().send_invoke({}, b"")
    proto = ready_worker()
    proto.mark_broken()
    with pytest.raises(ProtocolError):
        proto.send_invoke({}, b"")


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
        shim.send({"type": "ready", "pid": 5, "runtime": "python", "concurrency": 1})
        shim.log("stdout", "x" * (shim.MAX_LINE + 5))
        proto = WorkerProtocol()
        proto.receive_data(os.read(read_fd, 1 << 20))
        assert proto.next_event() == Ready(5, "python", 1)
        line = proto.next_event()
        assert isinstance(line, Log) and line.id is None
        assert line.text == "x" * shim.MAX_LINE + "… [5 characters cut]"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_python_shim_caps_an_invocations_output(shim: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "frames"
    shim._out_fd = os.open(out, os.O_WRONLY | os.O_CREAT)  # a file: no pipe buffer to fill
    try:
        output = shim.Output(7)
        flood = "line\n" * (shim.MAX_LINES + 500)
        output.write("stdout", flood)
        output.write("stdout", flood)  # past the cap: counted, never split or sent
        output.finish()
    finally:
        os.close(shim._out_fd)
    decoder = FrameDecoder()
    decoder.feed(out.read_bytes())
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame[0])
    assert len(frames) == shim.MAX_LINES + 1
    assert all(frame["id"] == 7 for frame in frames)
    assert frames[-1]["text"].startswith(
        f"… {2 * (shim.MAX_LINES + 500) - shim.MAX_LINES} lines dropped"
    )


def test_python_shim_reads_invoke_frames(shim: ModuleType) -> None:
    read_fd, write_fd = os.pipe()
    try:
        shim._in_fd = read_fd
        proto = ready_worker()
        os.write(write_fd, proto.send_invoke({"path": "/p"}, b"\x00\x01")[1])
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
