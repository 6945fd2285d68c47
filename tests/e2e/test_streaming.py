"""Streamed answers (docs/runtimes.md, "Streaming") through the real `flux serve`: chunks
arrive as they are produced, a client that leaves stops the function, the timeout cuts the
stream, and the trace says how it ended."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from conftest import JS_RUNTIMES, SERVER_LOOPS, flux, serve, trace_of, write_function

from fluxgw.tracing import TraceRecord

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ALL_RUNTIMES = [pytest.param("python"), *JS_RUNTIMES]

# Each chunk is one line holding the time it was produced (epoch seconds).
FIVE_CHUNKS = {
    "python": """
import time
def handler(request, ctx):
    for i in range(5):
        if i:
            time.sleep(0.2)
        yield f"{i} {time.time()}\\n"
""",
    "node": """
export default async function () {
  let i = 0;
  const body = new ReadableStream({
    async pull(controller) {
      if (i) await new Promise((resolve) => setTimeout(resolve, 200));
      controller.enqueue(`${i} ${Date.now() / 1000}\\n`);
      if (++i === 5) controller.close();
    },
  }).pipeThrough(new TextEncoderStream());
  return new Response(body, { headers: { "content-type": "text/plain" } });
}
""",
}
FIVE_CHUNKS["deno"] = FIVE_CHUNKS["node"]

ENDLESS = {
    "python": """
import asyncio
async def handler(request, ctx):
    i = 0
    try:
        while True:
            yield f"data: {i}\\n\\n"
            i += 1
            await asyncio.sleep(0.1)
    finally:
        print(f"stopped after {i}")
""",
    "node": """
export default async function () {
  let i = 0;
  let timer;
  const body = new ReadableStream({
    start(controller) {
      const encoder = new TextEncoder();
      timer = setInterval(() => controller.enqueue(encoder.encode(`data: ${i++}\\n\\n`)), 100);
    },
    cancel() {
      clearInterval(timer);
      console.log(`stopped after ${i}`);
    },
  });
  return new Response(body, { headers: { "content-type": "text/event-stream" } });
}
""",
}
ENDLESS["deno"] = ENDLESS["node"]


def deploy(project: Path) -> str:
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "team", "--cors-origin", "http://app.test")
    return flux(project, "api-keys", "create", "--name", "k").stdout.strip()


def function_span(trace: TraceRecord) -> dict:
    return next(span for span in trace.spans if span.name == "function").attributes


@pytest.mark.timing
@SERVER_LOOPS
@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
async def test_chunks_reach_the_client_as_they_are_produced(
    project: Path, runtime: str, loop: str
) -> None:
    write_function(project, "five", FIVE_CHUNKS[runtime], runtime=runtime, method="GET")
    key = deploy(project)
    headers = {"authorization": f"Bearer {key}", "origin": "http://app.test"}
    with serve(project, loop=loop) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            await client.get("/five", headers=headers)  # warm: measure streaming, not spawning
            lags: list[float] = []
            buffer = b""
            async with client.stream("GET", "/five", headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["transfer-encoding"] == "chunked"
                assert "content-length" not in response.headers
                # The gateway's fields are on a streamed answer too.
                assert response.headers["access-control-allow-origin"] == "http://app.test"
                assert response.headers["ratelimit-policy"].startswith('"team"')
                request_id = response.headers["x-request-id"]
                async for data in response.aiter_raw():
                    received = time.time()
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        lags.append(received - float(line.split()[1]))
        trace = await trace_of(project, request_id)
    assert len(lags) == 5
    assert max(lags) < 0.05, lags  # each chunk within 50 ms of its production
    span = function_span(trace)
    assert span["streamed"] is True and span["stream_outcome"] == "complete"
    assert span["chunks"] >= 5 and span["bytes"] > 0 and span["first_byte_ms"] > 0


@pytest.mark.timing
@SERVER_LOOPS
@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
async def test_a_client_that_leaves_stops_the_function_within_a_second(
    project: Path, runtime: str, loop: str
) -> None:
    write_function(project, "endless", ENDLESS[runtime], runtime=runtime, method="GET")
    key = deploy(project)
    auth = {"authorization": f"Bearer {key}"}
    with serve(project, loop=loop) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            async with client.stream("GET", "/endless", headers=auth) as response:
                request_id = response.headers["x-request-id"]
                seen = b""
                async for data in response.aiter_raw():
                    seen += data
                    if seen.count(b"\n\n") >= 2:
                        break
            left_at = time.time()  # leaving the block closed the connection
            trace = await trace_of(project, request_id)
            metrics = await client.get("/_flux/metrics", headers=auth)
    stopped = [line for line in trace.logs if line.text.startswith("stopped after")]
    assert stopped, trace.logs  # the function's own clean-up ran, and its log shows it
    assert stopped[0].timestamp - left_at < 1.0
    assert function_span(trace)["stream_outcome"] == "disconnect"
    assert 'flux_invocations_in_flight{function="endless"} 0' in metrics.text


@SERVER_LOOPS
@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
async def test_a_stream_past_its_timeout_is_cut_and_the_trace_says_timeout(
    project: Path, runtime: str, loop: str
) -> None:
    write_function(project, "late", ENDLESS[runtime], runtime=runtime, method="GET", timeout=1)
    key = deploy(project)
    auth = {"authorization": f"Bearer {key}"}
    with serve(project, loop=loop) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            async with client.stream("GET", "/late", headers=auth) as warm:
                await warm.aiter_raw().__anext__()  # a warm worker: the timeout is all stream
            received = b""
            with pytest.raises(httpx.RemoteProtocolError):  # an incomplete chunked body
                async with client.stream(
                    "GET", "/late", headers={"authorization": f"Bearer {key}"}
                ) as response:
                    request_id = response.headers["x-request-id"]
                    async for data in response.aiter_raw():
                        received += data
            # it streamed until its timeout: about 10 events in 1 s
            assert 3 <= received.count(b"\n\n") <= 15, received
            trace = await trace_of(project, request_id)
            # A fresh or freed worker serves the next call.
            async with client.stream(
                "GET", "/late", headers={"authorization": f"Bearer {key}"}
            ) as again:
                assert again.status_code == 200
                assert (await again.aiter_raw().__anext__()).startswith(b"data: 0")
    span = function_span(trace)
    assert span["stream_outcome"] == "timeout" and span["bytes"] == len(received)
