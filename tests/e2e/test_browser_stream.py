"""A real headless Chromium reads a function's server-sent events from another origin.

An ``EventSource`` cannot send an ``Authorization`` header, so the page does what browser apps
do: ``fetch`` with the key, then a ``ReadableStream`` reader over the ``text/event-stream``
body. It reports each event with the time it arrived; the function put the time it produced it
in the event.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from conftest import flux, serve, write_function
from test_browser import CHROMIUM, PageServer, visit

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        CHROMIUM is None and not __import__("os").environ.get("CI"),
        reason="chromium not installed (scripts/setup --test installs it)",
    ),
]

EVENTS = """
import asyncio, time
from fluxgw.runtime import Response

async def events():
    for i in range(5):
        if i:
            await asyncio.sleep(0.2)
        yield f"data: {i} {time.time() * 1000}\\n\\n"

def handler(request, ctx):
    headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
    return Response(200, events(), headers)
"""

PAGE = """<!doctype html><meta charset="utf-8"><title>flux sse</title>
<script>
(async () => {
  const report = {events: []};
  try {
    const r = await fetch("%(gateway)s/events", {headers: {"Authorization": "Bearer %(key)s"}});
    report.status = r.status;
    report.contentType = r.headers.get("content-type");
    report.requestId = r.headers.get("x-request-id");
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    while (true) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const [n, produced] = buffer.slice(0, end).replace(/^data: /, "").split(" ");
        report.events.push({n: Number(n), produced: Number(produced), arrived: Date.now()});
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (e) {
    report.error = String(e);
  }
  await fetch("/report", {method: "POST", body: JSON.stringify(report)});
})();
</script>"""


@pytest.mark.timing
def test_browser_reads_server_sent_events_as_they_are_produced(
    project: Path, tmp_path: Path
) -> None:
    write_function(project, "events", EVENTS, route="/events", method="GET")
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "browser").stdout.strip()
    with serve(project) as gw:
        page = PageServer(PAGE % {"gateway": gw.url, "key": key})
        try:
            report = visit(page.url, tmp_path / "profile", page)
        finally:
            page.close()
    assert report.get("status") == 200, report
    assert report["contentType"] == "text/event-stream"
    assert len(report["requestId"]) >= 16
    events = report["events"]
    assert [event["n"] for event in events] == [0, 1, 2, 3, 4], report
    for event, following in itertools.pairwise(events):
        # each event was in the page before the function produced the next one
        assert event["arrived"] < following["produced"], events
    assert all(event["arrived"] - event["produced"] < 100 for event in events), events
