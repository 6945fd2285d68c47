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
otherwise behaves exactly as hypercorn's. It is installed where hypercorn's connection wrapper
looks the class up, and only changes behaviour for configs that ask for it.
"""

from __future__ import annotations

from typing import Any

import hypercorn.protocol
from hypercorn.config import Config
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


def install() -> None:
    """Make hypercorn's connection wrapper build our HTTP/1.1 protocol (idempotent)."""
    hypercorn.protocol.H11Protocol = _H11Protocol  # type: ignore[misc]
