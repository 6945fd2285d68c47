"""How `flux dashboard` hands a fresh login token to the running gateway (docs/dashboard.md).

The gateway writes ``.flux/dashboard.json`` (its dashboard URL and pid) when its listener is
up, and removes it when it stops. `flux dashboard` mints a random token, appends only its
SHA-256 and expiry to ``.flux/dashboard-logins.json`` (0600, atomic, under the project lock)
and prints the URL with the token; the gateway notices the file change within 200 ms and
accepts the token once. The gateway empties the file when it starts, so a login URL never
outlives the gateway it was minted for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Any

from ..errors import FluxError, StateError
from ..state import StateDir
from .security import LOGIN_TTL_S, new_token, token_hash

INFO = "dashboard.json"
LOGINS = "dashboard-logins.json"


def login_url(base: str, token: str) -> str:
    return f"{base}/login?token={token}"


def publish_listener(state: StateDir, url: str) -> None:
    """Gateway side, at start: the URL `flux dashboard` prints, and no pending logins."""
    with state.lock():
        state.write_json(state.root / LOGINS, [])
        state.write_json(state.root / INFO, {"url": url, "pid": os.getpid()})


def withdraw_listener(state: StateDir) -> None:
    """Gateway side, at stop (or with --no-dashboard): nothing to log in to any more."""
    with state.lock():
        for name in (INFO, LOGINS):
            with contextlib.suppress(FileNotFoundError):
                (state.root / name).unlink()


def read_logins(state: StateDir) -> list[tuple[str, float]]:
    """(hash, expires_at) of the tokens `flux dashboard` minted; malformed entries skipped."""
    data = state.read_json(state.root / LOGINS, default=[])
    if not isinstance(data, list):
        return []
    out = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("hash"), str):
            expires = item.get("expires_at")
            if isinstance(expires, int | float):
                out.append((item["hash"], float(expires)))
    return out


def _gateway_running(state: StateDir) -> bool:
    """True while a `flux serve`/`flux dev` holds .flux/gateway.lock (see server.py)."""
    path = state.root / "gateway.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases a lock we got
    return False


def mint_login(state: StateDir, ttl_s: float = LOGIN_TTL_S, now: float | None = None) -> str:
    """CLI side: a fresh one-time login URL for the running gateway's dashboard."""
    if not _gateway_running(state):
        raise FluxError(
            f"no gateway is running for {state.project_dir}: start 'flux serve' or 'flux dev' "
            "(it prints a login URL)"
        )
    info: Any = state.read_json(state.root / INFO)
    if not isinstance(info, dict) or not isinstance(info.get("url"), str):
        raise FluxError("the running gateway serves no dashboard (started with --no-dashboard)")
    token = new_token()
    now = time.time() if now is None else now
    with state.lock():
        try:
            current = [{"hash": h, "expires_at": e} for h, e in read_logins(state) if e > now]
        except StateError:
            current = []  # a corrupt handoff file holds nothing worth keeping
        current.append({"hash": token_hash(token), "expires_at": now + ttl_s})
        state.write_json(state.root / LOGINS, current)
    return login_url(info["url"], token)
