"""Rate-limit plans and a GCRA limiter with an injected clock (pure: no I/O, no time.time()).

GCRA (the Generic Cell Rate Algorithm) is a token bucket stored as a single number per key, its
*theoretical arrival time* (TAT): the instant at which the bucket will be full again. With
``T = 60 / rate`` (emission interval) and ``burst`` the bucket size, a request of cost ``c`` at
time ``now`` is admitted iff ``max(TAT, now) + c*T - now <= burst*T``; admitting it moves TAT to
``max(TAT, now) + c*T``. A fresh free key (60/min, burst 120) thus gets exactly 120 requests at
once, then one per second. O(1) time and one int per key.

Exactness: times are held as integer microseconds (``round(clock() * 1e6)``), so plan intervals
(1 s, 60 ms, 6 ms) are exact integers and boundaries such as "exactly 1 s later" never depend on
float rounding. A rate that does not divide 60,000,000 µs is rounded to the nearest µs.

The clock is epoch seconds (``time.time``) so a persisted :meth:`GcraLimiter.snapshot` means the
same thing after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs

_US = 1_000_000


@attrs.frozen
class Plan:
    """A project plan: ``rate_per_minute`` sustained, ``burst`` requests at once."""

    name: str = attrs.field(validator=attrs.validators.matches_re(r"[a-z0-9_-]{1,32}"))
    rate_per_minute: int = attrs.field(
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)]
    )
    burst: int = attrs.field(validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)])
    # Derived integers the hot path reads directly (a property would cost a call per request).
    interval_us: int = attrs.field(init=False, eq=False, repr=False)
    window_us: int = attrs.field(init=False, eq=False, repr=False)
    policy_header: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        interval = max(1, round(60 * _US / self.rate_per_minute))
        window = interval * self.burst
        setter = object.__setattr__  # frozen: derived fields are set once, here
        setter(self, "interval_us", interval)
        setter(self, "window_us", window)
        setter(self, "policy_header", f'"{self.name}";q={self.burst};w={-(-window // _US)}')

    @property
    def emission_interval(self) -> float:
        """Seconds between two requests at the sustained rate (60 / rate)."""
        return self.interval_us / _US

    @property
    def tolerance(self) -> float:
        """GCRA's tau: how far ahead of ``now`` TAT may run, ``(burst - 1) * emission_interval``."""
        return (self.burst - 1) * self.interval_us / _US

    @property
    def window(self) -> float:
        """Seconds to refill an empty bucket: ``burst * emission_interval``."""
        return self.window_us / _US


PLANS: dict[str, Plan] = {
    "free": Plan("free", 60, 120),
    "pro": Plan("pro", 1_000, 2_000),
    "team": Plan("team", 10_000, 30_000),
}


@attrs.frozen
class Decision:
    """One rate-limit verdict, with everything the response headers need.

    ``limit`` is the burst; ``remaining`` how many more requests would be admitted right now;
    ``retry_after`` whole seconds (>= 1) until a refused request would be admitted, 0 when
    allowed; ``reset`` whole seconds (rounded up) until the bucket is full again.
    """

    allowed: bool
    limit: int
    remaining: int
    retry_after: int
    reset: int


# attrs' frozen __init__ goes through object.__setattr__ per field (~0.5 µs); the hot path
# fills the slots through their descriptors instead, which is safe because the object is new
# and not yet shared. Decisions stay immutable to everyone else.
_new_decision = object.__new__
_set_allowed = Decision.__dict__["allowed"].__set__
_set_limit = Decision.__dict__["limit"].__set__
_set_remaining = Decision.__dict__["remaining"].__set__
_set_retry_after = Decision.__dict__["retry_after"].__set__
_set_reset = Decision.__dict__["reset"].__set__


def _decision(allowed: bool, limit: int, remaining: int, retry_after: int, reset: int) -> Decision:
    d = _new_decision(Decision)
    _set_allowed(d, allowed)
    _set_limit(d, limit)
    _set_remaining(d, remaining)
    _set_retry_after(d, retry_after)
    _set_reset(d, reset)
    return d


class GcraLimiter:
    """Per-key GCRA state: ``key_id -> TAT`` (integer µs since the epoch) in one dict.

    Not thread-safe by design: the gateway calls it from one trio thread, where ``check`` runs
    without a checkpoint, so limits hold exactly under any number of concurrent requests.
    """

    __slots__ = ("_clock", "_tat")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tat: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._tat)

    def check(self, key_id: str, plan: Plan, cost: int = 1) -> Decision:
        """Admit or refuse one request of ``cost`` for ``key_id`` under ``plan``; O(1).

        A refused request consumes nothing (TAT unchanged). A TAT further ahead than a fully
        drained bucket allows (the clock went backwards, or a bigger plan was downgraded) is
        clamped to ``now + burst*T``, so no key is ever blocked longer than one interval.
        """
        now = round(self._clock() * 1e6)
        interval = plan.interval_us
        window = plan.window_us
        tat = self._tat.get(key_id, now)
        if tat < now:
            tat = now  # idle: the bucket refilled to burst and no further
        elif tat - now > window:
            # Stored at once, even if this request is refused: the clamp forgives, it never
            # consumes, and later checks must measure from the clamped value too.
            tat = self._tat[key_id] = now + window
        if cost == 1:
            new_tat = tat + interval
        else:
            if cost < 1 or cost > plan.burst:
                raise ValueError(f"cost must be between 1 and the burst ({plan.burst})")
            new_tat = tat + cost * interval
        ahead = new_tat - now
        if ahead <= window:
            self._tat[key_id] = new_tat
            return _decision(True, plan.burst, (window - ahead) // interval, 0, -(-ahead // _US))
        # Refused: admitted once TAT has drained to new_tat - window; at least 1 s
        # (docs/reference.md#status-codes).
        wait = ahead - window
        retry_after = -(-wait // _US) or 1
        ahead = tat - now
        return _decision(
            False, plan.burst, (window - ahead) // interval, retry_after, -(-ahead // _US)
        )

    def peek(self, key_id: str, plan: Plan) -> Decision:
        """What the bucket looks like now, without consuming: ``allowed`` says whether a
        request of cost 1 would be admitted; ``remaining`` counts that request too."""
        now = round(self._clock() * 1e6)
        interval = plan.interval_us
        window = plan.window_us
        ahead = min(max(self._tat.get(key_id, now) - now, 0), window)
        wait = ahead + interval - window
        return _decision(
            wait <= 0,
            plan.burst,
            (window - ahead) // interval,
            max(-(-wait // _US), 0),
            -(-ahead // _US),
        )

    def forget(self, key_id: str) -> None:
        """Drop a key's state (it behaves as fresh again), e.g. after the key was revoked."""
        self._tat.pop(key_id, None)

    def snapshot(self) -> dict[str, float]:
        """State worth persisting: keys whose TAT is still ahead of now, as epoch seconds.

        A TAT in the past is equivalent to no state at all (full bucket), so it is left out;
        this also keeps the persisted file from growing with keys that were used once.
        """
        now = round(self._clock() * 1e6)
        return {key: tat / _US for key, tat in self._tat.items() if tat > now}

    def restore(self, state: dict[str, float]) -> None:
        """Load a :meth:`snapshot` (replacing current state for the keys it names)."""
        tats = self._tat
        for key, seconds in state.items():
            if not isinstance(key, str) or isinstance(seconds, bool):
                raise ValueError("rate-limit state must map key ids to epoch seconds")
            if not isinstance(seconds, int | float) or not math.isfinite(seconds):
                raise ValueError(f"rate-limit state for a key is not a number: {seconds!r}")
            tats[key] = round(seconds * 1e6)

    def prune(self) -> int:
        """Drop keys whose bucket is full again (state equivalent to fresh); returns how many."""
        now = round(self._clock() * 1e6)
        stale = [key for key, tat in self._tat.items() if tat <= now]
        for key in stale:
            del self._tat[key]
        return len(stale)


def policy_header(plan: Plan) -> str:
    """``RateLimit-Policy`` value, structured-field form of draft-ietf-httpapi-ratelimit-headers
    (draft-08 and later): ``"free";q=120;w=120``.

    Mapping from the token bucket: the policy item is the plan name; ``q`` (quota) is the burst,
    the most requests a client can send at once; ``w`` (window) is the seconds an empty bucket
    takes to refill, ``burst * 60 / rate``, rounded up. So "q requests per w seconds" is the
    bucket's long-run envelope, and q the instant ceiling.
    """
    return plan.policy_header


def ratelimit_header(plan: Plan, decision: Decision) -> str:
    """``RateLimit`` value: ``"free";r=<remaining>;t=<reset>``.

    ``r`` is how many requests would be admitted right now; ``t`` the whole seconds (rounded up)
    until the bucket is full again, i.e. until the full quota ``q`` is available.
    """
    return f'"{plan.name}";r={decision.remaining};t={decision.reset}'
