"""deno's own permissions (docs/sandbox.md#deno-permissions), through the real `flux serve`.

A deno function tries what its flags do not grant: start a process (Deno.Command, the old
Deno.run), write outside its tmp, read the gateway's .flux/ and /etc/shadow, read an
environment variable it was not given, load a native library, ask for system information.
Each is refused with deno's NotCapable error naming the missing permission, in the answer, with
the sandbox and without it (where deno's permissions are the only barrier). What it is granted
still works: its own folder, its tmp, its declared env, the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import bearer, flux, serve, write_function

from fluxgw.runtime.discovery import find_runtime

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(find_runtime("deno") is None, reason="deno missing (scripts/setup)"),
]

# Each attempt answers "ok: ..." or the error it got, "<name>: <message>".
ATTEMPTS = """
const attempts: Record<string, () => unknown> = {
  command: () => new Deno.Command("id", { stdout: "null" }).outputSync(),
  run: () => (Deno as any).run({ cmd: ["id"] }),
  write_folder: () => Deno.writeTextFileSync(`${Deno.cwd()}/planted.txt`, "x"),
  write_flux: () => Deno.writeTextFileSync(PLAN.flux + "/keys.json", "{}"),
  read_keys: () => Deno.readTextFileSync(PLAN.flux + "/keys.json").length,
  read_shadow: () => Deno.readTextFileSync("/etc/shadow").length,
  env_gateway: () => Deno.env.get("GATEWAY_CANARY_VAR"),
  env_all: () => Object.keys(Deno.env.toObject()).length,
  ffi: () => Deno.dlopen("libc.so.6", {}),
  sys: () => Deno.hostname(),
  // granted:
  read_own: () => Deno.readTextFileSync(`${Deno.cwd()}/index.ts`).length > 0,
  tmp: () => {
    const path = `${Deno.env.get("TMPDIR")}/note.txt`;
    Deno.writeTextFileSync(path, "kept");
    return Deno.readTextFileSync(path);
  },
  env_declared: () => Deno.env.get("GREETING"),
};
let PLAN: { flux: string; url: string };

export default async function (req: Request) {
  PLAN = await req.json();
  const url = new URL(req.url);
  const only = url.searchParams.get("only");
  if (only) return attempts[only](); // uncaught: the gateway's 502 carries the error
  const out: Record<string, string> = {};
  for (const [name, attempt] of Object.entries(attempts)) {
    try {
      out[name] = `ok: ${attempt()}`;
    } catch (error) {
      out[name] = `${(error as Error).name}: ${(error as Error).message}`;
    }
  }
  out.net = `ok: ${await (await fetch(PLAN.url)).text()}`;
  return out;
}
"""
# attempt -> words its refusal must contain (deno names the permission it lacks)
REFUSED = {
    "command": "Requires run access",
    "run": "Requires run access",
    "write_folder": "Requires write access",
    "write_flux": "Requires write access",
    "read_keys": "Requires read access",
    "read_shadow": 'Requires read access to "/etc/shadow"',
    "env_gateway": 'Requires env access to "GATEWAY_CANARY_VAR"',
    "env_all": "Requires env access",
    "ffi": "Requires ffi access",
    "sys": "Requires sys access",
}


@pytest.mark.parametrize("mode", ["sandbox", "no-sandbox"])
def test_deno_is_refused_what_it_was_not_granted(project: Path, mode: str) -> None:
    if mode == "sandbox" and shutil.which("bwrap") is None:
        pytest.skip("bwrap missing (scripts/setup)")
    write_function(project, "edge", ATTEMPTS, runtime="deno", env={"GREETING": "hello"})
    flux(project, "deploy")
    key = flux(project, "api-keys", "create", "--name", "k").stdout.strip()
    state = project / ".flux"
    keys_before = (state / "keys.json").read_bytes()
    args = ("--no-sandbox",) if mode == "no-sandbox" else ()
    with (
        serve(project, *args, env={"GATEWAY_CANARY_VAR": "canary-31337"}) as gw,
        httpx.Client(base_url=gw.url, headers=bearer(key), timeout=30) as client,
    ):
        health = client.get("/_flux/health").json()
        assert health["sandbox"].startswith("bubblewrap" if mode == "sandbox" else "off")
        plan = json.dumps({"flux": str(state), "url": f"{gw.url}/_flux/health"})
        answer = client.post("/edge", content=plan)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        for attempt, words in REFUSED.items():
            assert result[attempt].startswith("NotCapable: ") and words in result[attempt], (
                attempt,
                result[attempt],
            )
        assert result["read_own"] == "ok: true" and result["tmp"] == "ok: kept", result
        assert result["env_declared"] == "ok: hello", result
        assert result["net"].startswith("ok: {"), result  # the gateway's health, over loopback
        assert "canary-31337" not in answer.text
        # Uncaught, the refusal is the function's error: a 502 naming the missing permission.
        failed = client.post("/edge?only=command", content=plan)
        assert failed.status_code == 502, failed.text
        assert "NotCapable: Requires run access" in failed.json()["message"], failed.text
    assert (state / "keys.json").read_bytes() == keys_before
    deployed = next((state / "deployments").glob("*/functions/edge"))
    assert not (deployed / "planted.txt").exists()
