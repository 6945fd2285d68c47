"""The :class:`Principal`: who a request is from, whatever credential it carried.

The limiter keys on :attr:`Principal.bucket`, never on the raw credential: a key's bucket is its
SHA-256 hash (as before user tokens existed, so saved limiter state keeps its meaning), a
token's is ``jwt:`` + a digest of its issuer and subject. The two id spaces cannot meet (a key
hash is 64 hex characters without a colon), so a key and a token never share a bucket, and no
subject or issuer is written to the limiter's state file in clear.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from ..keys import KeyRecord
from ..project import AUTH_KINDS  # what a function's flux.json ``auth`` field may name

KEY, JWT = AUTH_KINDS
#: How a message names each kind (and how to send it).
KIND_LABEL = {KEY: "an API key (Bearer flx_...)", JWT: "a user token (Bearer <JWT>)"}


@attrs.frozen
class Principal:
    """The caller, as the authenticate step established it."""

    kind: str  # KEY or JWT
    name: str  # the key's name, or the token's subject (``sub``)
    bucket: str  # rate-limit bucket id
    issuer: str | None = None  # token only: ``iss`` ("" when the token has none)
    scope: tuple[str, ...] = ()  # key only: the functions a scoped key may call; () = all
    kid: str | None = None  # token only: the signing key's id, if the token named one
    key_hash: str | None = None  # key only: for the key's last-used time
    record: KeyRecord | None = attrs.field(default=None, eq=False, repr=False)  # key only
    claims: dict[str, Any] = attrs.field(factory=dict, eq=False)  # token only, verified

    def context(self) -> dict[str, Any]:
        """``ctx.auth`` as the function sees it (python and JS alike)."""
        if self.kind == KEY:
            return {"type": KEY, "key_name": self.name}
        return {"type": JWT, "subject": self.name, "issuer": self.issuer, "claims": self.claims}

    def trace_attributes(self) -> dict[str, Any]:
        """What a trace records about the caller: mode and who, never the credential."""
        if self.kind == KEY:
            return {"mode": KEY, "key": self.name}
        return {"mode": JWT, "subject": self.name, "issuer": self.issuer, "kid": self.kid}


def token_bucket(issuer: str, subject: str) -> str:
    """The rate-limit bucket of a token subject: one per (issuer, subject) pair."""
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:32]
    return f"jwt:{digest}"
