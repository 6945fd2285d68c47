"""The dashboard's JSON API (docs/dashboard.md#api): the same library calls as the CLI.

Keys go through :mod:`fluxgw.keyfile` (as `flux api-keys`), settings through
:mod:`fluxgw.settings` (as `flux project`), a trace through the trace store (as `flux trace`);
live figures come from the gateway's memory. File work runs in a thread; after a change the
gateway reloads at once, so the new key, revocation or setting is live before the answer.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from ..commands import check_functions_exist
from ..errors import FluxError
from ..keyfile import create_key, load_records, load_usage, revoke_key
from ..ratelimit import PLANS
from ..settings import load_settings, update_settings
from ..trace_render import trace_to_json
from ..tracing import AmbiguousPrefix, TraceNotFound

if TYPE_CHECKING:
    from .app import AdminApp
    from .security import Session

Answer = tuple[int, Any]
JOBS_SHOWN = 100
RECENT_SHOWN = 100


async def handle(
    app: AdminApp,
    session: Session,
    method: str,
    path: str,
    query: Mapping[str, list[str]],
    body: bytes,
) -> Answer:
    parts = path.strip("/").split("/")[1:]  # after "api"
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return _error(400, "bad_json", "the body is not JSON")
    try:
        return await _route(app, session, method, parts, data)
    except FluxError as exc:  # the CLI's one-line errors, as 400s
        return _error(400, "invalid", exc.message)


async def _route(
    app: AdminApp, session: Session, method: str, parts: list[str], data: Any
) -> Answer:
    match method, parts:
        case "GET", ["session"]:
            return 200, {
                "csrf_token": session.csrf,
                "expires_at": session.expires_at,
                "project": str(app.state.project_dir),
            }
        case "GET", ["overview"]:
            series = app.gateway.metrics.series
            return 200, {"points": series.points(), "totals": series.totals()}
        case "GET", ["keys"]:
            return 200, await _keys(app)
        case "POST", ["keys"]:
            return await _create_key(app, data)
        case "POST", ["keys", name, "revoke"]:
            record = await anyio.to_thread.run_sync(revoke_key, app.state, name)
            await app.gateway.reload_now()
            return 200, _key_json(record, None, None)
        case "GET", ["requests"]:
            return 200, await _recent(app)
        case "GET", ["traces", request_id]:
            return await _trace(app, request_id)
        case "GET", ["functions"]:
            return 200, _functions(app)
        case "GET", ["jobs"]:
            jobs = await app.gateway.queue.fetch_recent(JOBS_SHOWN)
            return 200, [_job_json(job) for job in jobs]
        case "GET", ["settings"]:
            return 200, _settings_json(await anyio.to_thread.run_sync(load_settings, app.state))
        case "PUT", ["settings"]:
            return await _update_settings(app, data)
    return _error(404, "not_found", "no such dashboard endpoint")


def _error(status: int, code: str, message: str) -> Answer:
    return status, {"error": code, "message": message}


def _key_json(record: Any, last_used: float | None, remaining: int | None) -> dict[str, Any]:
    out = record.to_json()
    del out["key_hash"]  # nothing the browser needs
    out["last_used"] = last_used
    out["remaining_burst"] = remaining
    return out


async def _keys(app: AdminApp) -> list[dict[str, Any]]:
    records = await anyio.to_thread.run_sync(load_records, app.state)
    usage = {**await anyio.to_thread.run_sync(load_usage, app.state), **app.gateway.key_usage}
    plan = app.gateway.live.plan
    rows = []
    for record in records:
        remaining = (
            None
            if record.revoked_at is not None
            else app.gateway.limiter.peek(record.key_hash, plan).remaining
        )
        rows.append(_key_json(record, usage.get(record.key_hash), remaining))
    return rows


async def _create_key(app: AdminApp, data: Any) -> Answer:
    if not isinstance(data, dict):
        return _error(400, "invalid", "send a JSON object")
    name = data.get("name")
    environment = data.get("environment", "live")
    functions = data.get("functions") or []
    if not isinstance(name, str):
        return _error(400, "invalid", "name is required")
    if environment not in ("live", "test"):
        return _error(400, "invalid", "environment must be 'live' or 'test'")
    if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
        return _error(400, "invalid", "functions must be a list of names")

    def create() -> str:
        check_functions_exist(app.state, functions)
        settings = load_settings(app.state, create=True)
        return create_key(
            app.state,
            settings.project_id,
            name=name,
            test=environment == "test",
            functions=tuple(functions),
        )

    key = await anyio.to_thread.run_sync(create)
    await app.gateway.reload_now()
    return 201, {"key": key, "name": name.strip()}


async def _recent(app: AdminApp) -> list[dict[str, Any]]:
    """The requests page's first rows: the newest traces, as `flux trace --last` lists them
    (read once per page load; the live tail then comes from the event stream)."""
    records = await app.gateway.traces.read_last(RECENT_SHOWN)
    return [
        {
            "request_id": r.request_id,
            "time": r.started_at,
            "method": r.method,
            "path": r.path,
            "status": r.status,
            "duration_ms": round(r.duration_ms, 3),
            "function": r.function,
            "key": r.key_name,
            "error": None,
        }
        for r in records
    ]


async def _trace(app: AdminApp, request_id: str) -> Answer:
    try:
        record = await app.gateway.traces.read(request_id)
    except (TraceNotFound, AmbiguousPrefix) as exc:
        return _error(404, "not_found", exc.message)
    except ValueError as exc:
        return _error(400, "invalid", str(exc))
    return 200, trace_to_json(record)


def _functions(app: AdminApp) -> list[dict[str, Any]]:
    workers = app.gateway.pool.stats()
    summary = app.gateway.metrics.function_summary()
    rows = []
    for spec in app.gateway.live.deployment.functions:
        counts = workers.get(spec.name, {})
        figures = summary.get(spec.name, {})
        rows.append(
            {
                "name": spec.name,
                "route": spec.route,
                "method": spec.method,
                "runtime": spec.runtime,
                "async": spec.is_async,
                "workers_busy": counts.get("busy", 0),
                "workers_idle": counts.get("idle", 0),
                "requests": figures.get("requests", 0),
                "errors": figures.get("errors", 0),
                "p50_ms": figures.get("p50_ms"),
            }
        )
    return rows


def _job_json(job: Any) -> dict[str, Any]:
    return {
        "request_id": job.request_id,
        "function": job.function,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def _settings_json(settings: Any) -> dict[str, Any]:
    plan = PLANS[settings.plan]
    return {
        **settings.to_json(),
        "limits": {"rate_per_minute": plan.rate_per_minute, "burst": plan.burst},
        "plans": list(PLANS),
    }


async def _update_settings(app: AdminApp, data: Any) -> Answer:
    if not isinstance(data, dict):
        return _error(400, "invalid", "send a JSON object")
    plan = data.get("plan")
    origins = data.get("cors_origins")
    if plan is not None and not isinstance(plan, str):
        return _error(400, "invalid", "plan must be a string")
    if origins is not None and (
        not isinstance(origins, list) or not all(isinstance(o, str) for o in origins)
    ):
        return _error(400, "invalid", "cors_origins must be a list of strings")
    # An empty list clears the allowlist, as `flux project update --cors-origin ''` does.
    update = functools.partial(
        update_settings,
        app.state,
        plan=plan,
        cors_origins=None if origins is None else (origins or [""]),
    )
    settings = await anyio.to_thread.run_sync(update)
    await app.gateway.reload_now()
    return 200, _settings_json(settings)
