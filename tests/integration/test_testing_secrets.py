"""fluxgw.testing lets a test give secrets to the embedded gateway (docs/testing.md)."""

from __future__ import annotations

from pathlib import Path

from conftest import write_function

from fluxgw.testing import open_gateway

READER = """
import os
def handler(request, ctx):
    print("using", os.environ["API_TOKEN"])
    return os.environ["API_TOKEN"]
"""


async def test_secrets_for_the_embedded_gateway(project: Path) -> None:
    write_function(project, "reader", READER, method="GET", secrets=["API_TOKEN"])
    async with open_gateway(project, in_process=True, secrets={"API_TOKEN": "first-tok"}) as gw:
        key = gw.create_key("ci")
        first = await gw.client.get("/reader", headers=gw.auth(key))
        assert first.json() == "first-tok"
        gw.set_secret("API_TOKEN", "second-tok")
        second = await gw.client.get("/reader", headers=gw.auth(key))
        assert second.json() == "second-tok"
        await gw.gateway.traces.flush()
        logs = [line.text for line in gw.gateway.traces.get(second.headers["x-request-id"]).logs]
        assert logs == ["using [secret:API_TOKEN]"]
        gw.unset_secret("API_TOKEN")
        gone = await gw.client.get("/reader", headers=gw.auth(key))
        assert gone.status_code == 502 and "KeyError" in gone.text
