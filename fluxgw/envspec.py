"""Environment variable names and flux.json's ``secrets`` / ``env`` fields (docs/secrets.md).

One rule for every name a function can receive, whether a stored secret or a plain setting:
``[A-Z_][A-Z0-9_]*``, at most 128 characters, not ``FLUX_*`` (the gateway's own), and none of
the names the worker launcher sets itself (a function cannot move its PATH or HOME).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import ConfigError

NAME_PATTERN = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
MAX_VALUE_BYTES = 64 * 1024
MAX_NAMES = 100  # per function, secrets and env together
# Set by the worker launcher (fluxgw/runtime/sandbox.py); a function cannot override them.
RESERVED_NAMES = frozenset(
    {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ", "NO_COLOR", "DENO_DIR"}
    | {"DENO_NO_UPDATE_CHECK", "DENO_NO_PROMPT"}
)


def name_problem(name: str) -> str | None:
    """None if ``name`` may be a function's environment variable, else why not."""
    if not NAME_PATTERN.fullmatch(name):
        return f"{name[:40]!r} is not a valid name ([A-Z_][A-Z0-9_]*, up to 128 characters)"
    if name.startswith("FLUX_"):
        return f"{name!r}: names starting with FLUX_ are reserved for the gateway"
    if name in RESERVED_NAMES:
        return f"{name!r} is set by the gateway for every worker and cannot be overridden"
    return None


def value_problem(name: str, value: str) -> str | None:
    """None if ``value`` can be stored and passed as an environment variable."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        return f"the value of {name} is larger than 64 KiB"
    if "\0" in value:
        return f"the value of {name} contains a NUL character (not allowed in the environment)"
    return None


class EnvFieldError(ValueError):
    """``secrets`` or ``env`` is invalid; ``field`` is its flux.json name (``env.NAME``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}")
        self.field = field
        self.problem = problem


def parse_env_fields(
    shown: str, data: dict[str, Any]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Validated ``secrets`` (names, sorted) and ``env`` (sorted pairs) of one flux.json."""
    try:
        return check_env_fields(data.get("secrets", []), data.get("env", {}))
    except EnvFieldError as exc:
        raise ConfigError(shown, exc.field, exc.problem) from None


def check_env_fields(
    raw_secrets: Any, raw_env: Any
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``secrets`` (a list of names) and ``env`` (an object of NAME: value) as JSON gives them,
    validated: sorted names and sorted pairs, or EnvFieldError. flux.json and deployment.json
    (read back by the gateway) go through this one rule."""
    if not isinstance(raw_secrets, list):
        raise EnvFieldError("secrets", f"must be a list of names, got {_short(raw_secrets)}")
    secrets: list[str] = []
    for name in raw_secrets:
        if not isinstance(name, str):
            raise EnvFieldError("secrets", f"must hold names (strings), got {_short(name)}")
        problem = name_problem(name)
        if problem:
            raise EnvFieldError("secrets", problem)
        secrets.append(name)
    if not isinstance(raw_env, dict):
        raise EnvFieldError("env", f"must be an object of NAME: value, got {_short(raw_env)}")
    env: list[tuple[str, str]] = []
    for name, value in raw_env.items():
        problem = name_problem(name)
        if problem:
            raise EnvFieldError("env", problem)
        if not isinstance(value, str):
            raise EnvFieldError(f"env.{name}", f"must be a string, got {_short(value)}")
        problem = value_problem(name, value)
        if problem:
            raise EnvFieldError(f"env.{name}", problem)
        if name in secrets:
            raise EnvFieldError(f"env.{name}", f"{name} is also listed in secrets")
        env.append((name, value))
    if len(set(secrets)) + len(env) > MAX_NAMES:
        raise EnvFieldError("env", f"at most {MAX_NAMES} secrets and env names in all")
    return tuple(sorted(set(secrets))), tuple(sorted(env))


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
