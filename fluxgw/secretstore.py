"""Stored secrets: ``.flux/secrets.json`` (0600, atomic, under the project lock).

What protects a value at rest is the file's mode (0600, in a 0700 folder): anyone who can read
files as the gateway's user (or root, or a backup of the disk) can read it. See docs/secrets.md.
No function here ever returns a value to be printed: listings carry a short SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .envspec import name_problem, value_problem
from .errors import ConfigError, FluxError, StateError
from .state import StateDir

FILE_NAME = "secrets.json"


@attrs.frozen(repr=False)
class StoredSecret:
    name: str
    value: str
    updated_at: float

    @property
    def digest(self) -> str:
        return digest(self.value)

    def __repr__(self) -> str:  # never show a value, not even in a debugger or a traceback
        return f"StoredSecret({self.name!r}, sha256:{self.digest})"


def digest(value: str) -> str:
    """A short SHA-256 of the value: enough to tell two values apart, never the value."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def secrets_file(state: StateDir) -> Path:
    return state.root / FILE_NAME


def load_secrets(state: StateDir) -> dict[str, StoredSecret]:
    """The stored secrets by name; StateError (naming the file) if the file is invalid."""
    path = secrets_file(state)
    data = state.read_json(path, default={})
    try:
        items = data.get("secrets", {}) if data else {}
        if not isinstance(items, dict):
            raise ValueError("'secrets' must be an object")
        out: dict[str, StoredSecret] = {}
        for name, entry in items.items():
            problem = name_problem(name)
            if problem:
                raise ValueError(problem)
            value, updated = entry["value"], entry["updated_at"]
            if not isinstance(value, str) or value_problem(name, value):
                raise ValueError(f"{name}: invalid value")
            if isinstance(updated, bool) or not isinstance(updated, int | float):
                raise ValueError(f"{name}: invalid updated_at")
            out[name] = StoredSecret(name, value, float(updated))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        problem = f"is not a valid secrets file ({exc}); left untouched"
        raise StateError(str(path), problem) from None
    return out


def current_secrets(state: StateDir, dotenv: Path | None = None) -> dict[str, str]:
    """Name -> value as functions get them: the stored ones, under ``dotenv``'s (flux dev)."""
    values = {name: secret.value for name, secret in load_secrets(state).items()}
    if dotenv is not None and dotenv.is_file():
        try:
            local = read_env_file(dotenv)
            validate(local)
        except FluxError as exc:
            raise StateError(str(dotenv), f"is not usable ({exc.message})") from None
        values.update(local)
    return values


def validate(pairs: Mapping[str, str]) -> None:
    """Raise FluxError (one line, naming the problem, never the value) for a bad pair."""
    for name, value in pairs.items():
        problem = name_problem(name) or value_problem(name, value)
        if problem:
            raise FluxError(problem)


def set_secrets(state: StateDir, pairs: Mapping[str, str], now: float) -> None:
    """Store ``pairs`` (validated first: a refused set writes nothing)."""
    validate(pairs)
    with state.lock():
        current = load_secrets(state)
        for name, value in pairs.items():
            current[name] = StoredSecret(name, value, now)
        _write(state, current)


def unset_secrets(state: StateDir, names: Iterable[str]) -> None:
    with state.lock():
        current = load_secrets(state)
        for name in names:
            if name not in current:
                raise FluxError(f"no secret named {name!r} (flux secrets list shows them)")
            del current[name]
        _write(state, current)


def _write(state: StateDir, secrets: Mapping[str, StoredSecret]) -> None:
    data: dict[str, Any] = {
        "secrets": {
            s.name: {"value": s.value, "updated_at": s.updated_at} for s in secrets.values()
        }
    }
    state.write_json(secrets_file(state), data)


def parse_env_file(text: str, shown: str) -> dict[str, str]:
    """NAME=VALUE pairs of a dotenv file (quotes, ``export``, comments, multi-line values)."""
    from dotenv import dotenv_values

    values = dotenv_values(stream=io.StringIO(text), interpolate=False)
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            raise FluxError(f"{shown}: {name[:40]!r} has no value (expected NAME=VALUE)")
        out[name] = value
    return out


def read_env_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FluxError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_env_file(text, str(path))


def check_declared(
    specs: Iterable[Any], available: Collection[str], *, dev_env: Path | None = None
) -> None:
    """Refuse a deploy whose functions name a secret that is not set, saying how to set it."""
    for spec in specs:
        for name in spec.secrets:
            if name not in available:
                where = f" (or add it to {dev_env})" if dev_env else ""
                raise ConfigError(
                    f"functions/{spec.directory.name}/flux.json",
                    "secrets",
                    f"secret {name} is not set: run 'flux secrets set {name}'{where}",
                )


def affected_functions(
    specs: Iterable[Any], before: Mapping[str, str], after: Mapping[str, str]
) -> set[str]:
    """Names of the functions declaring a secret whose value changed (set, unset, new)."""
    changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    return {spec.name for spec in specs if changed.intersection(spec.secrets)}
