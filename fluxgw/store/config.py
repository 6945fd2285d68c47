"""Which store a project uses: ``.flux/store.json`` (docs/redis.md).

The files store needs no configuration: no ``store.json`` means files. ``flux project update
--store redis://HOST:PORT/DB`` writes ``{"url": ..., "fallback": "local"|"closed"}``; this
file itself always stays in ``.flux/`` because it says where everything else is.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Literal

import attrs

from ..errors import FluxError, StateError
from ..state import StateDir

Fallback = Literal["local", "closed"]
FALLBACKS: tuple[Fallback, ...] = ("local", "closed")
STORE_FILE = "store.json"
NAMESPACE = re.compile(r"[0-9A-Za-z_-]{1,64}")


@attrs.frozen
class RedisAddress:
    host: str
    port: int
    db: int
    password: str | None = attrs.field(default=None, repr=False)  # never printed

    @property
    def display(self) -> str:
        """The URL without its password, for `flux project show` and logs."""
        auth = "***@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


@attrs.frozen
class StoreConfig:
    redis: RedisAddress | None = None  # None: the files store
    fallback: Fallback = "local"
    # Redis keys of this project start with flux:<namespace>: (the project id when it moved
    # to Redis), so several projects can share one Redis database.
    namespace: str = "default"

    @property
    def prefix(self) -> str:
        return f"flux:{self.namespace}:"

    @property
    def kind(self) -> str:
        return "files" if self.redis is None else "redis"

    def to_json(self, url: str | None) -> dict[str, Any]:
        return {"url": url, "fallback": self.fallback, "namespace": self.namespace}


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[:password@]host[:port][/db]`` -> address; FluxError naming what is wrong."""
    shown = url if len(url) <= 80 else url[:77] + "..."
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis":
        raise FluxError(f"--store: {shown!r} is not a redis:// URL (or the word 'files')")
    if not parts.hostname:
        raise FluxError(f"--store: {shown!r} names no host")
    try:
        port = parts.port or 6379
    except ValueError:
        raise FluxError(f"--store: {shown!r} has an invalid port") from None
    path = parts.path.strip("/") or "0"
    if not path.isdigit() or int(path) > 15:
        raise FluxError(f"--store: database must be a number from 0 to 15, not {path[:10]!r}")
    if parts.query or parts.fragment:
        raise FluxError(f"--store: {shown!r} has options this gateway does not read")
    return RedisAddress(parts.hostname, port, int(path), parts.password)


def load_store_config(state: StateDir) -> StoreConfig:
    """The project's store; StateError (naming the file and field) for an invalid file."""
    path = state.root / STORE_FILE
    data = state.read_json(path)
    if data is None:
        return StoreConfig()
    if not isinstance(data, dict):
        raise StateError(str(path), "must be a JSON object; left untouched")
    url, fallback = data.get("url"), data.get("fallback", "local")
    namespace = data.get("namespace", "default")
    if fallback not in FALLBACKS:
        raise StateError(str(path), f"fallback must be 'local' or 'closed', not {fallback!r:.40}")
    if not isinstance(namespace, str) or not NAMESPACE.fullmatch(namespace):
        raise StateError(str(path), "namespace must be 1-64 letters, digits, '_' or '-'")
    if url is None:
        return StoreConfig(fallback=fallback)
    if not isinstance(url, str):
        raise StateError(str(path), "url must be a string")
    try:
        return StoreConfig(parse_redis_url(url), fallback, namespace)
    except FluxError as exc:
        raise StateError(str(path), f"url: {exc}") from None
