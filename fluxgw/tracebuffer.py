"""What both trace writers share (files: :mod:`fluxgw.tracestore`; Redis:
:mod:`fluxgw.store.redis_traces`): a bounded buffer of pending writes between the request path
and the background writer, and how a queue event becomes a trace update."""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from .jobs import QueueEvent
from .runtime.api import LogLine
from .tracing import Span, log_to_json, queue_event_trace

Item = TypeVar("Item")


class PendingTraces(Generic[Item]):
    """Traces and events recorded but not yet written, oldest first. Past ``max_pending`` the
    oldest are dropped and counted (``flux_traces_dropped_total``), rather than letting a slow
    disk or an absent Redis grow the gateway's memory without end."""

    def __init__(self, *, enabled: bool, max_pending: int, clock: Callable[[], float]) -> None:
        self.enabled = enabled
        self._max_pending = max_pending
        self._clock = clock
        self._pending: collections.deque[Item] = collections.deque()
        self._writing = 0  # items taken from the buffer and being written right now
        self._dropped = 0

    def _push(self, item: Item) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append(item)

    @property
    def backlog(self) -> int:
        """Traces and events recorded but not yet committed."""
        return len(self._pending) + self._writing

    @property
    def dropped(self) -> int:
        """Traces and events lost because the writer fell behind or the store failed."""
        return self._dropped

    def record_queue_event(self, event: QueueEvent) -> None:
        """Add what a dispatcher event tells (:func:`~fluxgw.tracing.queue_event_trace`) to
        its request's trace. O(1), never blocks."""
        if self.enabled:
            state, spans, logs = queue_event_trace(event)
            self.update_async_state(event.job.request_id, state, spans=spans, logs=logs)

    def update_async_state(
        self,
        request_id: str,
        state: str | None,
        *,
        spans: Sequence[Span] = (),
        logs: Sequence[LogLine] = (),
    ) -> None:
        """Add a new async state and/or spans and log lines to a trace already recorded.
        O(1), never blocks."""
        if self.enabled:
            span_values = [s.to_json() for s in spans]
            log_values = [log_to_json(line) for line in logs]
            self._push(self._event_item(request_id, self._clock(), state, span_values, log_values))

    def _event_item(
        self, request_id: str, at: float, state: str | None, spans: list[Any], logs: list[Any]
    ) -> Item:
        """What the writer stores for one event (the subclass's own format)."""
        raise NotImplementedError
