"""Where ``keys.json`` and ``project.json`` live when the project's store is Redis.

:class:`fluxgw.state.StateDir` asks :func:`open_documents` once; ``None`` means the files in
``.flux/`` (the default). Otherwise every read and write of those two documents goes here,
through the same validating readers, so `flux api-keys ...` and `flux project ...` behave the
same on both stores (docs/redis.md).

Two implementations of one small interface:

- :class:`RedisCommandDocuments`, for `flux` commands (synchronous code): each call runs one
  short event loop with its own connection; a command makes a handful of calls.
- :class:`CachedDocuments`, for a running gateway: its Redis task keeps the documents and
  their versions in memory (change notices plus a resync every second), so the gateway's
  reloads read memory, never the network, and its change check costs a dict lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio

from .redis_docs import RedisDocuments

if TYPE_CHECKING:
    from ..state import StateDir
    from .config import RedisAddress

COMMAND_BUDGET = 5.0  # s for one command's Redis call
T = TypeVar("T")


class Documents(Protocol):
    label: str  # shown in errors instead of a file path

    def read(self, name: str) -> tuple[int, bytes | None]: ...

    def write(self, name: str, payload: bytes, *, expected: int) -> int: ...


class RedisCommandDocuments:
    def __init__(self, address: RedisAddress, prefix: str) -> None:
        self.address = address
        self.prefix = prefix
        self.label = address.display

    def _run(self, operation: Callable[[RedisDocuments], Awaitable[T]]) -> T:
        import coredis

        async def call() -> T:
            client = coredis.Redis(
                host=self.address.host,
                port=self.address.port,
                db=self.address.db,
                password=self.address.password,
                connect_timeout=COMMAND_BUDGET,
                stream_timeout=COMMAND_BUDGET,
            )
            with anyio.fail_after(COMMAND_BUDGET):
                async with client:
                    return await operation(RedisDocuments(client, self.prefix))

        from ..errors import StateError

        try:
            return anyio.run(call)
        except Exception as exc:  # one line for the user, whatever coredis raised
            raise StateError(
                self.label, f"cannot reach the store ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None

    def read(self, name: str) -> tuple[int, bytes | None]:
        return self._run(lambda docs: docs.read(name))

    def write(self, name: str, payload: bytes, *, expected: int) -> int:
        return self._run(lambda docs: docs.write(name, payload, expected=expected))


class CachedDocuments:
    """The gateway's view: filled by its Redis task, read by reloads (no I/O)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.documents: dict[str, tuple[int, bytes | None]] = {}

    def read(self, name: str) -> tuple[int, bytes | None]:
        return self.documents.get(name, (0, None))

    def write(self, name: str, payload: bytes, *, expected: int) -> int:
        raise RuntimeError("a gateway never writes shared documents (the CLI does)")

    def version(self, name: str) -> int:
        return self.documents.get(name, (0, None))[0]


def open_documents(state: StateDir) -> Documents | None:
    """The project's shared documents, or None for the files store (no store.json)."""
    from .config import load_store_config

    config = load_store_config(state)
    if config.redis is None:
        return None
    return RedisCommandDocuments(config.redis, config.prefix)
