"""Every .flux/ state file has one validating reader (docs/limits.md, "State files").

Whatever a file holds, the user sees one line naming the file and the field; a running gateway
keeps its last good state and never answers 500 because of a file; a corrupt file is logged
once per distinct content, and again ("... is valid again") when fixed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer, flux, key_for, poll_until, serve, write_function

pytestmark = pytest.mark.e2e

HANDLER = "def handler(request, ctx):\n    return 'ok'\n"


def lines_with(output: list[str], *words: str) -> list[str]:
    return [line for line in list(output) if all(word in line for word in words)]


@pytest.fixture
def live(project: Path) -> Path:
    write_function(project, "x", HANDLER, route="/x", method="GET")
    flux(project, "deploy")
    return project


def one_line_error(project: Path, *args: str) -> str:
    result = flux(project, *args, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and "internal error" not in line, line
    return line


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[" * 50_000, "nested too deeply"),
        ('{"version": 1, "keys": [' + "1" * 5000 + "]}", "4300 digits"),
        ('{"version": 1, "keys": [{"name": NaN}]}', "NaN"),
        ('{"version": 1, "keys": "x"}', "no 'keys' list"),
    ],
    ids=["deep", "long-number", "nan", "not-a-list"],
)
def test_corrupt_keys_file_is_one_line_naming_it(live: Path, content: str, words: str) -> None:
    (live / ".flux" / "keys.json").write_text(content)
    line = one_line_error(live, "api-keys", "list")
    assert "keys.json" in line and words in line, line


def test_corrupt_key_usage_file_names_file_and_field(live: Path) -> None:
    key_for(live)
    (live / ".flux" / "key-usage.json").write_text('{"abc": "x"}')
    line = one_line_error(live, "api-keys", "list")
    assert "key-usage.json: field 'abc'" in line, line


def test_invalid_project_settings_refuse_start_naming_the_field(live: Path) -> None:
    settings = live / ".flux" / "project.json"
    key_for(live)
    data = json.loads(settings.read_text())
    settings.write_text(json.dumps({**data, "cors_origins": ["not a url"]}))
    line = one_line_error(live, "serve", "--port", "0")
    assert "project.json: field 'cors_origins[0]'" in line, line


def test_invalid_ratelimit_state_is_reported_and_the_gateway_serves(live: Path) -> None:
    key = key_for(live)
    (live / ".flux" / "ratelimit.json").write_text('{"abc": "x"}')
    with serve(live) as gw:
        assert httpx.get(f"{gw.url}/x", headers=bearer(key)).json() == "ok"
        assert lines_with(gw.output, "ratelimit.json: field 'abc'", "full rate-limit buckets")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"timeout": float("nan")}, "NaN is not a valid JSON number"),
        ({"timeout": -1}, "field 'functions[0].timeout'"),
        ({"route": "/a/../x"}, "field 'functions[0].route'"),
        ({"runtime": "cobol"}, "field 'functions[0].runtime'"),
        ({"async": "yes"}, "field 'functions[0].async'"),
        ({"memory": "lots"}, "field 'functions[0].memory'"),
        ({"env": {"MODE": 1}}, "field 'functions[0].env.MODE'"),
    ],
    ids=["nan-timeout", "negative-timeout", "dot-route", "runtime", "async", "memory", "env"],
)
def test_invalid_deployment_keeps_the_last_good_one(
    live: Path, change: dict[str, object], words: str
) -> None:
    key = key_for(live)
    deployment_file = live / ".flux" / "deployment.json"
    with serve(live) as gw:
        assert httpx.get(f"{gw.url}/x", headers=bearer(key)).json() == "ok"
        data = json.loads(deployment_file.read_text())
        data["functions"][0].update(change)
        deployment_file.write_text(json.dumps(data))  # NaN is written as NaN
        poll_until(lambda: lines_with(gw.output, "deployment.json", words), timeout=10)
        answer = httpx.get(f"{gw.url}/x", headers=bearer(key))
        assert (answer.status_code, answer.text) == (200, '"ok"')


def test_corrupt_file_is_logged_once_then_valid_again(live: Path) -> None:
    key = key_for(live)
    keys_file = live / ".flux" / "keys.json"
    good = keys_file.read_text()
    with serve(live) as gw:
        keys_file.write_text('{"version": 1, "keys": [{"name": 7}]}')
        poll_until(lambda: lines_with(gw.output, "keys.json"), timeout=10)
        # The gateway checks every 0.2 s: over 10 checks the same content is not logged again.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert len(lines_with(gw.output, "keys.json")) == 1, lines_with(gw.output, "keys")
            time.sleep(0.1)
        assert httpx.get(f"{gw.url}/x", headers=bearer(key)).json() == "ok"  # last good keys
        keys_file.write_text("{broken")  # a different problem: reported once more
        poll_until(lambda: len(lines_with(gw.output, "keys.json")) == 2, timeout=10)
        keys_file.write_text(good)
        poll_until(lambda: lines_with(gw.output, "keys.json is valid again"), timeout=10)
        assert len(lines_with(gw.output, "keys.json")) == 3
        assert not lines_with(gw.output, "Traceback")
