"""Pure parts of secrets and the sandbox: names, dotenv, redaction, the worker launch."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from fluxgw.errors import ConfigError, FluxError
from fluxgw.project import FunctionSpec, parse_function
from fluxgw.redact import Redactor
from fluxgw.runtime.api import FunctionFailed, LogLine
from fluxgw.runtime.sandbox import NO_SANDBOX, Sandbox, build_launch, outermost
from fluxgw.secretstore import affected_functions, parse_env_file, validate

VALUE = "tok-ABCdef123/+=-value"


def spec(tmp_path: Path, runtime: str = "python", **extra: object) -> FunctionSpec:
    return FunctionSpec(
        name="fn", runtime=runtime, route="/fn", method="GET", directory=tmp_path, entry="x",
        **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def test_flux_json_secrets_and_env_are_validated(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def handler(r, c): return 1\n")
    good = {"name": "f", "runtime": "python", "secrets": ["B_KEY", "A_KEY"], "env": {"L": "x"}}
    parsed = parse_function(tmp_path / "flux.json", json.dumps(good).encode())
    assert parsed.secrets == ("A_KEY", "B_KEY") and parsed.env == (("L", "x"),)
    for bad, field in [
        ({"secrets": "A"}, "secrets"),
        ({"secrets": ["lower"]}, "secrets"),
        ({"secrets": ["FLUX_X"]}, "secrets"),
        ({"env": {"PATH": "/x"}}, "env"),
        ({"env": {"A": 1}}, "env.A"),
        ({"env": {"A": "x"}, "secrets": ["A"]}, "env.A"),
    ]:
        with pytest.raises(ConfigError) as refused:
            raw = json.dumps({"name": "f", "runtime": "python", **bad}).encode()
            parse_function(tmp_path / "flux.json", raw)
        assert refused.value.field == field


def test_values_are_validated_without_echoing_them() -> None:
    with pytest.raises(FluxError) as big:
        validate({"BIG": "s" * (64 * 1024 + 1)})
    assert "64 KiB" in big.value.message and "sss" not in big.value.message
    with pytest.raises(FluxError):
        validate({"NUL": "a\0b"})
    validate({"OK": "x" * 64 * 1024})


def test_dotenv_quotes_export_comments_multiline() -> None:
    text = "# c\nexport A=1\nB='two words'  # trailing\nC=\"l1\nl2\"\nD=\n"
    assert parse_env_file(text, "f") == {"A": "1", "B": "two words", "C": "l1\nl2", "D": ""}
    with pytest.raises(FluxError):
        parse_env_file("JUSTNAME\n", "f")


def test_redaction_forms() -> None:
    redactor = Redactor({"API_KEY": VALUE, "TINY": "ab"})
    encoded = [
        VALUE,
        urllib.parse.quote(VALUE, safe=""),
        urllib.parse.quote_plus(VALUE),
        base64.b64encode(VALUE.encode()).decode(),
        base64.urlsafe_b64encode(VALUE.encode()).decode(),
    ]
    for form in encoded:
        assert redactor.redact(f"x {form} y") == "x [secret:API_KEY] y" or (
            "[secret:API_KEY]" in redactor.redact(form) and VALUE not in redactor.redact(form)
        )
    for prefix in ("", "u", "us", "use"):  # the value inside a longer base64 string
        text = base64.b64encode(f"{prefix}:{VALUE}:tail".encode()).decode()
        assert "[secret:API_KEY]" in redactor.redact(text)
    assert redactor.redact("ab cd") == "ab cd"  # too short to redact without masking noise
    assert not Redactor({}) and Redactor({}).redact(VALUE) == VALUE


def test_redaction_across_lines_and_chunks() -> None:
    redactor = Redactor({"PEM": "-----BEGIN KEY-----\nMIIBOgIBAAJBAK\n-----END KEY-----"})
    lines = [LogLine(1.0, "output", t) for t in ("a -----BEGIN KEY-----", "MIIBOgIBAAJBAK")]
    lines += [LogLine(1.0, "output", "-----END KEY----- b"), LogLine(2.0, "stderr", "fine")]
    assert [line.text for line in redactor.redact_lines(lines)] == [
        "a [secret:PEM]",
        " b",
        "fine",
    ]
    cut = Redactor({"K": VALUE})  # one long line cut into two chunks by the output reader
    pieces = [LogLine(1.0, "output", "start " + VALUE[:7]), LogLine(1.0, "output", VALUE[7:])]
    texts = " ".join(line.text for line in cut.redact_lines(pieces))
    assert VALUE[:7] not in texts and VALUE[7:] not in texts and "[secret:K]" in texts


def test_failure_message_and_logs_are_redacted() -> None:
    failure = FunctionFailed(502, "function_error", f"raised {VALUE}", (LogLine(1, "log", VALUE),))
    clean = Redactor({"K": VALUE}).redact_failure(failure)
    assert clean.message == "raised [secret:K]" and clean.logs[0].text == "[secret:K]"
    assert (clean.status, clean.code) == (502, "function_error")


def test_only_functions_using_a_changed_secret_are_affected(tmp_path: Path) -> None:
    a = spec(tmp_path, secrets=("A",))
    b = FunctionSpec("b", "python", "/b", "GET", tmp_path, "x", secrets=("B",))
    c = FunctionSpec("c", "python", "/c", "GET", tmp_path, "x")
    assert affected_functions([a, b, c], {"A": "1", "B": "2"}, {"A": "9", "B": "2"}) == {"fn"}
    assert affected_functions([a, b, c], {"A": "1"}, {"A": "1", "B": "new"}) == {"b"}


def test_launch_without_sandbox_passes_only_declared_names(tmp_path: Path) -> None:
    host = {"PATH": "/home/u/bin:/usr/bin", "HOME": "/home/u", "AWS_SECRET": "x", "LANG": "C"}
    launch = build_launch(
        spec(tmp_path), ["/usr/bin/python3", "shim.py"], sandbox=NO_SANDBOX, read_only=[],
        variables={"API_KEY": "v"}, host_env=host,
    )  # fmt: skip
    env = launch.env_dict
    assert launch.argv == ("/usr/bin/python3", "shim.py") and not launch.sandboxed
    assert env["API_KEY"] == "v" and "AWS_SECRET" not in env
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin:/usr/bin" and env["HOME"] == "/home/u"


def test_launch_in_bwrap_binds_only_runtime_and_own_folder(tmp_path: Path) -> None:
    sandbox = Sandbox("/usr/bin/bwrap", "bubblewrap 0.8.0", (("symlink", "usr/lib", "/lib"),))
    launch = build_launch(
        spec(tmp_path, "deno"), ["/opt/deno", "run", "shim.mjs"], sandbox=sandbox,
        read_only=["/opt/deno-dir"], variables={"K": "v"}, host_env={"HOME": "/root"},
        deno_dir="/tmp/cache/fn",
    )  # fmt: skip
    argv = list(launch.argv)
    deno = argv[argv.index("/opt/deno") :]
    assert argv[0] == "/usr/bin/bwrap" and deno[:2] == ["/opt/deno", "run"]
    assert deno[-1] == "shim.mjs" and "-A" not in deno  # its permissions: test_sandbox_launch
    for flag in ("--unshare-pid", "--die-with-parent"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL" and "--unshare-net" not in argv
    binds = {argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")}
    assert binds == {"/opt/deno-dir", str(tmp_path), "/tmp/cache/fn"}
    writable = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert writable == ["/tmp/cache/fn"]  # its own deno cache; /tmp is a private tmpfs
    assert argv.index("--tmpfs") < argv.index(str(tmp_path))  # folder laid over the tmpfs
    env = launch.env_dict
    # deno's home is a folder of the private /tmp (test_sandbox_launch.py)
    assert env["HOME"] == env["TMPDIR"] == "/tmp/flux-tmp" and env["K"] == "v"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_the_gateway_process_can_mark_itself_non_dumpable() -> None:
    code = (
        "import ctypes; from fluxgw.runtime.sandbox import mark_non_dumpable\n"
        "libc = ctypes.CDLL(None)\n"
        "before = libc.prctl(3, 0, 0, 0, 0)\n"  # 3 = PR_GET_DUMPABLE
        "assert mark_non_dumpable()\n"
        "print(before, libc.prctl(3, 0, 0, 0, 0))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["1", "0"], done.stderr


def test_runtime_paths_are_bound_once_each() -> None:
    paths = ["/opt/py/bin", "/opt/py", "/opt/python", "/usr/lib/node", "/w/venv", "/w/venv/lib"]
    assert outermost(paths) == ["/opt/py", "/opt/python", "/w/venv"]
