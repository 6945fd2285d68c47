"""How many workers each function gets: one value, validated once, used everywhere.

The CLI builds it from ``--max-workers``, ``--min-workers``, ``--idle-timeout`` and
``--prewarm``; the server, the gateway, the pool and the test harness take it as is. What each
field means for a user: docs/runtimes.md ("Concurrency and pools").
"""

from __future__ import annotations

import os

import attrs


def default_max_workers() -> int:
    """Workers per function when not configured: one per CPU, at least 2."""
    return max(2, os.cpu_count() or 2)


class InvalidPoolOptions(ValueError):
    """Pool options that cannot work together; the message names the flags to fix."""


@attrs.frozen
class PoolOptions:
    max_workers: int = attrs.field(factory=default_max_workers)  # workers per function
    min_workers: int = 0  # kept warm when idle
    idle_timeout: float = 300.0  # seconds before an idle worker above min_workers stops
    prewarm: bool = False  # start min_workers (at least one) per function on each deploy

    def __attrs_post_init__(self) -> None:
        if self.max_workers < 1 or not 0 <= self.min_workers <= self.max_workers:
            raise InvalidPoolOptions("need --max-workers >= 1 and --min-workers <= --max-workers")
        if not self.idle_timeout > 0:
            raise InvalidPoolOptions("--idle-timeout must be > 0 seconds")


DEFAULT_POOL = PoolOptions()  # the defaults, for CLI help and the test harness
