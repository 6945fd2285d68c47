"""How the gateway speaks HTTP/2 through hypercorn (docs/tls.md, "HTTP/2").

- Over TLS, ALPN offers ``h2`` and ``http/1.1``: HTTP/2 clients get HTTP/2.
- In cleartext, HTTP/2 "with prior knowledge" (a client that opens with the HTTP/2 preface)
  stays on: proxies and load tools use it, and nothing in front of the gateway can be fooled
  by it.
- The HTTP/1.1 ``Upgrade: h2c`` mechanism is refused (the request is answered over HTTP/1.1,
  as RFC 9110 section 7.8 allows; RFC 9113 deprecated the mechanism). No browser uses it, and
  a proxy that forwards ``Upgrade`` lets a client "smuggle" an HTTP/2 connection past the
  proxy's own rules (h2c smuggling).

hypercorn has no setting for the last point, so :class:`H11Protocol` is subclassed: the
subclass skips hypercorn's upgrade check for a config whose ``h2c_upgrade`` is False and
otherwise behaves exactly as hypercorn's.

:class:`H2Protocol` is subclassed for a hypercorn bug (0.18): DATA for a stream whose answer
was already sent (a 401 or 413 sent before the client finished its body) raised KeyError out
of the connection's task, which under trio ended the whole server. The subclass drops such
DATA (crediting the flow-control window, so the connection goes on) before hypercorn sees it.

Both are installed where hypercorn's connection wrapper looks the classes up.
"""

from __future__ import annotations

from typing import Any

import h2.events
import hypercorn.protocol
from hypercorn.config import Config
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

ALPN = ["h2", "http/1.1"]


class FluxHypercornConfig(Config):
    """hypercorn's Config plus the one switch hypercorn lacks."""

    h2c_upgrade = False


class _H11Protocol(H11Protocol):
    async def _check_protocol(self, event: Any) -> None:
        if not getattr(self.config, "h2c_upgrade", True) and _asks_h2c_upgrade(event.headers):
            return  # answer this request over HTTP/1.1, as if no Upgrade had been sent
        await super()._check_protocol(event)


def _asks_h2c_upgrade(headers: Any) -> bool:
    return any(
        name.lower() == b"upgrade" and value.strip().lower() == b"h2c" for name, value in headers
    )


class _H2Protocol(H2Protocol):
    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One at a time: handling one event can end a stream that a later one refers to.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                continue
            await super()._handle_events([event])
        await self._flush()  # the window updates of dropped DATA


def install() -> None:
    """Make hypercorn's connection wrapper build our protocol classes (idempotent)."""
    hypercorn.protocol.H11Protocol = _H11Protocol  # type: ignore[misc]
    hypercorn.protocol.H2Protocol = _H2Protocol  # type: ignore[misc]
