"""What each `flux` command does, on top of the library; cli.py only parses and dispatches."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console import say, warn
from .deploy import Deployment, load_deployment
from .deploy import deploy as deploy_functions
from .errors import FluxError
from .keyfile import create_key, load_records, load_usage, revoke_key
from .printing import print_json, print_table, relative_time
from .ratelimit import PLANS
from .runtime.options import InvalidPoolOptions, PoolOptions
from .settings import load_settings, update_settings
from .state import StateDir
from .store.config import load_store_config

if TYPE_CHECKING:
    from .tls import CertFiles

TEMPLATE = Path(__file__).parent / "templates" / "init"


def init(target: Path) -> int:
    target = target.resolve()
    functions = target / "functions"
    if functions.exists() and any(functions.iterdir()):
        raise FluxError(f"{functions} already exists and is not empty; not overwriting it")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        TEMPLATE, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    ignore_file = target / "gitignore.txt"  # shipped under another name: packaging drops dotfiles
    if (target / ".gitignore").exists():
        ignore_file.unlink()
    else:
        ignore_file.rename(target / ".gitignore")
    state = StateDir(target)
    state.ensure()
    load_settings(state, create=True)
    print(f"Created a Flux project in {target}")
    print(
        "  functions/hello_python (python), functions/hello_node (node), "
        "functions/hello_deno (deno)"
    )
    print(
        "Next: cd into it, then 'flux dev' to serve it, and "
        "'flux api-keys create --name dev' for a key."
    )
    return 0


def print_routes(deployment: Deployment, *, problems: bool = True) -> None:
    from .routing import RouteTable
    from .runtime.discovery import runtime_problem

    table = RouteTable(deployment.functions)
    if not len(table):
        print("(no functions deployed)")
        return
    print_table(("METHOD", "ROUTE", "FUNCTION", "RUNTIME"), [tuple(r) for r in table.rows()])
    if problems:
        for spec in deployment.functions:
            problem = runtime_problem(spec.runtime)
            if problem:
                warn(f"function {spec.name}: {problem}")


def _deploy_and_print(state: StateDir, dotenv: Path | None = None) -> None:
    load_settings(state, create=True)
    deployment = deploy_functions(state, dotenv=dotenv)
    print(f"Deployed version {deployment.version} ({len(deployment.functions)} functions):")
    print_routes(deployment)
    from .auth.commands import deploy_warnings

    for warning in deploy_warnings(state, deployment.functions):
        print(f"warning: {warning}", file=sys.stderr)


def deploy(project_dir: Path, args: argparse.Namespace) -> int:
    _deploy_and_print(StateDir(project_dir))
    return 0


def routes(project_dir: Path, args: argparse.Namespace) -> int:
    deployment = load_deployment(StateDir(project_dir))
    if args.json:
        print_json(deployment.to_json())
        return 0
    if deployment.version == 0:
        print("nothing deployed yet: run 'flux deploy'")
        return 0
    print_routes(deployment, problems=False)
    return 0


def serve(project_dir: Path, args: argparse.Namespace) -> int:
    from .server import ServerConfig, run_server

    if args.workers != 1:
        return _serve_workers(project_dir, args)
    config = ServerConfig(
        project_dir=project_dir,
        host=args.host,
        port=args.port,
        tracing=not args.no_tracing,
        log_requests=args.log_requests or args.log_format is not None,
        log_format=args.log_format or "text",
        loop=args.loop,
        max_connections=args.max_connections,
        reuse_port=args.reuse_port,
        sandbox=not args.no_sandbox,
        pool=pool_options(args),
        tls=tls_options(args),
        **dashboard_options(args),
    )
    if load_deployment(StateDir(project_dir)).version == 0:
        warn(
            "nothing is deployed yet, every route answers 404: run 'flux deploy' "
            "(the gateway picks it up without a restart)"
        )
    return run_server(config)


def _serve_workers(project_dir: Path, args: argparse.Namespace) -> int:
    """`flux serve --workers N`: N processes on one port, sharing the Redis store."""
    from .multiserve import run_workers

    if args.workers < 1:
        raise FluxError("--workers must be at least 1")
    if load_store_config(StateDir(project_dir)).redis is None:
        raise FluxError(
            "--workers needs the Redis store: with files, limits, the queue and key usage "
            "have one owner per folder (flux project update --store redis://HOST:PORT/DB)"
        )
    pool_options(args)  # validated before any process starts
    child = ["--project", str(project_dir), "serve", "--host", args.host, "--loop", args.loop]
    child += ["--max-workers", str(args.max_workers), "--min-workers", str(args.min_workers)]
    child += ["--idle-timeout", str(args.idle_timeout)]
    child += ["--prewarm"] if args.prewarm else []
    child += ["--no-tracing"] if args.no_tracing else []
    return run_workers(child, args.host, args.port, args.workers, project_dir)


def pool_options(args: argparse.Namespace) -> PoolOptions:
    """From `--max-workers`, `--min-workers`, `--idle-timeout`, `--prewarm`."""
    try:
        return PoolOptions(
            max_workers=args.max_workers,
            min_workers=args.min_workers,
            idle_timeout=args.idle_timeout,
            prewarm=args.prewarm,
        )
    except InvalidPoolOptions as exc:
        raise FluxError(str(exc)) from None


def dashboard_options(args: argparse.Namespace) -> dict[str, Any]:
    """ServerConfig fields from `--dashboard-port`, `--no-dashboard`."""
    port = args.dashboard_port
    if port is not None and not 0 <= port <= 65535:
        raise FluxError(f"--dashboard-port {port}: must be 0-65535")
    return {"dashboard": not args.no_dashboard, "dashboard_port": port}


def dashboard(project_dir: Path, args: argparse.Namespace) -> int:
    from .admin.handoff import mint_login

    if not 0 < args.ttl <= 86400:
        raise FluxError("--ttl must be between 0 and 86400 seconds")
    print(mint_login(StateDir(project_dir), args.ttl), flush=True)
    return 0


def tls_options(args: argparse.Namespace) -> CertFiles | None:
    """What to serve HTTPS with, from `--tls` / `--tls-cert` + `--tls-key` (docs/tls.md)."""
    from . import tls

    if (args.tls_cert is None) != (args.tls_key is None):
        raise FluxError("--tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        return tls.check_given(args.tls_cert, args.tls_key)
    if not args.tls:
        return None
    files = tls.local_certificate()
    tls.trust_in_functions(tls.local_function_trust())
    say(f"HTTPS with the flux local CA: curl --cacert {tls.ensure_ca().cert} (or flux tls trust)")
    return files


def tls(args: argparse.Namespace) -> int:
    from . import tls, tls_trust

    ca = tls.ensure_ca()
    if args.tls_command == "ca":
        print(ca.cert)
        return 0
    stores = tuple(args.stores or tls_trust.STORES)
    root, db = tls_trust.system_root(args.system_root), tls_trust.nss_db(args.nss_db)
    change = tls_trust.trust if args.tls_command == "trust" else tls_trust.untrust
    for line in change(ca, stores, root, db):
        print(line)
    return 0


def dev(project_dir: Path, args: argparse.Namespace) -> int:
    from .server import ServerConfig, run_server

    dotenv = project_dir / "functions" / ".env"  # local secrets, over the stored ones
    _deploy_and_print(StateDir(project_dir), dotenv)
    config = ServerConfig(
        project_dir=project_dir,
        host=args.host,
        port=args.port,
        dev=True,
        log_format=args.log_format or "text",
        loop=args.loop,
        max_connections=args.max_connections,
        sandbox=not args.no_sandbox,
        dotenv=dotenv,
        pool=pool_options(args),
        tls=tls_options(args),
        **dashboard_options(args),
    )
    return run_server(config)


def api_keys(project_dir: Path, args: argparse.Namespace) -> int:
    state = StateDir(project_dir)
    if args.key_command == "create":
        settings = load_settings(state, create=True)
        check_functions_exist(state, args.functions)
        key = create_key(
            state,
            settings.project_id,
            name=args.name,
            test=args.test,
            functions=tuple(args.functions),
        )
        print(key, flush=True)  # the only stdout line: KEY=$(flux api-keys create ...) works
        return 0
    if args.key_command == "revoke":
        record = revoke_key(state, args.name)
        print(f"revoked {record.name} ({record.display})", file=sys.stderr)
        return 0
    records = load_records(state)
    usage = load_usage(state)
    if args.json:
        print_json([{**r.to_json(), "last_used": usage.get(r.key_hash)} for r in records])
        return 0
    rows = [
        (
            r.name,
            r.display,
            r.environment,
            relative_time(r.created_at),
            relative_time(usage.get(r.key_hash)),
            ",".join(r.functions) or "all",
            "revoked " + relative_time(r.revoked_at) if r.revoked_at else "active",
        )
        for r in records
    ]
    if not rows:
        print("no keys yet: flux api-keys create --name NAME")
        return 0
    print_table(("NAME", "PREFIX", "ENV", "CREATED", "LAST USED", "FUNCTIONS", "STATUS"), rows)
    return 0


def check_functions_exist(state: StateDir, names: list[str]) -> None:
    if not names:
        return
    known = {spec.name for spec in load_deployment(state).functions}
    source = state.project_dir / "functions"
    known |= {p.parent.name for p in source.glob("*/flux.json")} if source.is_dir() else set()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FluxError(f"--function {unknown[0]!r}: no such function in this project")


def project(project_dir: Path, args: argparse.Namespace) -> int:
    from .auth import commands as auth_commands

    state = StateDir(project_dir)
    if args.project_command == "update":
        tokens = auth_commands.wants_update(args)
        moving = args.store is not None or args.store_fallback is not None
        if args.plan is None and args.cors_origins is None and not tokens and not moving:
            raise FluxError("nothing to update: pass --plan, --cors-origin, --jwt-... or --store")
        if moving:
            from .store.migrate import set_store

            set_store(state, args.store or _current_store_url(state), args.store_fallback)
        if tokens:
            auth_commands.update(state, args)
        if args.plan is not None or args.cors_origins is not None:
            settings = update_settings(state, plan=args.plan, cors_origins=args.cors_origins)
        else:
            settings = load_settings(state, create=True)
    else:
        settings = load_settings(state, create=True)
    plan = PLANS[settings.plan]
    tokens_shown = auth_commands.describe(state)
    if getattr(args, "json", False):
        print_json(
            {
                **settings.to_json(),
                "limits": {"rate_per_minute": plan.rate_per_minute, "burst": plan.burst},
                "jwt": tokens_shown,
                "store": _store_json(state),
            }
        )
        return 0
    print(f"plan:        {plan.name} ({plan.rate_per_minute}/min sustained, burst {plan.burst})")
    origins = ", ".join(settings.cors_origins) or "(none: any origin may call)"
    print(f"cors origins: {origins}")
    for line in auth_commands.show_lines(tokens_shown):
        print(line)
    store = load_store_config(state)
    where = "files (.flux/)" if store.redis is None else store.redis.display
    extra = "" if store.redis is None else f" (fallback: {store.fallback})"
    print(f"store:       {where}{extra}")
    return 0


def _store_json(state: StateDir) -> dict[str, Any]:
    store = load_store_config(state)
    if store.redis is None:
        return {"kind": "files"}
    return {"kind": "redis", "url": store.redis.display, "fallback": store.fallback}


def _current_store_url(state: StateDir) -> str:
    """`--store-fallback` alone keeps the store the project is on."""
    store = load_store_config(state)
    if store.redis is None:
        raise FluxError("--store-fallback applies to the Redis store: pass --store redis://...")
    data = state.read_json(state.root / "store.json")
    return str(data["url"])


def jwt(project_dir: Path, args: argparse.Namespace) -> int:
    from .auth import commands as auth_commands

    return auth_commands.mint(project_dir, args)


def trace(project_dir: Path, args: argparse.Namespace) -> int:
    from .trace_render import render_list, render_trace, trace_to_json
    from .tracestore import TraceStore
    from .tracing import AmbiguousPrefix, TraceNotFound

    state = StateDir(project_dir)
    shared = load_store_config(state)
    store: Any = TraceStore(state.traces_db)
    if shared.redis is not None:  # traces of every instance (docs/redis.md)
        from .store.redis_traces import RedisTraceReader

        store = RedisTraceReader(shared)
    if args.last is not None:
        records = store.last(args.last)
        if args.json:
            print_json([trace_to_json(r) for r in records])
        else:
            print(render_list(records))
        return 0
    if not args.id:
        raise FluxError("give a request id (or a prefix of >= 6 characters), or --last N")
    try:
        record = store.get(args.id)
    except TraceNotFound as exc:
        raise FluxError(str(exc)) from None
    except AmbiguousPrefix as exc:
        from .trace_render import format_time
        from .tracestore import MAX_CANDIDATES

        shown = exc.candidates[:MAX_CANDIDATES]
        lines = [f"prefix {args.id!r} matches several requests; give more characters:"]
        lines += [f"  {c[0]}  {format_time(c[1])}  {c[2]} {c[3]} -> {c[4]}" for c in shown]
        if len(exc.candidates) > len(shown):
            lines.append(f"  ... and more (showing the newest {len(shown)})")
        raise FluxError("\n".join(lines)) from None
    except ValueError as exc:
        raise FluxError(str(exc)) from None
    if args.json:
        print_json(trace_to_json(record))
    else:
        print(render_trace(record))
    return 0


def logs(project_dir: Path, args: argparse.Namespace) -> int:
    from .logs import run_logs

    return run_logs(StateDir(project_dir), args)
