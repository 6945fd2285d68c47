"""deno's permission flags, read as data from the launch argv (docs/sandbox.md#deno-permissions).

deno never gets ``-A``: it may read its own folder and its tmp, write only its tmp, read exactly
the environment names it is given, and reach the network; nothing else (no run, ffi, sys).
The end-to-end refusals are in tests/e2e/test_sandbox.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxgw.project import FunctionSpec
from fluxgw.runtime.sandbox import NO_SANDBOX, Sandbox, build_launch

BWRAP = Sandbox("/usr/bin/bwrap", "bubblewrap 0.8.0", ())


def deno_spec(folder: Path) -> FunctionSpec:
    return FunctionSpec(
        name="edge", runtime="deno", route="/edge", method="GET", directory=folder,
        entry="index.ts",
    )  # fmt: skip


def permissions(argv: tuple[str, ...]) -> dict[str, str | None]:
    """The --allow-* flags between ``deno run`` and the shim: {flag: value or None}."""
    start = argv.index("/opt/deno")
    assert argv[start + 1] == "run"
    flags: dict[str, str | None] = {}
    for arg in argv[start + 2 :]:
        if arg == "-A" or arg.startswith(("--allow", "-A")):
            name, _, value = arg.partition("=")
            flags[name] = value or None
    return flags


@pytest.mark.parametrize("sandbox", [BWRAP, NO_SANDBOX], ids=["bwrap", "no-sandbox"])
def test_deno_gets_explicit_permissions_never_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    monkeypatch.setenv("DENO_DIR", str(tmp_path / "deno-cache"))
    folder = tmp_path / "fn"
    folder.mkdir()
    launch = build_launch(
        deno_spec(folder), ["/opt/deno", "run", "--quiet", "shim.mjs", "index.ts"],
        sandbox=sandbox, read_only=[], variables={"API_TOKEN": "v", "MODE": "x"},
        host_env={"HOME": "/root", "AWS_SECRET": "y", "LANG": "C"}, deno_dir=str(tmp_path / "c"),
    )  # fmt: skip
    flags = permissions(launch.argv)
    assert set(flags) == {"--allow-read", "--allow-write", "--allow-env", "--allow-net"}
    env = launch.env_dict
    tmp = env["TMPDIR"]
    assert env["HOME"] == tmp
    if sandbox.enabled:  # a folder made on the sandbox's private /tmp
        assert tmp == "/tmp/flux-tmp"
        argv = list(launch.argv)
        assert argv[argv.index("--dir") + 1] == tmp and argv.index("--tmpfs") < argv.index("--dir")
    else:  # a folder of its own, not the machine's /tmp
        assert tmp == str(tmp_path / "deno-cache" / "tmp" / "edge") and Path(tmp).is_dir()
    assert flags["--allow-read"] == ",".join(sorted({str(folder), tmp, "/dev/fd"}))
    assert flags["--allow-write"] == ",".join(sorted({tmp, "/dev/fd"}))
    assert flags["--allow-net"] is None  # the network, as for every runtime
    # Exactly the names in its environment, plus the two protocol pipe numbers.
    allowed = set((flags["--allow-env"] or "").split(","))
    assert allowed == {*env, "FLUX_REQUEST_FD", "FLUX_PROTOCOL_FD"}
    assert {"API_TOKEN", "MODE"} <= allowed and "AWS_SECRET" not in allowed
    assert launch.argv[-2:] == ("shim.mjs", "index.ts")


def test_a_comma_in_a_path_is_escaped_for_deno(tmp_path: Path) -> None:
    folder = tmp_path / "a,b"
    folder.mkdir()
    launch = build_launch(
        deno_spec(folder), ["/opt/deno", "run", "shim.mjs"], sandbox=BWRAP, read_only=[],
        variables={}, host_env={}, deno_dir=str(tmp_path / "c"),
    )  # fmt: skip
    reads = permissions(launch.argv)["--allow-read"] or ""
    assert str(tmp_path / "a,,b") in reads  # deno reads ",," as one literal comma


def test_node_and_python_argv_are_left_alone(tmp_path: Path) -> None:
    for runtime, command in [("node", ["/opt/node", "shim.mjs"]), ("python", ["/py", "w.py"])]:
        spec = FunctionSpec(
            name="f", runtime=runtime, route="/f", method="GET", directory=tmp_path, entry="x"
        )
        launch = build_launch(
            spec, command, sandbox=NO_SANDBOX, read_only=[], variables={}, host_env={}
        )
        assert launch.argv == tuple(command)


def test_deno_tmp_in_the_sandbox_never_covers_a_bound_path(tmp_path: Path) -> None:
    # A project under /tmp/flux-tmp: a grant of that folder would cover the function's files.
    folder = Path("/tmp/flux-tmp/proj/.flux/deployments/1/functions/edge")
    launch = build_launch(
        deno_spec(folder), ["/opt/deno", "run", "shim.mjs"], sandbox=BWRAP, read_only=[],
        variables={}, host_env={}, deno_dir="/tmp/flux-tmp_/cache",
    )  # fmt: skip
    tmp = launch.env_dict["TMPDIR"]
    assert tmp == "/tmp/flux-tmp__"
    assert permissions(launch.argv)["--allow-write"] == f"/dev/fd,{tmp}"
