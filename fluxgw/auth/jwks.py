"""Key sets (JWKS): parsing, and the cache of one fetched from the identity provider.

Cache rules (docs/auth.md, "Key sets"):

* a fetched set lives for its ``Cache-Control: max-age``, clamped to 5 min - 24 h (5 min when
  the answer names none, or says ``no-cache``/``no-store``);
* a token naming a ``kid`` the set does not hold triggers a refetch, at most once per 30 s
  (a flood of made-up kids costs the provider one request per 30 s);
* a fetch that fails (network, status, bad JSON) keeps the keys already held; a due set is
  tried again after 30 s (5 s while no set was ever fetched);
* each successful fetch replaces the set, so rotation is the provider's publishing: old and new
  kid both verify while both are published.

Fetching uses httpx's async client, which runs on whichever event loop anyio finds (trio or
asyncio) and never blocks it. Concurrent requests that need a fetch share one. Time comes from
the injected clock.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx
import jwt
import orjson

from .jwt_verify import ASYMMETRIC_ALGORITHMS

log = logging.getLogger("fluxgw.auth")

MIN_TTL, MAX_TTL = 5 * 60.0, 24 * 3600.0
REFETCH_INTERVAL = 30.0  # s: at most one fetch per interval, whatever triggers it
FIRST_FETCH_RETRY = 5.0  # s: while no set was ever fetched, retry sooner
FETCH_TIMEOUT = 5.0  # s, the whole fetch
MAX_JWKS_BYTES = 256 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)

KeySet = Mapping[str, jwt.PyJWK]  # kid ("" for a key without one) -> key
Fetch = Callable[[str], Awaitable[tuple[bytes, str | None]]]


class JwksError(Exception):
    """A key set that cannot be used (fetch failed, not a JWKS, no usable key)."""


def parse_jwks(data: Any) -> tuple[dict[str, jwt.PyJWK], list[str]]:
    """Usable signing keys of a JWKS document, by kid, and a note per key left out.

    Kept: public keys for RS256/PS256/ES256/EdDSA (the JWK's ``alg``, or the one its type
    implies). Left out: symmetric (``oct``) keys, which would let a public set verify HS tokens;
    keys marked for encryption (``use: enc``); private keys; anything PyJWT cannot load.
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError('not a JWKS: expected a JSON object with a "keys" list')
    keys: dict[str, jwt.PyJWK] = {}
    skipped: list[str] = []
    for index, entry in enumerate(data["keys"]):
        label = f"key {index}"
        if not isinstance(entry, dict):
            skipped.append(f"{label}: not a JSON object")
            continue
        kid = entry.get("kid", "")
        if not isinstance(kid, str):
            skipped.append(f"{label}: 'kid' is not a string")
            continue
        label = f"key {kid!r}" if kid else label
        if entry.get("kty") == "oct":
            skipped.append(f"{label}: a symmetric key has no place in a public key set")
            continue
        if entry.get("use", "sig") != "sig":
            skipped.append(f"{label}: not a signing key (use={entry.get('use')!r})")
            continue
        if "d" in entry:
            skipped.append(f"{label}: holds private key material ('d')")
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            skipped.append(f"{label}: not a key PyJWT can load")
            continue
        if key.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            skipped.append(f"{label}: algorithm {key.algorithm_name} is not accepted")
            continue
        if kid in keys:
            skipped.append(f"{label}: a second key with this kid")
            continue
        keys[kid] = key
    return keys, skipped


def select_key(keys: KeySet, kid: str | None) -> jwt.PyJWK | None:
    """The key a token's ``kid`` names; a token without one matches a set of exactly one key."""
    if kid is not None:
        return keys.get(kid)
    if len(keys) == 1:
        return next(iter(keys.values()))
    return None


def cache_ttl(cache_control: str | None) -> float:
    """Seconds to keep a fetched set: its max-age clamped to 5 min - 24 h."""
    if not cache_control:
        return MIN_TTL
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return MIN_TTL
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return MIN_TTL
    return min(max(float(match.group(1)), MIN_TTL), MAX_TTL)


async def http_fetch(url: str) -> tuple[bytes, str | None]:
    """GET ``url``: its body (at most 256 KiB) and Cache-Control. Raises JwksError."""
    try:
        with anyio.fail_after(FETCH_TIMEOUT):
            async with (
                httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client,
                client.stream("GET", url, headers={"accept": "application/json"}) as answer,
            ):
                if answer.status_code != 200:
                    raise JwksError(f"{url} answered HTTP {answer.status_code}")
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"{url} sent more than {MAX_JWKS_BYTES // 1024} KiB")
                return bytes(body), answer.headers.get("cache-control")
    except TimeoutError:
        raise JwksError(f"{url} did not answer within {FETCH_TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        raise JwksError(f"{url}: {type(exc).__name__}: {exc}") from None


class JwksCache:
    """The key set at one URL, fetched on demand and cached (see the module docstring)."""

    def __init__(self, url: str, clock: Callable[[], float], fetch: Fetch = http_fetch) -> None:
        self.url = url
        self._clock = clock
        self._fetch = fetch
        self.keys: dict[str, jwt.PyJWK] = {}
        self.expires_at = -math.inf  # when the held set is due for a refetch
        self.last_attempt = -math.inf
        self.last_kid_refetch = -math.inf  # unknown kids: one refetch per REFETCH_INTERVAL
        self.fetches = 0  # attempts made (for tests and the trace)
        self._inflight: anyio.Event | None = None

    @property
    def fetched(self) -> bool:
        return self.expires_at > -math.inf

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for ``kid``, refetching when the set is due or the kid is unknown.

        ``None``: no such key even after a refetch (or a refetch is not allowed yet). Raises
        JwksError only when no set was ever fetched and fetching fails.
        """
        if self._clock() >= self.expires_at and self._may_refresh():
            await self._refresh()
        key = select_key(self.keys, kid)
        if key is None and self.fetched and self._may_refetch_for_kid():
            self.last_kid_refetch = self._clock()
            await self._refresh()
            key = select_key(self.keys, kid)
        if key is None and not self.fetched:
            raise JwksError(f"the key set at {self.url} could not be fetched")
        return key

    def _may_refresh(self) -> bool:
        """A due set is refetched, but after a failed try not before the backoff."""
        wait = REFETCH_INTERVAL if self.fetched else FIRST_FETCH_RETRY
        return self._inflight is not None or self._clock() - self.last_attempt >= wait

    def _may_refetch_for_kid(self) -> bool:
        return self._clock() - self.last_kid_refetch >= REFETCH_INTERVAL

    async def _refresh(self) -> None:
        """One fetch (shared by everyone who asks meanwhile); failures keep the held keys."""
        if self._inflight is not None:
            await self._inflight.wait()
            return
        done = self._inflight = anyio.Event()
        previous_attempt = self.last_attempt
        self.last_attempt = self._clock()
        self.fetches += 1
        try:
            body, cache_control = await self._fetch(self.url)
            keys, skipped = parse_jwks(orjson.loads(body))
            if not keys:
                raise JwksError(f"{self.url} holds no usable signing key ({'; '.join(skipped)})")
            for note in skipped:
                log.info("JWKS %s: left out %s", self.url, note)
            self.keys = keys
            self.expires_at = self._clock() + cache_ttl(cache_control)
        except (JwksError, orjson.JSONDecodeError) as exc:
            held = f"keeping the {len(self.keys)} key(s) held" if self.keys else "no keys held"
            log.warning("could not fetch the token key set: %s; %s", exc, held)
        except anyio.get_cancelled_exc_class():
            self.last_attempt = previous_attempt  # not a real attempt: the next caller tries
            raise
        finally:
            self._inflight = None
            done.set()
