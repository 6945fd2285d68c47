"""GCRA limiter semantics (docs/reference.md#rate-limits), driven by a fake clock: no sleeping."""

from __future__ import annotations

import pytest

from fluxgw.ratelimit import (
    PLANS,
    Decision,
    GcraLimiter,
    Plan,
    policy_header,
    ratelimit_header,
)

FREE, PRO, TEAM = PLANS["free"], PLANS["pro"], PLANS["team"]


class FakeClock:
    """Epoch-seconds clock that only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.123) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> GcraLimiter:
    return GcraLimiter(clock)


def drain(limiter: GcraLimiter, plan: Plan, key: str = "k") -> int:
    """Send requests at one instant until refused; return how many were admitted."""
    admitted = 0
    while limiter.check(key, plan).allowed:
        admitted += 1
        assert admitted <= plan.burst
    return admitted


def test_plans_table():
    assert (FREE.rate_per_minute, FREE.burst) == (60, 120)
    assert (PRO.rate_per_minute, PRO.burst) == (1_000, 2_000)
    assert (TEAM.rate_per_minute, TEAM.burst) == (10_000, 30_000)
    assert FREE.emission_interval == 1.0
    assert FREE.tolerance == 119.0
    assert PRO.emission_interval == pytest.approx(0.06)
    assert TEAM.tolerance == pytest.approx(29_999 * 0.006)


def test_fresh_free_key_gets_exactly_burst_then_refused(limiter):
    first = limiter.check("k", FREE)
    assert first == Decision(allowed=True, limit=120, remaining=119, retry_after=0, reset=1)
    for expected_remaining in range(118, -1, -1):
        d = limiter.check("k", FREE)
        assert d.allowed and d.remaining == expected_remaining
    refused = limiter.check("k", FREE)
    assert refused == Decision(allowed=False, limit=120, remaining=0, retry_after=1, reset=120)


def test_refill_is_exactly_one_per_second(limiter, clock):
    assert drain(limiter, FREE) == 120
    for _ in range(5):
        clock.advance(0.999_999)
        assert not limiter.check("k", FREE).allowed
        clock.advance(0.000_001)
        assert limiter.check("k", FREE).allowed
        assert not limiter.check("k", FREE).allowed


def test_refused_requests_do_not_consume(limiter, clock):
    drain(limiter, FREE)
    for _ in range(1_000):
        assert not limiter.check("k", FREE).allowed
    clock.advance(1.0)
    assert limiter.check("k", FREE).allowed


def test_retry_after_is_rounded_up_whole_seconds(limiter, clock):
    drain(limiter, FREE)
    clock.advance(0.8)  # 0.2 s left
    assert limiter.check("k", FREE).retry_after == 1
    slow = Plan("slow", 40, 2)  # one request per 1.5 s
    for _ in range(2):
        assert limiter.check("s", slow).allowed
    assert limiter.check("s", slow).retry_after == 2  # 1.5 s -> 2
    clock.advance(1.4)
    assert limiter.check("s", slow).retry_after == 1  # 0.1 s -> 1, never 0
    clock.advance(0.1)
    assert limiter.check("s", slow).allowed


def test_retry_after_is_when_the_next_request_is_admitted(limiter, clock):
    drain(limiter, PRO)
    refused = limiter.check("k", PRO)
    assert refused.retry_after == 1  # 60 ms, rounded up to a whole second
    clock.advance(0.06)
    assert limiter.check("k", PRO).allowed


def test_long_idle_refills_to_exactly_burst(limiter, clock):
    drain(limiter, FREE)
    clock.advance(10 * 24 * 3600)
    assert limiter.peek("k", FREE).remaining == 120
    assert drain(limiter, FREE) == 120


def test_partial_refill(limiter, clock):
    drain(limiter, FREE)
    clock.advance(30.5)
    assert drain(limiter, FREE) == 30


def test_clock_going_backwards_blocks_at_most_one_interval(limiter, clock):
    drain(limiter, FREE)
    clock.advance(-3600)  # NTP step: the stored TAT is now far in the future
    refused = limiter.check("k", FREE)
    assert not refused.allowed and refused.retry_after == 1
    assert refused.reset == 120
    clock.advance(1.0)
    assert limiter.check("k", FREE).allowed
    assert not limiter.check("k", FREE).allowed


def test_plan_upgrade_applies_at_once_with_same_tat(limiter, clock):
    drain(limiter, FREE)  # TAT = now + 120 s
    # pro's bucket also takes 120 s to refill: still drained, but refills every 60 ms
    assert not limiter.check("k", PRO).allowed
    clock.advance(0.06)
    assert limiter.check("k", PRO).allowed
    assert not limiter.check("k", PRO).allowed
    # team's bucket holds 180 s of requests: 60 s of room = 10,000 requests right now
    assert drain(limiter, TEAM) == 10_000


def test_plan_downgrade_clamps_to_a_drained_bucket(limiter, clock):
    assert drain(limiter, TEAM) == 30_000  # TAT = now + 180 s
    refused = limiter.check("k", FREE)
    assert not refused.allowed and refused.retry_after == 1 and refused.reset == 120
    clock.advance(1.0)
    assert limiter.check("k", FREE).allowed


def test_pro_and_team_bursts_and_rates(limiter, clock):
    assert drain(limiter, PRO, "p") == 2_000
    assert drain(limiter, TEAM, "t") == 30_000
    clock.advance(60.0)
    assert drain(limiter, PRO, "p") == 1_000
    assert drain(limiter, TEAM, "t") == 10_000


def test_keys_are_independent(limiter):
    drain(limiter, FREE, "a")
    assert limiter.check("b", FREE).remaining == 119


def test_cost(limiter, clock):
    assert limiter.check("k", FREE, cost=100).remaining == 20
    refused = limiter.check("k", FREE, cost=30)
    assert not refused.allowed and refused.remaining == 20 and refused.retry_after == 10
    with pytest.raises(ValueError):
        limiter.check("k", FREE, cost=121)
    with pytest.raises(ValueError):
        limiter.check("k", FREE, cost=0)


def test_reset_counts_whole_seconds_until_full(limiter, clock):
    limiter.check("k", FREE)
    limiter.check("k", FREE)
    assert limiter.peek("k", FREE).reset == 2
    clock.advance(0.5)
    assert limiter.peek("k", FREE).reset == 2  # 1.5 s rounded up
    clock.advance(1.5)
    assert limiter.peek("k", FREE) == Decision(True, 120, 120, 0, 0)


def test_peek_does_not_consume(limiter):
    assert limiter.peek("k", FREE) == Decision(True, 120, 120, 0, 0)
    drain(limiter, FREE)
    for _ in range(3):
        assert limiter.peek("k", FREE) == Decision(False, 120, 0, 1, 120)


def test_snapshot_restore_continues_exactly(limiter, clock):
    for _ in range(100):
        limiter.check("busy", FREE)
    limiter.check("idle", FREE)
    clock.advance(5.0)  # "idle" is full again: left out of the snapshot
    state = limiter.snapshot()
    assert set(state) == {"busy"}
    restarted = GcraLimiter(clock)
    restarted.restore(state)
    assert drain(restarted, FREE, "busy") == 25
    assert drain(limiter, FREE, "busy") == 25
    clock.advance(1.0)
    assert restarted.check("busy", FREE).allowed
    assert not restarted.check("busy", FREE).allowed


def test_restore_refuses_garbage(limiter):
    with pytest.raises(ValueError):
        limiter.restore({"k": "soon"})
    with pytest.raises(ValueError):
        limiter.restore({"k": float("nan")})


def test_forget_and_prune(limiter, clock):
    drain(limiter, FREE, "a")
    limiter.check("b", FREE)
    limiter.forget("a")
    assert limiter.check("a", FREE).remaining == 119
    clock.advance(2.0)
    limiter.check("c", FREE, cost=10)
    assert limiter.prune() == 2  # "a" and "b" are full again, "c" is not
    assert len(limiter) == 1


def test_headers():
    assert policy_header(FREE) == '"free";q=120;w=120'
    assert policy_header(PRO) == '"pro";q=2000;w=120'
    assert policy_header(TEAM) == '"team";q=30000;w=180'
    assert policy_header(Plan("odd", 7, 3)) == '"odd";q=3;w=26'  # 25.71 s rounded up
    assert ratelimit_header(FREE, Decision(True, 120, 119, 0, 1)) == '"free";r=119;t=1'
    assert ratelimit_header(FREE, Decision(False, 120, 0, 1, 120)) == '"free";r=0;t=120'


def test_plan_validation():
    with pytest.raises(ValueError):
        Plan("free", 0, 10)
    with pytest.raises(ValueError):
        Plan("Bad Name", 10, 10)
