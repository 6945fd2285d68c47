"""deployment.json read back by the gateway (docs/limits.md#state-files): every field of a
function, the pool and environment ones included, is validated as flux.json's is. A hand-edited
bad value is one StateError line naming the file and the field; nothing else is raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fluxgw.deploy import load_deployment
from fluxgw.errors import StateError
from fluxgw.project import DEFAULT_MEMORY, FunctionSpec
from fluxgw.state import StateDir


def good_function(folder: Path) -> dict[str, Any]:
    spec = FunctionSpec(
        name="edge", runtime="deno", route="/edge", method="GET", directory=folder,
        entry="index.ts", secrets=("API_TOKEN",), env=(("MODE", "fast"),), concurrency=8,
        max_workers=2, memory=256,
    )  # fmt: skip
    return spec.to_json()


def write_deployment(tmp_path: Path, function: dict[str, Any]) -> StateDir:
    (tmp_path / "proj").mkdir(exist_ok=True)
    state = StateDir(tmp_path / "proj")
    state.ensure()
    document = {"version": 1, "deployed_at": 1.0, "functions": [function]}
    state.deployment_file.write_text(json.dumps(document))
    return state


def test_a_good_deployment_reads_back_every_field(tmp_path: Path) -> None:
    function = good_function(tmp_path)
    spec = load_deployment(write_deployment(tmp_path, function)).functions[0]
    assert spec.to_json() == function
    assert (spec.secrets, spec.env) == (("API_TOKEN",), (("MODE", "fast"),))
    assert (spec.concurrency, spec.max_workers, spec.memory) == (8, 2, 256)


def test_an_older_deployment_without_the_new_fields_gets_their_defaults(tmp_path: Path) -> None:
    function = good_function(tmp_path)
    for field in ("auth", "secrets", "env", "concurrency", "max_workers", "memory"):
        del function[field]
    spec = load_deployment(write_deployment(tmp_path, function)).functions[0]
    assert (spec.secrets, spec.env, spec.concurrency, spec.max_workers) == ((), (), None, None)
    assert spec.memory == DEFAULT_MEMORY and spec.auth == ("key",)


BAD = [
    ("memory", "lots", "must be an integer"),
    ("memory", 512.5, "must be an integer"),
    ("memory", True, "must be an integer"),
    ("memory", 0, "out of range (64-16384)"),
    ("memory", -1, "out of range"),
    ("memory", 10**12, "out of range"),
    ("memory", [512], "must be an integer"),
    ("concurrency", 0, "out of range (1-10000)"),
    ("concurrency", "8", "must be an integer"),
    ("concurrency", 1.5, "must be an integer"),
    ("concurrency", 10**6, "out of range"),
    ("max_workers", 0, "out of range (1-256)"),
    ("max_workers", False, "must be an integer"),
    ("max_workers", {"n": 1}, "must be an integer"),
    ("secrets", "API_TOKEN", "must be a list of names"),
    ("secrets", ["lower"], "not a valid name"),
    ("secrets", [7], "must hold names"),
    ("secrets", ["FLUX_KEY"], "reserved for the gateway"),
    ("secrets", ["PATH"], "cannot be overridden"),
    ("env", ["MODE"], "must be an object"),
    ("env", "MODE=fast", "must be an object"),
    ("env", {"MODE": 1}, "must be a string"),
    ("env", {"MODE": "a\u0000b"}, "NUL"),
    ("env", {"HOME": "/root"}, "cannot be overridden"),
    ("env", {"bad name": "x"}, "not a valid name"),
    ("env", {"API_TOKEN": "x"}, "also listed in secrets"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD, ids=lambda v: str(v)[:20])
def test_a_bad_field_is_one_line_naming_file_and_field(
    tmp_path: Path, field: str, value: object, words: str
) -> None:
    function = good_function(tmp_path)
    function[field] = value
    state = write_deployment(tmp_path, function)
    with pytest.raises(StateError) as refused:
        load_deployment(state)
    message = str(refused.value)
    assert "\n" not in message, message
    assert message.startswith(str(state.deployment_file)), message
    named = "env.MODE" if field == "env" and isinstance(value, dict) and "MODE" in value else field
    if value == {"API_TOKEN": "x"}:
        named = "env.API_TOKEN"
    assert f"field 'functions[0].{named}'" in message, message
    assert words in message, message


def test_a_spec_cannot_be_built_with_a_bad_value(tmp_path: Path) -> None:
    # The constructor validates too: a FunctionSpec that exists is valid, however it was made.
    base = {"name": "f", "runtime": "python", "route": "/f", "method": "GET", "entry": "m.py"}
    for field, value in [("memory", 1), ("concurrency", 0), ("secrets", ("x",)), ("env", "A")]:
        with pytest.raises(ValueError, match=f"field '{field}'"):
            FunctionSpec(directory=tmp_path, **base, **{field: value})  # type: ignore[arg-type]
