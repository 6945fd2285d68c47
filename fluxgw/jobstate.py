"""An async job's state machine: one pure function, :func:`advance`, and its backoff rules.

    queued --Started--> running --Succeeded--> succeeded
                           |----Failed (retryable, attempts left)--> queued (after a backoff)
                           |----Failed (otherwise)-----------------> failed
                           '----Interrupted (gateway stopped)------> queued (not counted)

The queue (:mod:`fluxgw.queue`) stores whatever :func:`advance` returns; nothing else changes
a job. What users see of it: docs/traces-and-async.md.
"""

from __future__ import annotations

import math

import attrs

from .jobs import Job

RETRY_STATUSES = (502, 503, 504)  # failures a retry may cure (503: no capacity); others fail


@attrs.frozen
class Backoff:
    """Seconds before retry n: ``base * 2**(n-1)``, capped at ``cap``, then scaled by a jitter
    factor in [0.5, 1] (from ``draw`` in [0, 1)), so jobs that failed together do not all
    retry in the same instant."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempts: int, draw: float = 1.0) -> float:
        exponent = min(attempts - 1, 62)  # keep 2**n finite before the cap applies
        return min(self.cap, self.base * math.pow(2, exponent)) * (0.5 + 0.5 * draw)


@attrs.frozen
class Started:
    """The dispatcher claimed the job for an attempt."""


@attrs.frozen
class Succeeded:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@attrs.frozen
class Failed:
    error: str
    retryable: bool  # 502/504 or a bug of ours: a retry may cure it


@attrs.frozen
class Interrupted:
    """The gateway stopped during the attempt: it does not count against max_attempts."""


Outcome = Started | Succeeded | Failed | Interrupted


def advance(
    job: Job, outcome: Outcome, now: float, *, backoff: Backoff = Backoff(), draw: float = 1.0
) -> Job:
    """The job after ``outcome`` happened at ``now`` (epoch seconds)."""
    match outcome:
        case Started():
            return attrs.evolve(job, state="running", attempts=job.attempts + 1, updated_at=now)
        case Succeeded(status, headers, body):
            return attrs.evolve(
                job,
                state="succeeded",
                result_status=status,
                result_headers=headers,
                result_body=body,
                error=None,
                updated_at=now,
            )
        case Failed(error, retryable) if retryable and job.attempts < job.max_attempts:
            delay = backoff.delay(job.attempts, draw)
            return attrs.evolve(
                job, state="queued", next_run_at=now + delay, error=error, updated_at=now
            )
        case Failed(error, retryable):
            if retryable:
                error = f"{error} (gave up after {job.attempts} attempts)"
            return attrs.evolve(job, state="failed", error=error, updated_at=now)
        case Interrupted():
            return attrs.evolve(
                job, state="queued", attempts=max(job.attempts - 1, 0), updated_at=now
            )
    raise TypeError(f"not an outcome: {outcome!r}")
