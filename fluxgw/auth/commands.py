"""The `flux` commands for user tokens: `project update --jwt-*`, what `project show` adds,
and `jwt mint`. cli.py declares the flags; this module does the work."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import FluxError
from ..project import FunctionSpec
from ..state import StateDir
from .config import load_token_settings, update_token_settings
from .mint import mint_for, parse_claims, parse_ttl

JWT_FLAGS = ("jwt_issuer", "jwt_audience", "jwt_jwks_url", "jwt_jwks_file", "jwt_secret_stdin")


def wants_update(args: argparse.Namespace) -> bool:
    """Did `flux project update` get any --jwt-* flag?"""
    return bool(getattr(args, "jwt_clear", False)) or any(
        getattr(args, name, None) not in (None, False) for name in JWT_FLAGS
    )


def update(state: StateDir, args: argparse.Namespace) -> None:
    """Apply the --jwt-* flags of `flux project update`."""
    if args.jwt_clear:
        if any(getattr(args, name) not in (None, False) for name in JWT_FLAGS):
            raise FluxError("--jwt-clear removes the token settings: give it alone")
        update_token_settings(state, clear=True)
        return
    options: dict[str, Any] = {}
    if args.jwt_issuer is not None:
        options["issuer"] = args.jwt_issuer
    if args.jwt_audience is not None:
        options["audience"] = args.jwt_audience
    update_token_settings(
        state,
        jwks_url=args.jwt_jwks_url,
        jwks_file=Path(args.jwt_jwks_file) if args.jwt_jwks_file else None,
        secret=_read_secret() if args.jwt_secret_stdin else None,
        **options,
    )


def deploy_warnings(state: StateDir, functions: Iterable[FunctionSpec]) -> list[str]:
    """Functions taking user tokens in a project that takes none: every token would be
    judged as a key (docs/auth.md), so say it at deploy time."""
    takes_tokens = [spec.name for spec in functions if "jwt" in spec.auth]
    if not takes_tokens or load_token_settings(state) is not None:
        return []
    return [
        f"function {name} takes user tokens, but the project has no token settings "
        "(flux project update --jwt-jwks-url URL or --jwt-secret-stdin)"
        for name in takes_tokens
    ]


def _read_secret() -> bytes:
    """The secret from stdin (one trailing newline dropped), or a prompt on a terminal."""
    if sys.stdin is None:
        raise FluxError("--jwt-secret-stdin: no standard input")
    if sys.stdin.isatty():
        return getpass.getpass("JWT secret (HS256): ").encode()
    secret = sys.stdin.buffer.read()
    for ending in (b"\r\n", b"\n"):
        if secret.endswith(ending):
            return secret[: -len(ending)]
    return secret


def describe(state: StateDir) -> dict[str, Any] | None:
    """The token settings as `flux project show --json` prints them (never the secret)."""
    settings = load_token_settings(state)
    return settings.describe() if settings is not None else None


def show_lines(described: dict[str, Any] | None) -> list[str]:
    """The token lines of `flux project show`."""
    if described is None:
        return ["user tokens: off (flux project update --jwt-jwks-url URL, or --jwt-secret-stdin)"]
    source = described["key_source"]
    keys = {
        "jwks_url": f"key set {described.get('jwks_url')}",
        "jwks_file": f"key set copied from {described.get('jwks_file')} "
        f"(kids: {', '.join(described.get('kids') or []) or '-'})",
        "secret": "HS256 secret (stored in .flux/jwt.json, not shown)",
    }[source]
    return [
        f"user tokens: {keys}",
        f"  issuer:    {described['issuer'] or '(any: not checked)'}",
        f"  audience:  {described['audience'] or '(any: not checked)'}",
    ]


def mint(project_dir: Path, args: argparse.Namespace) -> int:
    """`flux jwt mint`: print a token signed with the project's secret (the only stdout line)."""
    state = StateDir(project_dir)
    settings = load_token_settings(state)
    if settings is None:
        raise FluxError(
            "this project has no token settings: flux project update --jwt-secret-stdin first"
        )
    try:
        token = mint_for(
            settings, args.sub, ttl=parse_ttl(args.ttl), claims=parse_claims(args.claims)
        )
    except ValueError as exc:
        raise FluxError(str(exc)) from None
    print(token, flush=True)
    return 0
