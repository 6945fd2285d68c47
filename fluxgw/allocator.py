"""C allocator settings for a long-running gateway (README, "Limits": memory of the gateway).

glibc's malloc gives each thread that allocates its own arena, up to 8 per CPU, and an arena
keeps the pages it once used. The gateway's threads come and go (anyio's worker threads stop
after 10 s idle; state saving and trace reads start new ones), so under steady load a new
thread now and then took a fresh arena and RSS rose in steps of 2-4 MiB that never came back:
the 10-minute soak grew +7.5 % while Python's own allocated blocks stayed flat. Two arenas
(the main one and one shared by every other thread) keep it flat (BENCHMARKS.md, "Output
flood and soak"); the threads do little besides waiting on SQLite or the disk, so they do not
contend for it. After each periodic garbage collection the gateway also hands the pages that
malloc holds free back to the system (:func:`release_free_memory`), so what RSS shows is what
is in use.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

log = logging.getLogger("fluxgw.allocator")

M_ARENA_MAX = -8  # mallopt parameter, from glibc's <malloc.h>
GATEWAY_ARENAS = 2


def _glibc(name: str) -> Any:
    """The C function ``name`` from the C library already loaded, or None (not glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def limit_malloc_arenas(arenas: int = GATEWAY_ARENAS) -> bool:
    """Cap glibc malloc's arenas for this process; ``False`` where there is no glibc (musl,
    macOS), where this does nothing. Call it before the gateway starts its threads: a thread
    that already has an arena keeps it."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, arenas))
    if not done:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return done


def release_free_memory() -> bool:
    """Return malloc's free pages to the system (glibc ``malloc_trim``): its heaps keep the
    memory of freed blocks, which a burst of requests or a large answer leaves behind. A few
    milliseconds on the gateway's heap; ``False`` without glibc."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
