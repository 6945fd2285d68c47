"""The async job state machine (fluxgw.jobstate.advance): pure, driven by a fake clock."""

from __future__ import annotations

import pytest

from fluxgw.jobs import Job
from fluxgw.jobstate import Backoff, Failed, Interrupted, Started, Succeeded, advance
from fluxgw.runtime.api import Invocation
from fluxgw.testing import FakeClock


def new_job(max_attempts: int = 3, at: float = 1000.0) -> Job:
    invocation = Invocation(request_id="j" * 32, method="POST", path="/jobs", deadline=at + 30)
    return Job(
        "j" * 32, "jobs", invocation, 0, max_attempts, "queued", at,
        None, None, None, None, at, at,
    )  # fmt: skip


def test_success_path() -> None:
    clock = FakeClock(1000.0)
    running = advance(new_job(), Started(), clock())
    assert (running.state, running.attempts, running.updated_at) == ("running", 1, 1000.0)
    clock.advance(2.5)
    done = advance(running, Succeeded(201, (("x", "y"),), b"ok"), clock())
    assert done.state == "succeeded" and done.updated_at == 1002.5
    assert (done.result_status, done.result_headers, done.result_body) == (
        201,
        (("x", "y"),),
        b"ok",
    )
    assert done.error is None and done.attempts == 1


def test_retryable_failures_back_off_exponentially_then_give_up() -> None:
    clock = FakeClock(0.0)
    job = new_job(max_attempts=3, at=0.0)
    backoff = Backoff(base=2.0, cap=60.0)
    delays = []
    for _ in range(2):
        job = advance(job, Started(), clock())
        job = advance(job, Failed("502 crashed", retryable=True), clock(), backoff=backoff)
        assert job.state == "queued" and job.error == "502 crashed"
        delays.append(job.next_run_at - clock())
        clock.set(job.next_run_at)
    assert delays == [2.0, 4.0]  # draw=1.0: no jitter
    job = advance(job, Started(), clock())
    failed = advance(job, Failed("502 crashed", retryable=True), clock(), backoff=backoff)
    assert failed.state == "failed" and failed.attempts == 3
    assert failed.error == "502 crashed (gave up after 3 attempts)"


def test_jitter_scales_the_delay_into_half_to_full() -> None:
    job = advance(new_job(at=0.0), Started(), 0.0)
    low = advance(job, Failed("e", retryable=True), 0.0, backoff=Backoff(4.0), draw=0.0)
    high = advance(job, Failed("e", retryable=True), 0.0, backoff=Backoff(4.0), draw=0.999)
    assert low.next_run_at == 2.0 and high.next_run_at == pytest.approx(4.0, abs=0.01)


def test_backoff_is_capped() -> None:
    assert Backoff(1.0, 60.0).delay(500) == 60.0
    assert Backoff(1.0, 60.0).delay(500, draw=0.0) == 30.0


def test_a_failure_a_retry_cannot_cure_fails_at_once() -> None:
    job = advance(new_job(), Started(), 5.0)
    failed = advance(job, Failed("payload_too_large: 413", retryable=False), 6.0)
    assert failed.state == "failed" and failed.error == "payload_too_large: 413"
    assert failed.attempts == 1


def test_an_interrupted_attempt_does_not_count() -> None:
    job = advance(new_job(), Started(), 5.0)
    back = advance(job, Interrupted(), 7.0)
    assert (back.state, back.attempts, back.updated_at) == ("queued", 0, 7.0)
