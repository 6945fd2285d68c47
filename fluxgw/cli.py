"""The `flux` command: parse arguments, call the library, print. No business logic here.

Errors are one line on stderr and exit 1; usage errors exit 2 (argparse); never a traceback
(set FLUX_DEBUG=1 to see one for an unexpected failure).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import FluxError
from .runtime.options import DEFAULT_POOL

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flux", description="Flux functions gateway")
    parser.add_argument("--project", type=Path, help="project folder (default: found upward)")
    parser.add_argument("--version", action="version", version=f"flux {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create a new project with example functions")
    init.add_argument("dir", nargs="?", type=Path, default=Path("."))

    commands.add_parser("deploy", help="validate functions and make them the live deployment")

    dev = commands.add_parser("dev", help="deploy from source, serve, redeploy on change")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=4000)
    _loop_argument(dev)
    _connections_argument(dev)
    _log_arguments(dev, dev=True)
    _dashboard_arguments(dev)
    _pool_arguments(dev)
    _tls_arguments(dev)

    serve = commands.add_parser("serve", help="serve the live deployment")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    _loop_argument(serve)
    serve.add_argument("--no-tracing", action="store_true", help="record no traces")
    _connections_argument(serve)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N gateway processes on one port (needs the Redis store; docs/redis.md)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    _log_arguments(serve, dev=False)
    _dashboard_arguments(serve)
    _pool_arguments(serve)
    _tls_arguments(serve)
    for parser_ in (dev, serve):
        parser_.add_argument(
            "--no-sandbox",
            action="store_true",
            help="run workers without the bubblewrap sandbox (docs/sandbox.md; prints a warning)",
        )

    from .secretcmd import add_secrets_parser

    add_secrets_parser(commands)

    dashboard = commands.add_parser(
        "dashboard", help="print a fresh login URL for the running gateway's dashboard"
    )
    dashboard.add_argument(
        "--ttl",
        type=float,
        default=900.0,
        metavar="S",
        help="seconds the one-time link stays valid (default 900)",
    )

    routes = commands.add_parser("routes", help="show the routing table")
    routes.add_argument("--json", action="store_true")

    keys = commands.add_parser("api-keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--test", action="store_true", help="a flx_test_ key")
    create.add_argument(
        "--function",
        action="append",
        default=[],
        dest="functions",
        metavar="F",
        help="scope the key to this function (repeatable)",
    )
    listing = key_commands.add_parser("list", help="list keys")
    listing.add_argument("--json", action="store_true")
    revoke = key_commands.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")

    project = commands.add_parser("project", help="project settings")
    project_commands = project.add_subparsers(dest="project_command", required=True)
    update = project_commands.add_parser("update", help="change plan or CORS allowlist")
    update.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="URL",
        help="allowed browser origin for POST/PUT/PATCH/DELETE (repeatable; '' clears)",
    )
    update.add_argument("--plan", choices=("free", "pro", "team"))
    update.add_argument(
        "--store",
        metavar="redis://HOST:PORT/DB|files",
        help="move keys, settings and limits to this store (docs/redis.md)",
    )
    update.add_argument(
        "--store-fallback",
        choices=("local", "closed"),
        help="while Redis is unreachable: limit locally (default) or answer 503",
    )
    _jwt_arguments(update)
    show = project_commands.add_parser("show", help="plan, limits, CORS allowlist")
    show.add_argument("--json", action="store_true")

    jwt = commands.add_parser("jwt", help="user tokens for development (docs/auth.md)")
    jwt_commands = jwt.add_subparsers(dest="jwt_command", required=True, metavar="ACTION")
    mint = jwt_commands.add_parser("mint", help="print a token signed with the project secret")
    mint.add_argument("--sub", required=True, help="the token's subject (user id)")
    mint.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    mint.add_argument("--claim", action="append", default=[], dest="claims", metavar="NAME=VALUE")

    trace = commands.add_parser("trace", help="show a request's trace")
    trace.add_argument("id", nargs="?", help="request id or a unique prefix (>= 6 chars)")
    trace.add_argument("--last", type=int, metavar="N", help="list the N most recent requests")
    trace.add_argument("--json", action="store_true")

    tls = commands.add_parser("tls", help="the local certificate authority (docs/tls.md)")
    tls_commands = tls.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    tls_commands.add_parser("ca", help="print the CA certificate's path (for curl --cacert)")
    for action, text in (("trust", "add the CA to"), ("untrust", "remove the CA from")):
        store = tls_commands.add_parser(action, help=f"{text} the system and NSS stores")
        store.add_argument(
            "--store",
            action="append",
            choices=("system", "nss"),
            dest="stores",
            help="only this store (repeatable; default: both)",
        )
        store.add_argument("--system-root", type=Path, metavar="DIR", help="default /")
        store.add_argument("--nss-db", type=Path, metavar="DIR", help="default ~/.pki/nssdb")

    from .logs import add_arguments as logs_arguments

    logs_arguments(commands.add_parser("logs", help="recent requests and their output"))
    return parser


def _jwt_arguments(parser: argparse.ArgumentParser) -> None:
    """`flux project update`'s user-token settings (docs/auth.md)."""
    group = parser.add_argument_group("user tokens (JWT)")
    group.add_argument("--jwt-issuer", metavar="ISS", help="required 'iss' ('' to unset)")
    group.add_argument("--jwt-audience", metavar="AUD", help="required 'aud' ('' to unset)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--jwt-jwks-url", metavar="URL", help="the provider's key set")
    source.add_argument("--jwt-jwks-file", metavar="FILE", help="a key set, copied in")
    source.add_argument(
        "--jwt-secret-stdin", action="store_true", help="an HS256 secret, read from stdin"
    )
    source.add_argument("--jwt-clear", action="store_true", help="take no user tokens")


def _dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    """The admin listener (docs/dashboard.md)."""
    parser.add_argument(
        "--dashboard-port",
        type=int,
        metavar="PORT",
        help="dashboard port on 127.0.0.1 (default 4001; a free one if 4001 is taken)",
    )
    parser.add_argument("--no-dashboard", action="store_true", help="serve no dashboard")


def _loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=("trio", "asyncio"),
        default="trio",
        help="event loop (default trio; asyncio uses uvloop when installed)",
    )


def _connections_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="concurrent client connections; more get 503 (default 10000, docs/limits.md)",
    )


def _log_arguments(parser: argparse.ArgumentParser, *, dev: bool) -> None:
    """The request log (docs/logs.md): always on in `flux dev`, opt-in in `flux serve`."""
    if not dev:
        parser.add_argument(
            "--log-requests", action="store_true", help="print a line per request (stdout)"
        )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="request lines as text (default) or one JSON object per line"
        + ("" if dev else " (implies --log-requests)"),
    )


def _tls_arguments(parser: argparse.ArgumentParser) -> None:
    """HTTPS and HTTP/2 on the same port (docs/tls.md)."""
    group = parser.add_argument_group("HTTPS")
    group.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a certificate of the local CA"
    )
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve this certificate")
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key")


def _pool_arguments(parser: argparse.ArgumentParser) -> None:
    """Worker pool sizing, per function (docs/runtimes.md)."""

    def count(text: str) -> int:
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
        return value

    group = parser.add_argument_group("worker pool (per function)")
    group.add_argument(
        "--max-workers",
        type=count,
        default=DEFAULT_POOL.max_workers,
        metavar="N",
        help="most workers of one function (default: one per CPU, at least 2, here %(default)s)",
    )
    group.add_argument(
        "--min-workers",
        type=count,
        default=DEFAULT_POOL.min_workers,
        metavar="N",
        help="workers kept warm when idle (default %(default)s)",
    )
    group.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_POOL.idle_timeout,
        metavar="S",
        help="stop a worker idle this many seconds (default %(default)g)",
    )
    group.add_argument(
        "--prewarm",
        action="store_true",
        help="start workers on deploy, so first requests are warm (dev: always)",
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fluxgw")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args) or EXIT_OK
    except FluxError as exc:
        print(f"flux: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug of ours: still one line, unless asked for more
        if os.environ.get("FLUX_DEBUG"):
            raise
        print(f"flux: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    from . import commands

    if args.command == "init":
        return commands.init(args.dir)
    if args.command == "tls":
        return commands.tls(args)
    project_dir = _project(args)
    handler = {
        "deploy": commands.deploy,
        "dev": commands.dev,
        "serve": commands.serve,
        "routes": commands.routes,
        "api-keys": commands.api_keys,
        "project": commands.project,
        "trace": commands.trace,
        "jwt": commands.jwt,
        "logs": commands.logs,
        "dashboard": commands.dashboard,
        "secrets": _secrets,
    }[args.command]
    return handler(project_dir, args)


def _secrets(project_dir: Path, args: argparse.Namespace) -> int:
    from .secretcmd import secrets_command

    return secrets_command(project_dir, args)


def _project(args: argparse.Namespace) -> Path:
    from .project import find_project

    return find_project(Path.cwd(), args.project)


if __name__ == "__main__":
    sys.exit(main())
