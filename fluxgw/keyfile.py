"""The keys file (.flux/keys.json, mode 0600): key records, hashes only, never a key.

`flux api-keys create` writes the record durably *before* it prints the key, so a key a user
has seen is always in the file, whatever instant the command is killed at. Last-used times are
written by the gateway to a separate file (key-usage.json) so a running gateway never rewrites
the keys file behind a user's command.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from .errors import FluxError, StateError
from .keys import KeyRecord, display_prefix, generate_key, hash_key
from .state import StateDir

FILE_VERSION = 1


def load_records(state: StateDir) -> list[KeyRecord]:
    data = state.read_json(state.keys_file, default={"version": FILE_VERSION, "keys": []})
    path = str(state.keys_file)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise StateError(path, "is not a keys file (no 'keys' list); left untouched")
    records = []
    for index, item in enumerate(data["keys"]):
        try:
            records.append(KeyRecord.from_json(item))
        except (ValueError, TypeError, KeyError) as exc:
            raise StateError(path, f"key #{index + 1} is invalid ({exc}); left untouched") from None
    return records


def _save(state: StateDir, records: list[KeyRecord]) -> None:
    payload: dict[str, Any] = {
        "version": FILE_VERSION,
        "keys": [record.to_json() for record in records],
    }
    state.write_json(state.keys_file, payload)


def create_key(
    state: StateDir,
    project_id: str,
    *,
    name: str,
    test: bool = False,
    functions: tuple[str, ...] = (),
    now: float | None = None,
) -> str:
    """Create, persist (durably), then return the new key; the caller prints it once."""
    name = name.strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise FluxError("--name must be 1-64 characters without spaces")
    key = generate_key(project_id, test=test)
    record = KeyRecord(
        name=name,
        key_hash=hash_key(key),
        display=display_prefix(key),
        environment="test" if test else "live",
        created_at=time.time() if now is None else now,
        functions=tuple(functions),
    )
    with state.lock():
        records = load_records(state)
        if any(r.name == name and r.revoked_at is None for r in records):
            raise FluxError(f"a key named {name!r} already exists; revoke it or pick another name")
        records.append(record)
        _save(state, records)
    return key


def revoke_key(state: StateDir, name: str, *, now: float | None = None) -> KeyRecord:
    with state.lock():
        records = load_records(state)
        for index, record in enumerate(records):
            if record.name == name and record.revoked_at is None:
                revoked = attrs.evolve(record, revoked_at=time.time() if now is None else now)
                records[index] = revoked
                _save(state, records)
                return revoked
    raise FluxError(f"no active key named {name!r} (see 'flux api-keys list')")


def load_usage(state: StateDir) -> dict[str, float]:
    """Last-used epoch seconds by key hash, as the gateway last saved them."""
    return state.read_epoch_map(state.key_usage_file)
