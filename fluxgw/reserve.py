"""Disk space kept in reserve so that a key revocation works on a full disk.

Traces (or anything else) can fill the disk; then writing ``keys.json`` fails with ENOSPC
and a revoked key would stay valid. The running gateway keeps ``.flux/space-reserve``, a
pre-allocated file; a state write that fails for lack of space deletes it and tries once more
(:func:`fluxgw.state.atomic_write_bytes`), which frees more than a keys file needs. The
gateway re-creates the reserve when space is back. The gateway's own periodic writes
(limiter state, key usage) never use it: only `flux` commands do. See docs/limits.md.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

RESERVE_NAME = "space-reserve"
MIN_RESERVE = 4 * 1024 * 1024
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def reserve_size(state_root: Path) -> int:
    """Enough for a new copy of every file a `flux` command writes, twice over."""
    written = 0
    for name in ("keys.json", "project.json", "deployment.json"):
        with contextlib.suppress(OSError):
            written += (state_root / name).stat().st_size
    return max(MIN_RESERVE, 2 * written)


def ensure(state_root: Path) -> bool:
    """Create (or grow) the reserve if it is missing or too small; True if it is in place.

    Blocking (file I/O). A disk too full for it leaves no partial file behind."""
    path = state_root / RESERVE_NAME
    size = reserve_size(state_root)
    try:
        if path.stat().st_size >= size:
            return True
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, size)  # real blocks, not a sparse file
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)


def release(state_root: Path) -> bool:
    """Delete the reserve to make room; True if there was one."""
    try:
        os.unlink(state_root / RESERVE_NAME)
    except OSError:
        return False
    return True
