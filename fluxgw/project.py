"""Find a project and read its functions/*/flux.json into frozen, validated FunctionSpecs.

Validation happens here, once: a FunctionSpec that exists is valid, so code downstream never
re-checks (the attrs habit from ARCHITECTURE.md). Every refusal names the file and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .envspec import EnvFieldError, check_env_fields, parse_env_fields
from .errors import ConfigError, ProjectNotFound
from .safeio import UnsafeInput, clip, read_regular_file, shorten
from .safeio import loads as safe_loads

RUNTIMES = ("python", "node", "deno")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_ENTRY = {"python": "main.py", "node": "index.js", "deno": "index.ts"}
NAME_PATTERN = re.compile(r"[a-z0-9_-]{1,64}")
# The route grammar (docs/limits.md): "/" or "/" segments joined by "/", an optional trailing
# "/"; a segment is 1+ of these characters and is neither "." nor "..". No "%" (hypercorn gives
# the gateway percent-decoded paths, so an escaped route could only match double-encoded), no
# query, fragment or whitespace; at most MAX_ROUTE bytes.
SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
MAX_ROUTE = 1024
RESERVED_PREFIX = "/_flux"
MIN_TIMEOUT, MAX_TIMEOUT = 1, 30
# Pool and limit fields (docs/runtimes.md): invocations per worker, workers per function, MiB.
MAX_CONCURRENCY = 10_000
MAX_WORKERS = 256
MIN_MEMORY, MAX_MEMORY, DEFAULT_MEMORY = 64, 16_384, 512
KNOWN_FIELDS = (
    "name",
    "runtime",
    "route",
    "method",
    "async",
    "timeout",
    "entry",
    "auth",
    "secrets",
    "env",
    "concurrency",
    "max_workers",
    "memory",
)
# deployment.json fields every version has written; the others may be missing in older ones
REQUIRED_IN_DEPLOYMENT = ("name", "runtime", "route", "method", "async", "timeout", "entry")
AUTH_KINDS = ("key", "jwt")  # docs/auth.md: the credentials a function may take
MAX_FLUX_JSON = 64 * 1024  # bytes; a flux.json is a few hundred


def route_problem(route: str) -> str | None:
    """Why ``route`` is not a valid route (one short line), or None if it is."""
    if not isinstance(route, str):
        return f"must be a string, got {type(route).__name__}"
    if len(route.encode("utf-8", "surrogatepass")) > MAX_ROUTE:
        return f"{clip(route)} is longer than {MAX_ROUTE} bytes"
    if not route.startswith("/"):
        return f"{clip(route)} must start with '/'"
    if route == RESERVED_PREFIX or route.startswith(RESERVED_PREFIX + "/"):
        return f"{clip(route)} is reserved for the gateway (/_flux/...)"
    if route == "/":
        return None
    segments = route[1:].removesuffix("/").split("/")
    for segment in segments:
        if segment in (".", ".."):
            return f"{clip(route)} has a dot segment ({segment!r}); write the path it means"
        if "%" in segment:
            return f"{clip(route)} has a '%': write the character itself, unescaped"
        if not SEGMENT_PATTERN.fullmatch(segment):
            return (
                f"{clip(route)} is not a plain URL path (segments of A-Z a-z 0-9 and "
                "-._~!$&'()*+,;=:@, no empty segment, no query)"
            )
    return None


def _check(problem_of: Any) -> Any:
    """An attrs validator from a ``value -> problem | None`` function."""

    def validate(_inst: Any, attr: attrs.Attribute, value: Any) -> None:
        problem = problem_of(value)
        if problem is not None:
            raise FieldError("async" if attr.name == "is_async" else attr.name, problem)

    return validate


class FieldError(ValueError):
    """A FunctionSpec field is invalid; ``field`` is its flux.json name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}")
        self.field = field
        self.problem = problem


def _name_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        return f"{clip(value)} must match [a-z0-9_-]{{1,64}}"
    return None


def _one_of(choices: tuple[str, ...]) -> Any:
    def problem(value: Any) -> str | None:
        if value not in choices:
            return f"{clip(value)} is not one of {', '.join(choices)}"
        return None

    return problem


def _timeout_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {clip(value)}"
    if not (MIN_TIMEOUT <= value <= MAX_TIMEOUT):  # NaN fails this too
        return f"{clip(value)} is out of range ({MIN_TIMEOUT}-{MAX_TIMEOUT} seconds)"
    return None


def _entry_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value or "\x00" in value:
        return f"must be a file name, got {clip(value)}"
    if Path(value).is_absolute() or ".." in Path(value).parts:
        return f"{clip(value)} must stay inside the function folder"
    return None


def _auth_problem(value: Any) -> str | None:
    kinds = value if isinstance(value, tuple) else ()
    if not kinds or any(k not in AUTH_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        return f'must be "key", "jwt" or both, got {clip(value)}'
    return None


def _bool_problem(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {clip(value)}"


def _int_range(low: int, high: int, *, optional: bool = False) -> Any:
    def problem(value: Any) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {clip(value)}"
        if not low <= value <= high:
            return f"{clip(value)} is out of range ({low}-{high})"
        return None

    return problem


def _secrets_problem(value: Any) -> str | None:
    if not isinstance(value, tuple):
        return f"must be a list of names, got {clip(value)}"
    try:
        check_env_fields(list(value), {})
    except EnvFieldError as exc:
        return exc.problem
    return None


def _env_problem(value: Any) -> str | None:
    pairs = value if isinstance(value, tuple) else ()
    if not isinstance(value, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
        return f"must be NAME: value pairs, got {clip(value)}"
    try:
        check_env_fields([], dict(pairs))
    except EnvFieldError as exc:
        return exc.problem
    return None


def _env_not_secret(inst: Any, _attr: attrs.Attribute, value: Any) -> None:
    for name, _ in value:
        if name in inst.secrets:
            raise FieldError(f"env.{name}", f"{name} is also listed in secrets")


def _directory_problem(value: Any) -> str | None:
    if not isinstance(value, Path) or not value.is_absolute():
        return f"must be an absolute path, got {clip(str(value))}"
    return None


@attrs.frozen
class FunctionSpec:
    """One deployed function, as validated from its flux.json."""

    name: str = attrs.field(validator=_check(_name_problem))
    runtime: str = attrs.field(validator=_check(_one_of(RUNTIMES)))
    route: str = attrs.field(validator=_check(route_problem))
    method: str = attrs.field(validator=_check(_one_of(METHODS)))
    # absolute path of the function's folder (in the deployment snapshot)
    directory: Path = attrs.field(validator=_check(_directory_problem))
    entry: str = attrs.field(validator=_check(_entry_problem))
    is_async: bool = attrs.field(default=False, validator=_check(_bool_problem))
    timeout: float = attrs.field(default=30.0, validator=_check(_timeout_problem))
    auth: tuple[str, ...] = attrs.field(  # credentials accepted: "key" and/or "jwt"
        default=("key",), validator=_check(_auth_problem)
    )
    # names of stored secrets it receives (docs/secrets.md)
    secrets: tuple[str, ...] = attrs.field(default=(), validator=_check(_secrets_problem))
    env: tuple[tuple[str, str], ...] = attrs.field(  # plain settings, sorted pairs (hashable)
        default=(), validator=[_check(_env_problem), _env_not_secret]
    )
    concurrency: int | None = attrs.field(  # per worker; None: the runtime's default
        default=None, validator=_check(_int_range(1, MAX_CONCURRENCY, optional=True))
    )
    max_workers: int | None = attrs.field(  # per function; None: the gateway's setting
        default=None, validator=_check(_int_range(1, MAX_WORKERS, optional=True))
    )
    memory: int = attrs.field(  # MiB of RSS per worker
        default=DEFAULT_MEMORY, validator=_check(_int_range(MIN_MEMORY, MAX_MEMORY))
    )

    @property
    def entry_path(self) -> Path:
        return self.directory / self.entry

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "route": self.route,
            "method": self.method,
            "async": self.is_async,
            "timeout": self.timeout,
            "entry": self.entry,
            "directory": str(self.directory),
            "auth": list(self.auth),
            "secrets": list(self.secrets),
            "env": dict(self.env),
            "concurrency": self.concurrency,
            "max_workers": self.max_workers,
            "memory": self.memory,
        }

    @classmethod
    def from_json(cls, data: Any) -> FunctionSpec:
        """Rebuild from :meth:`to_json` (deployment.json); FieldError names a bad field."""
        if not isinstance(data, dict):
            raise FieldError("function", f"must be a JSON object, got {clip(data)}")
        known = (*KNOWN_FIELDS, "directory")
        for field in known:
            if field not in data and field in REQUIRED_IN_DEPLOYMENT:  # newer ones are optional
                raise FieldError(field, "is missing")
        for field in data:
            if field not in known:
                raise FieldError(shorten(field, 30), "is not a known field")
        if not isinstance(data["directory"], str) or "\x00" in data["directory"]:
            raise FieldError("directory", f"must be a path, got {clip(data['directory'])}")
        try:
            secrets, env = check_env_fields(data.get("secrets", []), data.get("env", {}))
        except EnvFieldError as exc:
            raise FieldError(exc.field, exc.problem) from None
        memory = data.get("memory")  # missing in deployments older than the field
        return cls(
            name=data["name"],
            runtime=data["runtime"],
            route=data["route"],
            method=data["method"],
            directory=Path(data["directory"]),
            entry=data["entry"],
            is_async=data["async"],
            timeout=data["timeout"],
            auth=_auth_tuple(data.get("auth", ["key"])),
            secrets=secrets,
            env=env,
            concurrency=data.get("concurrency"),
            max_workers=data.get("max_workers"),
            memory=DEFAULT_MEMORY if memory is None else memory,
        )


def _auth_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise FieldError("auth", f"must be a list of credentials, got {clip(value)}")
    return tuple(value)


def find_project(start: Path, explicit: Path | None = None) -> Path:
    """The project folder: ``explicit`` if given, else the nearest folder upward holding
    ``functions/`` or ``.flux/``."""
    if explicit is not None:
        if not explicit.is_dir():
            raise ProjectNotFound(f"project folder {explicit} does not exist")
        return explicit.resolve()
    here = start.resolve()
    for folder in (here, *here.parents):
        if (folder / "functions").is_dir() or (folder / ".flux").is_dir():
            return folder
    raise ProjectNotFound(
        f"no Flux project at or above {here} (looked for functions/ or .flux/); "
        "run 'flux init' or pass --project DIR"
    )


def _require_type(file: str, field: str, value: Any, kind: type | tuple[type, ...], label: str):
    # bool is a subclass of int: refuse true/false where a number is asked for.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(file, field, f"must be {label}, got {clip(value)}")
    if not isinstance(value, kind):
        raise ConfigError(file, field, f"must be {label}, got {clip(value)}")
    return value


def _require(file: str, field: str, problem: str | None) -> None:
    if problem is not None:
        raise ConfigError(file, field, problem)


def parse_function(file: Path, raw: bytes, display: str | None = None) -> FunctionSpec:
    """Validate one flux.json's bytes; ``file`` is its path (the function folder is its parent).

    Raises only ConfigError, whatever the bytes (tests/unit/test_hostile_input.py)."""
    shown = display or str(file)
    try:
        data = safe_loads(raw)
    except UnsafeInput as exc:
        raise ConfigError(shown, None, str(exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(shown, None, "must hold a JSON object")
    for field in data:
        if field not in KNOWN_FIELDS:
            hint = _closest(field, KNOWN_FIELDS)
            extra = f" (did you mean '{hint}'?)" if hint else ""
            known = ", ".join(KNOWN_FIELDS)
            raise ConfigError(shown, shorten(field, 30), f"unknown field{extra}; known: {known}")
    if "name" not in data:
        raise ConfigError(shown, "name", "is required")
    name = _require_type(shown, "name", data["name"], str, "a string")
    _require(shown, "name", _name_problem(name))
    if "runtime" not in data:
        raise ConfigError(shown, "runtime", f"is required (one of {', '.join(RUNTIMES)})")
    runtime = _require_type(shown, "runtime", data["runtime"], str, "a string")
    _require(shown, "runtime", _one_of(RUNTIMES)(runtime))
    route = _require_type(shown, "route", data.get("route", f"/{name}"), str, "a string")
    _require(shown, "route", route_problem(route))
    method = _require_type(shown, "method", data.get("method", "POST"), str, "a string")
    _require(shown, "method", _one_of(METHODS)(method))
    is_async = _require_type(shown, "async", data.get("async", False), bool, "true or false")
    timeout = _require_type(shown, "timeout", data.get("timeout", 30), (int, float), "a number")
    _require(shown, "timeout", _timeout_problem(timeout))
    auth = _parse_auth(shown, data.get("auth", "key"))
    concurrency = _optional_int(shown, data, "concurrency", 1, MAX_CONCURRENCY)
    max_workers = _optional_int(shown, data, "max_workers", 1, MAX_WORKERS)
    memory = _optional_int(shown, data, "memory", MIN_MEMORY, MAX_MEMORY) or DEFAULT_MEMORY
    default_entry = DEFAULT_ENTRY[runtime]
    entry = _require_type(shown, "entry", data.get("entry", default_entry), str, "a string")
    _require(shown, "entry", _entry_problem(entry))
    folder = file.parent
    try:
        entry_path = (folder / entry).resolve()
        inside = entry_path.is_relative_to(folder.resolve())
        exists = inside and entry_path.is_file()
    except (OSError, ValueError, RuntimeError):  # a symlink loop, an over-long name
        inside = exists = False
    if not inside:
        raise ConfigError(shown, "entry", f"{clip(entry)} must stay inside the function folder")
    if not exists:
        raise ConfigError(shown, "entry", f"entry file {clip(entry)} does not exist in {folder}")
    secret_names, env = parse_env_fields(shown, data)
    return FunctionSpec(
        name=name,
        runtime=runtime,
        route=route,
        method=method,
        directory=folder.resolve(),
        entry=entry,
        is_async=is_async,
        timeout=float(timeout),
        auth=auth,
        secrets=secret_names,
        env=env,
        concurrency=concurrency,
        max_workers=max_workers,
        memory=memory,
    )


def _optional_int(file: str, data: dict[str, Any], field: str, low: int, high: int) -> int | None:
    if field not in data:
        return None
    value = _require_type(file, field, data[field], int, "an integer")
    if not low <= value <= high:
        raise ConfigError(file, field, f"{value} is out of range ({low}-{high})")
    return value


def _parse_auth(shown: str, value: Any) -> tuple[str, ...]:
    """``"key"``, ``"jwt"`` or a list of both: the credentials the function takes."""
    kinds = [value] if isinstance(value, str) else value
    label = '"key", "jwt" or ["key", "jwt"]'
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise ConfigError(shown, "auth", f"must be {label}, got {json.dumps(value)}")
    for kind in kinds:
        if kind not in AUTH_KINDS:
            raise ConfigError(shown, "auth", f"{kind!r} is not a credential: use {label}")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(shown, "auth", f"names a credential twice: {json.dumps(value)}")
    return tuple(k for k in AUTH_KINDS if k in kinds)


def load_functions(project_dir: Path) -> tuple[FunctionSpec, ...]:
    """Validate every functions/*/flux.json; raise the first ConfigError found.

    Also refuses duplicate names and two functions on one route + method.
    """
    functions_dir = project_dir / "functions"
    if not functions_dir.is_dir():
        raise ConfigError(str(functions_dir), None, "folder does not exist")
    specs: list[FunctionSpec] = []
    for config in sorted(functions_dir.glob("*/flux.json")):
        shown = str(config.relative_to(project_dir))
        try:
            raw = read_regular_file(config, MAX_FLUX_JSON)
        except UnsafeInput as exc:
            raise ConfigError(shown, None, str(exc)) from None
        except OSError as exc:
            raise ConfigError(shown, None, f"cannot read: {exc.strerror}") from None
        specs.append(parse_function(config, raw, shown))
    _check_unique(specs, project_dir)
    return tuple(specs)


def _check_unique(specs: Iterable[FunctionSpec], project_dir: Path) -> None:
    by_name: dict[str, FunctionSpec] = {}
    by_route: dict[tuple[str, str], FunctionSpec] = {}
    for spec in specs:
        shown = _shown(spec, project_dir)
        if spec.name in by_name:
            other = _shown(by_name[spec.name], project_dir)
            raise ConfigError(shown, "name", f"{spec.name!r} is already used by {other}")
        by_name[spec.name] = spec
        key = (spec.method, spec.route)
        if key in by_route:
            other = _shown(by_route[key], project_dir)
            raise ConfigError(
                shown, "route", f"{spec.method} {spec.route} is already served by {other}"
            )
        by_route[key] = spec


def _shown(spec: FunctionSpec, project_dir: Path) -> str:
    config = spec.directory / "flux.json"
    try:
        return str(config.relative_to(project_dir.resolve()))
    except ValueError:
        return str(config)


def _closest(word: str, choices: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None
