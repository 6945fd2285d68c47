"""Keep the trace store (SQLite) within a size on disk, and give the space back.

Retention by count and age (tracestore.py) does not bound the file: one request's trace can
hold up to a megabyte of log lines, and SQLite never shrinks a file by itself. So the
database runs with ``auto_vacuum = INCREMENTAL`` (free pages can be handed back to the file
system), its WAL file is truncated after checkpoints (``journal_size_limit``), and every
retention pass (about every 5 s) :func:`enforce` deletes the oldest traces when the data
outgrows the cap, then reclaims the free pages. See docs/limits.md ("Trace store").
"""

from __future__ import annotations

import logging
import math
import sqlite3

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
WAL_LIMIT = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
TRIM_AT = 0.9  # of the cap: past it, the oldest traces go...
TRIM_TO = (
    0.7  # ...until the data is back to this share of the cap (room to grow till the next pass)
)


def prepare(conn: sqlite3.Connection) -> None:
    """Before WAL mode and the schema: incremental auto-vacuum, a bounded WAL file.

    A database created before this (auto_vacuum off) is converted once with VACUUM."""
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
    (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
    if mode != 2:  # 2 = INCREMENTAL
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if has_tables:
            conn.execute("VACUUM")  # only a VACUUM applies a new auto_vacuum mode to old data


def used_bytes(conn: sqlite3.Connection) -> tuple[int, int]:
    """(bytes held by data, bytes of free pages) in the main database file."""
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    return (pages - free) * page_size, free * page_size


def enforce(conn: sqlite3.Connection, max_bytes: int) -> int:
    """Delete the oldest traces if the data is over ``TRIM_AT`` of ``max_bytes``, then hand
    free pages back to the file system and truncate the WAL. Returns traces deleted."""
    used, _ = used_bytes(conn)
    deleted = 0
    if used > TRIM_AT * max_bytes:
        (count,) = conn.execute("SELECT count(*) FROM traces").fetchone()
        drop = min(count, max(1, math.ceil(count * (1 - TRIM_TO * max_bytes / used))))
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT started_at FROM traces ORDER BY started_at LIMIT 1 OFFSET ?",
                (drop - 1,),
            ).fetchone()
            if row is not None:
                cursor = conn.execute("DELETE FROM traces WHERE started_at <= ?", (row[0],))
                deleted = cursor.rowcount
                conn.execute(
                    "DELETE FROM trace_events WHERE at <= ? AND request_id NOT IN "
                    "(SELECT request_id FROM traces)",
                    (row[0],),
                )
        log.info(
            "trace store over %.0f MiB: deleted the %d oldest traces", max_bytes / 2**20, deleted
        )
    _, free = used_bytes(conn)
    if free:
        # executescript steps the pragma to the end; execute() would free one page per call
        conn.executescript("PRAGMA incremental_vacuum;")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return deleted
