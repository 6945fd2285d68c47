"""API keys: format, checksum, hashing, and the in-memory KeyStore (pure: no I/O, no clock).

Format (docs/reference.md#keys)::

    flx_live_<tag:6><random:32><checksum:6>      or      flx_test_<...same...>

* ``tag``: the first 6 base62 digits of SHA-256(project_id), so a key names its project
  without a lookup (a key of another project is refused with 403, not 401).
* ``random``: 32 base62 characters from :mod:`secrets`: 32 * log2(62) ~ 190 bits of entropy.
* ``checksum``: CRC32 of everything before it (prefix included), base62, left-padded with '0'
  to 6 characters. A mistyped key is refused before any lookup.

The fixed prefix and shape make a leaked key recognisable by secret scanners with the regex
``flx_(live|test)_[0-9A-Za-z]{44}`` (see :data:`KEY_PATTERN`); the checksum lets a scanner
discard false positives offline.

Keys are stored only as SHA-256 hex digests (right for 190-bit random secrets: no salt or slow
hash is needed) and compared in constant time. No message produced here ever contains a key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import sys
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from .errors import FluxError

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE62_VALUE = {c: i for i, c in enumerate(BASE62)}
PREFIXES = {"live": "flx_live_", "test": "flx_test_"}
PREFIX_LEN = 9
TAG_LEN, RANDOM_LEN, CHECKSUM_LEN = 6, 32, 6
BODY_LEN = TAG_LEN + RANDOM_LEN + CHECKSUM_LEN  # 44
KEY_LEN = PREFIX_LEN + BODY_LEN  # 53
#: What a secret scanner should look for (documented in SECURITY/README as well).
KEY_PATTERN = re.compile(r"flx_(live|test)_[0-9A-Za-z]{44}")
# Explicit ASCII class: str.isalnum() would accept non-ASCII letters and digits.
_BODY_CHARS = re.compile(r"[0-9A-Za-z]*")
_HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
ENVIRONMENTS = ("live", "test")


def _base62(number: int) -> str:
    """Base62 digits of a non-negative integer, most significant first ('0' for zero)."""
    if number == 0:
        return "0"
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(BASE62[rest])
    return "".join(reversed(digits))


def _checksum(text: str) -> str:
    # 62**6 > 2**32, so six digits always suffice.
    return _base62(zlib.crc32(text.encode("ascii"))).rjust(CHECKSUM_LEN, "0")


def project_tag(project_id: str) -> str:
    """The 6-character tag embedded in every key of a project: the leading base62 digits of
    SHA-256(project_id). Stable for the project's lifetime (project_id never changes)."""
    digest = hashlib.sha256(project_id.encode("utf-8")).digest()
    return _base62(int.from_bytes(digest, "big"))[:TAG_LEN]


def generate_key(project_id: str, *, test: bool = False) -> str:
    """A new random key for ``project_id``; shown to the user once, then only its hash is kept."""
    prefix = PREFIXES["test" if test else "live"]
    random_part = "".join(secrets.choice(BASE62) for _ in range(RANDOM_LEN))
    head = prefix + project_tag(project_id) + random_part
    return head + _checksum(head)


class KeyFormatError(Exception):
    """A token that cannot be a Flux key. The message says what is wrong, never echoes it."""


@attrs.frozen
class ParsedKey:
    """What the shape of a well-formed key tells, before any lookup."""

    environment: str  # "live" | "test"
    project_tag: str


def check_format(token: str) -> ParsedKey:
    """Validate prefix, length, alphabet and checksum; raise :class:`KeyFormatError` if any fails.

    Length is checked first so a huge header costs nothing more than ``len()``.
    """
    if len(token) != KEY_LEN:
        raise KeyFormatError(
            f"API key has the wrong length: expected {KEY_LEN} characters, got {len(token)}"
        )
    prefix = token[:PREFIX_LEN]
    if prefix == "flx_live_":
        environment = "live"
    elif prefix == "flx_test_":
        environment = "test"
    else:
        raise KeyFormatError("API key must start with 'flx_live_' or 'flx_test_'")
    if not _BODY_CHARS.fullmatch(token, PREFIX_LEN):
        raise KeyFormatError("API key contains characters outside 0-9, A-Z, a-z")
    split = KEY_LEN - CHECKSUM_LEN
    if not hmac.compare_digest(_checksum(token[:split]), token[split:]):
        raise KeyFormatError("API key checksum does not match (mistyped or truncated key?)")
    return ParsedKey(environment, token[PREFIX_LEN : PREFIX_LEN + TAG_LEN])


def hash_key(key: str) -> str:
    """SHA-256 hex digest of a key: the only form in which a key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    """What ``flux api-keys list`` shows, e.g. ``flx_live_Ab3xYz9Qk2...``.

    The body starts with the project tag, identical for every key of a project, so the shown
    part is the tag plus the first 4 random characters: enough to tell keys apart, a literal
    prefix of the key (the user can match it), and only ~24 of the 190 secret bits.
    """
    return key[: PREFIX_LEN + TAG_LEN + 4] + "..."


# ---------------------------------------------------------------------------------------------
# Records


def _check_hash(_inst: Any, _attr: Any, value: str) -> None:
    if not isinstance(value, str) or not _HASH_PATTERN.fullmatch(value):
        raise ValueError("key_hash must be 64 lower-case hex characters (a SHA-256 digest)")


def _check_environment(_inst: Any, _attr: Any, value: str) -> None:
    if value not in ENVIRONMENTS:
        raise ValueError(f"environment must be 'live' or 'test', got {value!r}")


def _check_name(_inst: Any, _attr: Any, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise ValueError("name must be a non-empty string of at most 128 characters")


def _check_time(_inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if value is None and attr.name == "revoked_at":
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{attr.name} must be a number of epoch seconds, got {value!r}")


def _to_functions(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # a bare string would silently become one-letter names
        raise ValueError("functions must be a list of function names, not a string")
    names = tuple(value)
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError("functions must be a list of non-empty function names")
    # Interned: 100,000 keys scoped to a handful of functions share the strings.
    return tuple(sys.intern(n) for n in names) if names else ()


@attrs.frozen(weakref_slot=False)  # no weakref slot: 8 bytes less on each of ~100,000 records
class KeyRecord:
    """A stored key: its hash and metadata, never the key itself. Slotted: one per key in RAM.

    About 430 bytes per record with both KeyStore indexes (measured: 100,000 records ~ 42 MiB
    of live objects), mostly the 64-character hex hash, the display prefix and the name.
    """

    name: str = attrs.field(validator=_check_name)
    key_hash: str = attrs.field(validator=_check_hash)
    display: str = attrs.field(validator=attrs.validators.instance_of(str))
    environment: str = attrs.field(converter=sys.intern, validator=_check_environment)
    created_at: float = attrs.field(validator=_check_time)
    functions: tuple[str, ...] = attrs.field(default=(), converter=_to_functions)  # () = all
    revoked_at: float | None = attrs.field(default=None, validator=_check_time)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_hash": self.key_hash,
            "display": self.display,
            "environment": self.environment,
            "created_at": self.created_at,
            "functions": list(self.functions),
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> KeyRecord:
        """Rebuild from :meth:`to_json`; corrupt data raises ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"key record must be a JSON object, got {type(data).__name__}")
        label = (
            f"key record {data.get('name')!r}"
            if isinstance(data.get("name"), str)
            else ("key record")
        )
        for field in ("name", "key_hash", "display", "environment", "created_at"):
            if field not in data:
                raise ValueError(f"{label}: missing field {field!r}")
        unknown = set(data) - {f.name for f in attrs.fields(cls)}
        if unknown:
            raise ValueError(f"{label}: unknown field(s) {', '.join(sorted(unknown))}")
        functions = data.get("functions", [])
        if not isinstance(functions, list):
            raise ValueError(f"{label}: 'functions' must be a list")
        if not isinstance(data["environment"], str):
            raise ValueError(f"{label}: 'environment' must be a string")
        try:
            return cls(
                name=data["name"],
                key_hash=data["key_hash"],
                display=data["display"],
                environment=data["environment"],
                created_at=data["created_at"],
                functions=functions,
                revoked_at=data.get("revoked_at"),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{label}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Authentication


@attrs.frozen
class AuthOutcome:
    """Result of :meth:`KeyStore.authenticate` / :meth:`KeyStore.authorize`.

    ``code`` is the docs/reference.md#status-codes error code; ``message`` is human text that never
    contains the key.
    """

    ok: bool
    status: int  # 200, 401 or 403
    code: str
    message: str
    record: KeyRecord | None = None


def _refusal(status: int, code: str, message: str) -> AuthOutcome:
    return AuthOutcome(False, status, code, message, None)


# Refusals carry no per-request data, so they are built once, not per request.
_MISSING = _refusal(401, "missing_key", "missing Authorization header (expected 'Bearer <key>')")
_NOT_BEARER = _refusal(401, "not_bearer", "Authorization header must use the Bearer scheme")
_EMPTY = _refusal(401, "malformed_key", "Authorization header has no key after 'Bearer'")
_WRONG_PROJECT = _refusal(403, "wrong_project", "this API key belongs to another project")
_UNKNOWN = _refusal(401, "unknown_key", "unknown API key")
_REVOKED = _refusal(401, "revoked_key", "this API key has been revoked")


class KeyStoreError(FluxError):
    """A key-management request that cannot be done (name taken, no such key)."""


MAX_KNOWN_KEYS = 10_000  # KeyStore's memo of keys already checked


class KeyStore:
    """All keys of one project, indexed by hash (authentication) and by name (management).

    Mutations are plain in-memory data operations; persisting them is the caller's job.
    """

    __slots__ = ("_active_by_name", "_by_hash", "_known", "project_id", "tag")

    def __init__(self, project_id: str, records: Iterable[KeyRecord] = ()) -> None:
        self.project_id = project_id
        self.tag = project_tag(project_id)
        self._by_hash: dict[str, KeyRecord] = {}
        self._active_by_name: dict[str, KeyRecord] = {}
        # Keys already seen to be well-formed and stored -> their hash: a repeat caller skips
        # the checksum and SHA-256 (~25 % of a refused request's CPU). Only stored keys get in,
        # so garbage cannot fill it; bounded all the same. Revocation is still checked on every
        # request (below), and a reload of keys.json builds a new store, with an empty memo.
        # (str hashing is keyed SipHash: a lookup leaks no timing an attacker can steer.)
        self._known: dict[str, str] = {}
        for record in records:
            self.add(record)

    def __len__(self) -> int:
        return len(self._by_hash)

    def __iter__(self) -> Iterator[KeyRecord]:
        return iter(self._by_hash.values())

    @property
    def records(self) -> list[KeyRecord]:
        """Every record (revoked ones included), oldest first."""
        return sorted(self._by_hash.values(), key=lambda r: (r.created_at, r.name))

    def by_name(self, name: str) -> KeyRecord | None:
        """The active (non-revoked) key with this name, if any."""
        return self._active_by_name.get(name)

    def add(self, record: KeyRecord) -> KeyRecord:
        """Add a record; names are unique among non-revoked keys."""
        if record.key_hash in self._by_hash:
            raise KeyStoreError(f"API key {record.name!r} is already stored (same hash)")
        if not record.revoked:
            if record.name in self._active_by_name:
                raise KeyStoreError(f"an active API key named {record.name!r} already exists")
            self._active_by_name[record.name] = record
        self._by_hash[record.key_hash] = record
        return record

    def authenticate(self, authorization_header: str | None) -> AuthOutcome:
        """Decide on an ``Authorization`` header: 200 with the record, or a 401/403 refusal.

        Cheap checks run first (scheme, shape, checksum, project tag) so garbage never costs a
        hash. The dict lookup is by SHA-256 of the key; the final compare is constant-time.
        """
        header = authorization_header.strip(" \t") if authorization_header else ""
        if not header:
            return _MISSING
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return _NOT_BEARER
        token = token.lstrip(" ")  # RFC 9110: one or more spaces after the scheme
        if not token:
            return _EMPTY
        digest = self._known.get(token)
        if digest is not None:
            record = self._by_hash[digest]
        else:
            try:
                parsed = check_format(token)
            except KeyFormatError as exc:
                return _refusal(401, "malformed_key", str(exc))
            if parsed.project_tag != self.tag:
                return _WRONG_PROJECT
            digest = hash_key(token)
            found = self._by_hash.get(digest)
            if found is None or not hmac.compare_digest(found.key_hash, digest):
                return _UNKNOWN
            record = found
            if len(self._known) >= MAX_KNOWN_KEYS:
                self._known.clear()
            self._known[token] = digest
        if record.revoked_at is not None:
            return _REVOKED
        return AuthOutcome(True, 200, "ok", f"key {record.name!r}", record)

    def authorize(self, record: KeyRecord, function_name: str) -> AuthOutcome:
        """May this (authenticated) key call ``function_name``? Scoped keys list their functions."""
        if record.functions and function_name not in record.functions:
            return _refusal(
                403,
                "key_not_for_function",
                f"API key {record.name!r} is not allowed to call function {function_name!r}",
            )
        return AuthOutcome(True, 200, "ok", f"key {record.name!r}", record)
