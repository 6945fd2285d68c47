"""`flux project update --store ...`: move a project's shared state between stores.

Moving copies the keys, the project settings and the rate-limit buckets (so a move refills
no one), then switches ``.flux/store.json`` with one atomic write: until that write the old
store is the live one, so a failed move changes nothing. Traces and queued async jobs are not
copied (docs/redis.md): a gateway finishes its queued jobs before it is restarted onto the
new store, and old traces stay readable in ``.flux/traces.db``.

Redis -> files copies the documents back and removes ``store.json``. The files left in
``.flux/`` while a project lives in Redis are not read (they are the state as of the move).
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from ..errors import FluxError
from ..state import SHARED_DOCUMENTS, StateDir
from .config import STORE_FILE, RedisAddress, StoreConfig, load_store_config, parse_redis_url
from .documents import COMMAND_BUDGET


def set_store(state: StateDir, target: str, fallback: str | None) -> StoreConfig:
    """Switch the project to ``target`` ("files" or a redis:// URL); returns the new config."""
    current = load_store_config(state)
    if target == "files":
        if current.redis is None:
            if fallback is not None:
                raise FluxError("--store-fallback applies to the Redis store only")
            return current
        _copy_to_files(state, current)
        with state.lock():
            (state.root / STORE_FILE).unlink(missing_ok=True)
        return StoreConfig()
    address = parse_redis_url(target)
    if current.redis is not None:
        if current.redis != address:
            raise FluxError(
                f"the project is on {current.redis.display}; move it to files first "
                "(--store files), then to the new Redis"
            )
        new = StoreConfig(address, fallback or current.fallback, current.namespace)  # type: ignore[arg-type]
    else:
        settings = state.read_json(state.settings_file) or {}
        namespace = settings.get("project_id", "default") if isinstance(settings, dict) else ""
        new = StoreConfig(address, fallback or "local", namespace)  # type: ignore[arg-type]
        _copy_to_redis(state, new)
    with state.lock():
        state.write_json(state.root / STORE_FILE, new.to_json(target))
    state.reset_store()  # later reads in this command go to the new store
    return new


def _files_payloads(state: StateDir) -> dict[str, bytes]:
    found = {}
    for path in (state.root / name for name in SHARED_DOCUMENTS):
        data = state.read_json(path)  # validated as any read; StateError if corrupt
        if data is not None:
            found[path.name] = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    return found


def _copy_to_redis(state: StateDir, config: StoreConfig) -> None:
    assert config.redis is not None
    with state.lock():
        documents = _files_payloads(state)
        buckets = state.read_json(state.ratelimit_file, default={}) or {}

    async def copy(client: Any) -> None:
        from .redis_docs import RedisDocuments
        from .redis_limiter import RedisLimiter

        docs = RedisDocuments(client, config.prefix)
        for name, payload in documents.items():
            version, existing = await docs.read(name)
            if existing is not None and existing != payload:
                raise FluxError(
                    f"{config.redis.display if config.redis else ''} already holds a different "
                    f"{name} for this project (namespace {config.namespace}); nothing was moved"
                )
            if existing is None:
                await docs.write(name, payload, expected=version)
        if isinstance(buckets, dict):
            clean = {k: float(v) for k, v in buckets.items() if isinstance(v, int | float)}
            await RedisLimiter(client, config.prefix).restore(client, clean)

    _with_client(config.redis, copy)


def _copy_to_files(state: StateDir, config: StoreConfig) -> None:
    assert config.redis is not None
    fetched: dict[str, bytes | None] = {}

    async def fetch(client: Any) -> None:
        from .redis_docs import RedisDocuments

        docs = RedisDocuments(client, config.prefix)
        for name in SHARED_DOCUMENTS:
            fetched[name] = (await docs.read(name))[1]

    _with_client(config.redis, fetch)
    files = StateDir(state.project_dir)
    files.documents = None  # write the files themselves, not through the store
    with files.lock():
        for name, payload in fetched.items():
            if payload is not None:
                files.write_json(files.root / name, json.loads(payload))


def _with_client(address: RedisAddress, operation: Any) -> None:
    import coredis

    async def run() -> None:
        client = coredis.Redis(
            host=address.host,
            port=address.port,
            db=address.db,
            password=address.password,
            connect_timeout=COMMAND_BUDGET,
            stream_timeout=COMMAND_BUDGET,
        )
        with anyio.fail_after(COMMAND_BUDGET * 2):
            async with client:
                await operation(client)

    try:
        anyio.run(run)
    except FluxError:
        raise
    except BaseExceptionGroup as group:  # raised inside the client's task group
        mine = group.subgroup(lambda exc: isinstance(exc, FluxError))
        if mine is not None:
            raise mine.exceptions[0] from None
        raise FluxError(
            f"cannot reach {address.display}: {group.exceptions[0]}; nothing was moved"
        ) from None
    except Exception as exc:
        raise FluxError(
            f"cannot reach {address.display}: {type(exc).__name__}: {str(exc)[:200]}; "
            "nothing was moved"
        ) from None
