"""Shared state for several gateways (docs/redis.md): the Redis-backed pieces and the rules
for what happens while Redis is unreachable."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..state import StateDir
    from .backend import RedisBackend


def open_store(
    state: StateDir, *, clock: Callable[[], float], tracing: bool = True
) -> RedisBackend | None:
    """The gateway's shared store per ``.flux/store.json``; None for the files store."""
    from .config import load_store_config

    config = load_store_config(state)
    if config.redis is None:
        return None
    from .backend import RedisBackend  # imports coredis: only for projects on Redis

    return RedisBackend(config, clock=clock, tracing=tracing)
