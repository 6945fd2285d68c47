"""flux.json validation (docs/reference.md#project-and-fluxjson): every refusal names the file and
the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fluxgw.errors import ConfigError, ProjectNotFound
from fluxgw.project import find_project, load_functions


def write_function(root: Path, folder: str, config: object, entry: str | None = "main.py") -> None:
    directory = root / "functions" / folder
    directory.mkdir(parents=True, exist_ok=True)
    raw = config if isinstance(config, str) else json.dumps(config)
    (directory / "flux.json").write_text(raw)
    if entry:
        (directory / entry).write_text("def handler(request, ctx):\n    return 1\n")


GOOD = {"name": "hello", "runtime": "python"}

# (case id, flux.json content, entry file to create, field the message must name, words in it)
INVALID = [
    ("invalid-json", '{"name": "hello", "runtime": ', "main.py", None, "invalid JSON"),
    ("not-an-object", "[1, 2]", "main.py", None, "JSON object"),
    ("unknown-field", {**GOOD, "methd": "GET"}, "main.py", "methd", "did you mean 'method'"),
    ("name-missing", {"runtime": "python"}, "main.py", "name", "required"),
    ("name-wrong-type", {"name": 7, "runtime": "python"}, "main.py", "name", "a string"),
    ("bad-name", {"name": "Hello World", "runtime": "python"}, "main.py", "name", "[a-z0-9_-]"),
    ("name-too-long", {"name": "a" * 65, "runtime": "python"}, "main.py", "name", "[a-z0-9_-]"),
    ("runtime-missing", {"name": "hello"}, "main.py", "runtime", "required"),
    ("unknown-runtime", {**GOOD, "runtime": "ruby"}, "main.py", "runtime", "'ruby'"),
    ("bad-method", {**GOOD, "method": "FETCH"}, "main.py", "method", "'FETCH'"),
    ("lower-method", {**GOOD, "method": "get"}, "main.py", "method", "'get'"),
    ("route-no-slash", {**GOOD, "route": "hello"}, "main.py", "route", "must start with '/'"),
    ("route-wrong-type", {**GOOD, "route": ["/a"]}, "main.py", "route", "a string"),
    ("route-reserved", {**GOOD, "route": "/_flux/x"}, "main.py", "route", "reserved"),
    ("route-query", {**GOOD, "route": "/a?b=1"}, "main.py", "route", "plain URL path"),
    ("timeout-too-big", {**GOOD, "timeout": 31}, "main.py", "timeout", "out of range"),
    ("timeout-zero", {**GOOD, "timeout": 0}, "main.py", "timeout", "out of range"),
    ("timeout-wrong-type", {**GOOD, "timeout": "10"}, "main.py", "timeout", "a number"),
    ("timeout-bool", {**GOOD, "timeout": True}, "main.py", "timeout", "a number"),
    ("async-wrong-type", {**GOOD, "async": "yes"}, "main.py", "async", "true or false"),
    ("missing-entry", GOOD, None, "entry", "does not exist"),
    ("missing-custom-entry", {**GOOD, "entry": "app.py"}, "main.py", "entry", "'app.py'"),
    ("entry-escapes", {**GOOD, "entry": "../x.py"}, "main.py", "entry", "inside the function"),
    ("auth-unknown", {**GOOD, "auth": "oauth"}, "main.py", "auth", "'oauth' is not a credential"),
    ("auth-empty", {**GOOD, "auth": []}, "main.py", "auth", '"key", "jwt" or ["key", "jwt"]'),
    ("auth-twice", {**GOOD, "auth": ["jwt", "jwt"]}, "main.py", "auth", "twice"),
    ("auth-wrong-type", {**GOOD, "auth": True}, "main.py", "auth", "got true"),
]


@pytest.mark.parametrize(
    ("config", "entry", "field", "words"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_flux_json_is_refused_naming_file_and_field(
    tmp_path: Path, config: object, entry: str | None, field: str | None, words: str
) -> None:
    write_function(tmp_path, "hello", config, entry)
    with pytest.raises(ConfigError) as caught:
        load_functions(tmp_path)
    message = str(caught.value)
    assert message.startswith("functions/hello/flux.json")
    if field is not None:
        assert f"field '{field}'" in message
    assert words in message


def test_two_functions_on_one_route_and_method(tmp_path: Path) -> None:
    write_function(tmp_path, "a", {"name": "a", "runtime": "python", "route": "/same"})
    write_function(tmp_path, "b", {"name": "b", "runtime": "python", "route": "/same"})
    with pytest.raises(ConfigError) as caught:
        load_functions(tmp_path)
    message = str(caught.value)
    assert message.startswith("functions/b/flux.json: field 'route'")
    assert "POST /same is already served by functions/a/flux.json" in message


def test_same_route_different_methods_is_fine(tmp_path: Path) -> None:
    write_function(
        tmp_path, "a", {"name": "a", "runtime": "python", "route": "/x", "method": "GET"}
    )
    write_function(tmp_path, "b", {"name": "b", "runtime": "python", "route": "/x"})
    assert {(s.method, s.route) for s in load_functions(tmp_path)} == {
        ("GET", "/x"),
        ("POST", "/x"),
    }


def test_duplicate_names(tmp_path: Path) -> None:
    write_function(tmp_path, "a", {"name": "same", "runtime": "python", "route": "/a"})
    write_function(tmp_path, "b", {"name": "same", "runtime": "python", "route": "/b"})
    with pytest.raises(ConfigError, match=r"functions/b/flux.json: field 'name'"):
        load_functions(tmp_path)


def test_defaults(tmp_path: Path) -> None:
    write_function(tmp_path, "hello", GOOD)
    (spec,) = load_functions(tmp_path)
    assert (spec.route, spec.method, spec.is_async, spec.timeout, spec.entry) == (
        "/hello",
        "POST",
        False,
        30.0,
        "main.py",
    )
    assert spec.entry_path == (tmp_path / "functions" / "hello" / "main.py").resolve()


@pytest.mark.parametrize(
    ("auth", "accepted"),
    [(None, ("key",)), ("key", ("key",)), ("jwt", ("jwt",)), (["jwt", "key"], ("key", "jwt"))],
)
def test_auth_field(tmp_path: Path, auth: object, accepted: tuple[str, ...]) -> None:
    write_function(tmp_path, "hello", GOOD if auth is None else {**GOOD, "auth": auth})
    (spec,) = load_functions(tmp_path)
    assert spec.auth == accepted
    assert type(spec).from_json(spec.to_json()) == spec  # survives the deployment file


def test_default_entry_by_runtime(tmp_path: Path) -> None:
    write_function(tmp_path, "n", {"name": "n", "runtime": "node"}, "index.js")
    write_function(tmp_path, "d", {"name": "d", "runtime": "deno"}, "index.ts")
    assert {s.name: s.entry for s in load_functions(tmp_path)} == {"n": "index.js", "d": "index.ts"}


def test_find_project_walks_upward(tmp_path: Path) -> None:
    (tmp_path / "functions" / "deep" / "er").mkdir(parents=True)
    assert find_project(tmp_path / "functions" / "deep" / "er") == tmp_path.resolve()


def test_find_project_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFound, match="flux init"):
        find_project(tmp_path)
