"""Property tests (hypothesis): whatever the bytes, each reader raises only its documented
error type (docs/limits.md). flux.json -> ConfigError; a state file -> StateError; a route ->
a problem string or None; a function's response headers -> HttpError (502) or valid headers."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluxgw.deploy import load_deployment
from fluxgw.dispatch import SERVER_OWNED, function_headers
from fluxgw.errors import ConfigError, HttpError, StateError
from fluxgw.httpedges import check_framing
from fluxgw.httpio import HOP_BY_HOP, decode_headers
from fluxgw.keyfile import load_records, load_usage
from fluxgw.live import LiveLoader
from fluxgw.project import MAX_ROUTE, parse_function, route_problem
from fluxgw.safeio import UnsafeInput, loads
from fluxgw.settings import load_settings
from fluxgw.state import StateDir

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-ish values, including the awkward ones: huge and non-finite floats, long strings.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Raw text that is sometimes JSON, sometimes nearly JSON, sometimes garbage.
raw_documents = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [b"NaN", b"[1e999]", b"-Infinity", b"[" * 5000, b"1" * 5000, b'{"a":"\\ud800"}']
    ),
)

_FOLDER = Path(tempfile.mkdtemp(prefix="flux-hypothesis-"))


def _function_folder() -> Path:
    folder = _FOLDER / "functions" / "f"
    folder.mkdir(parents=True, exist_ok=True)
    for entry in ("main.py", "index.js", "index.ts"):
        (folder / entry).touch()
    return folder


FIELDS = ("name", "runtime", "route", "method", "async", "timeout", "entry")
# The pool and environment fields, also read back from deployment.json.
MORE_FIELDS = ("auth", "secrets", "env", "concurrency", "max_workers", "memory")
field_values = st.one_of(
    json_values,
    st.sampled_from(["f", "python", "node", "/f", "/a/../b", "GET", "main.py", "../x"]),
    st.sampled_from([0, 1, 64, 512, 10**6, ["A_KEY"], ["PATH"], {"A": "x"}, {"A": 1}, ["jwt"]]),
)


@SETTINGS
@given(raw_documents)
def test_flux_json_bytes_raise_only_config_error(raw: bytes) -> None:
    folder = _function_folder()
    try:
        parse_function(folder / "flux.json", raw, "functions/f/flux.json")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600
        assert str(exc).startswith("functions/f/flux.json")


@SETTINGS
@given(st.dictionaries(st.sampled_from(FIELDS + MORE_FIELDS), field_values, max_size=13))
def test_flux_json_fields_raise_only_config_error(config: dict[str, object]) -> None:
    folder = _function_folder()
    raw = json.dumps(config).encode()
    try:
        spec = parse_function(folder / "flux.json", raw, "functions/f/flux.json")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600
    else:  # what is accepted is valid by construction
        assert route_problem(spec.route) is None
        assert 1 <= spec.timeout <= 30


STATE_FILES = ("keys.json", "project.json", "deployment.json", "key-usage.json", "ratelimit.json")


def _state_with(name: str, raw: bytes) -> StateDir:
    project = Path(tempfile.mkdtemp(dir=_FOLDER))
    state = StateDir(project)
    state.ensure()
    (state.root / name).write_bytes(raw)
    return state


def _read_all(state: StateDir) -> None:
    load_records(state)
    load_settings(state)
    load_deployment(state)
    load_usage(state)
    state.read_epoch_map(state.ratelimit_file)
    LiveLoader(state).load()


def _deployment_documents() -> st.SearchStrategy[bytes]:
    spec = st.fixed_dictionaries(
        {f: field_values for f in FIELDS},
        optional={"directory": field_values, **{f: field_values for f in MORE_FIELDS}},
    )
    document = st.fixed_dictionaries(
        {"version": json_values, "deployed_at": json_values, "functions": st.lists(spec)}
    )
    return document.map(lambda d: json.dumps(d).encode())


@SETTINGS
@given(st.sampled_from(STATE_FILES), st.one_of(raw_documents, _deployment_documents()))
def test_state_files_raise_only_state_error(name: str, raw: bytes) -> None:
    state = _state_with(name, raw)
    try:
        _read_all(state)
    except StateError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 800
        assert name in str(exc) or "project.json" in str(exc) or "keys.json" in str(exc)


@SETTINGS
@given(st.binary(max_size=200))
def test_strict_json_raises_only_unsafe_input(raw: bytes) -> None:
    try:
        loads(raw)
    except UnsafeInput as exc:
        assert "\n" not in str(exc)


GRAMMAR = re.compile(r"/|(/(?!\.\.?(/|$))[A-Za-z0-9._~!$&'()*+,;=:@-]+)+/?")


@SETTINGS
@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="/.%a-_~", max_size=30),
        st.text(alphabet="ab/", min_size=MAX_ROUTE - 2, max_size=MAX_ROUTE + 2).map("/".__add__),
    )
)
def test_route_grammar(route: str) -> None:
    problem = route_problem(route)
    if problem is None:
        assert GRAMMAR.fullmatch(route), route
        assert len(route.encode()) <= MAX_ROUTE and "%" not in route
        assert not route.startswith("/_flux")
    else:
        assert "\n" not in problem and len(problem) < 300


header_text = st.text(st.characters(max_codepoint=0x2FF), max_size=20)


@SETTINGS
@given(st.lists(st.tuples(header_text, header_text), max_size=8))
def test_function_headers_are_valid_or_refused_with_502(pairs: list[tuple[str, str]]) -> None:
    try:
        headers = function_headers(tuple(pairs))
    except HttpError as exc:
        assert exc.status == 502 and exc.code == "invalid_response"
        assert "\n" not in exc.message and "\r" not in exc.message
        return
    for name, value in headers:
        assert re.fullmatch(r"[!#$%&'*+.^_`|~0-9a-z-]+", name), name
        assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value)
        value.encode("latin-1")
        assert name not in HOP_BY_HOP and name not in SERVER_OWNED


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=20)), max_size=8))
def test_request_headers_decode_and_framing_check(raw: list[tuple[bytes, bytes]]) -> None:
    headers = decode_headers(raw)
    try:
        check_framing(headers)
    except HttpError as exc:
        assert exc.status == 400 and ("connection", "close") in exc.headers
