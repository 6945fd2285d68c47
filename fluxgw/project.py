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

from .errors import ConfigError, ProjectNotFound

RUNTIMES = ("python", "node", "deno")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_ENTRY = {"python": "main.py", "node": "index.js", "deno": "index.ts"}
NAME_PATTERN = re.compile(r"[a-z0-9_-]{1,64}")
# A route is a plain absolute path: no query, no fragment, no whitespace, no dot segments.
ROUTE_PATTERN = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
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
AUTH_KINDS = ("key", "jwt")  # docs/auth.md: the credentials a function may take


@attrs.frozen
class FunctionSpec:
    """One deployed function, as validated from its flux.json."""

    name: str
    runtime: str
    route: str
    method: str
    directory: Path  # absolute path of the function's folder (in the deployment snapshot)
    entry: str
    is_async: bool = False
    timeout: float = 30.0
    auth: tuple[str, ...] = ("key",)  # credentials accepted: "key" and/or "jwt"
    secrets: tuple[str, ...] = ()  # names of stored secrets it receives (docs/secrets.md)
    env: tuple[tuple[str, str], ...] = ()  # plain settings, sorted pairs (hashable)
    concurrency: int | None = None  # per worker; None: the runtime's default
    max_workers: int | None = None  # per function; None: the gateway's setting
    memory: int = DEFAULT_MEMORY  # MiB of RSS per worker

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
    def from_json(cls, data: dict[str, Any]) -> FunctionSpec:
        return cls(
            name=data["name"],
            runtime=data["runtime"],
            route=data["route"],
            method=data["method"],
            directory=Path(data["directory"]),
            entry=data["entry"],
            is_async=bool(data["async"]),
            timeout=float(data["timeout"]),
            auth=tuple(data.get("auth", ("key",))),
            secrets=tuple(data.get("secrets", ())),
            env=tuple(sorted(data.get("env", {}).items())),
            concurrency=data.get("concurrency"),
            max_workers=data.get("max_workers"),
            memory=int(data.get("memory") or DEFAULT_MEMORY),
        )


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
        raise ConfigError(file, field, f"must be {label}, got {json.dumps(value)}")
    if not isinstance(value, kind):
        raise ConfigError(file, field, f"must be {label}, got {json.dumps(value)}")
    return value


def parse_function(file: Path, raw: bytes, display: str | None = None) -> FunctionSpec:
    """Validate one flux.json's bytes; ``file`` is its path (the function folder is its parent)."""
    shown = display or str(file)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = getattr(exc, "msg", str(exc))
        where = (
            f" at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise ConfigError(shown, None, f"invalid JSON{where}: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(shown, None, "must hold a JSON object")
    for field in data:
        if field not in KNOWN_FIELDS:
            hint = _closest(field, KNOWN_FIELDS)
            extra = f" (did you mean '{hint}'?)" if hint else ""
            known = ", ".join(KNOWN_FIELDS)
            raise ConfigError(shown, field, f"unknown field{extra}; known: {known}")
    if "name" not in data:
        raise ConfigError(shown, "name", "is required")
    name = _require_type(shown, "name", data["name"], str, "a string")
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(shown, "name", f"{name!r} must match [a-z0-9_-]{{1,64}}")
    if "runtime" not in data:
        raise ConfigError(shown, "runtime", f"is required (one of {', '.join(RUNTIMES)})")
    runtime = _require_type(shown, "runtime", data["runtime"], str, "a string")
    if runtime not in RUNTIMES:
        raise ConfigError(shown, "runtime", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
    route = _require_type(shown, "route", data.get("route", f"/{name}"), str, "a string")
    if not route.startswith("/"):
        raise ConfigError(shown, "route", f"{route!r} must start with '/'")
    if not ROUTE_PATTERN.fullmatch(route) or "//" in route or "/./" in route or "/../" in route:
        raise ConfigError(shown, "route", f"{route!r} is not a plain URL path")
    if route == RESERVED_PREFIX or route.startswith(RESERVED_PREFIX + "/"):
        raise ConfigError(shown, "route", f"{route!r} is reserved for the gateway (/_flux/...)")
    method = _require_type(shown, "method", data.get("method", "POST"), str, "a string")
    if method not in METHODS:
        raise ConfigError(shown, "method", f"{method!r} is not one of {', '.join(METHODS)}")
    is_async = _require_type(shown, "async", data.get("async", False), bool, "true or false")
    timeout = _require_type(shown, "timeout", data.get("timeout", 30), (int, float), "a number")
    if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        raise ConfigError(
            shown, "timeout", f"{timeout} is out of range ({MIN_TIMEOUT}-{MAX_TIMEOUT} seconds)"
        )
    auth = _parse_auth(shown, data.get("auth", "key"))
    concurrency = _optional_int(shown, data, "concurrency", 1, MAX_CONCURRENCY)
    max_workers = _optional_int(shown, data, "max_workers", 1, MAX_WORKERS)
    memory = _optional_int(shown, data, "memory", MIN_MEMORY, MAX_MEMORY) or DEFAULT_MEMORY
    default_entry = DEFAULT_ENTRY[runtime]
    entry = _require_type(shown, "entry", data.get("entry", default_entry), str, "a string")
    folder = file.parent
    entry_path = (folder / entry).resolve()
    if not entry_path.is_relative_to(folder.resolve()):
        raise ConfigError(shown, "entry", f"{entry!r} must stay inside the function folder")
    if not entry_path.is_file():
        raise ConfigError(shown, "entry", f"entry file {entry!r} does not exist in {folder}")
    from .envspec import parse_env_fields

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
            raw = config.read_bytes()
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
