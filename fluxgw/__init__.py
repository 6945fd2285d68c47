"""Flux, a functions gateway. What users may import:

- :mod:`fluxgw.testing`: ``open_gateway``, ``FakeClock``, ``FluxTestGateway`` (and the
  ``flux_gateway`` pytest fixture, registered by the package's pytest plugin);
- :class:`fluxgw.runtime.Response`, what a python handler returns to set status and headers;
- the errors: :class:`FluxError` and its kinds (``ConfigError``, ``StateError``,
  ``ProjectNotFound``), also importable from here.

Everything else is internal and may change. This package is imported inside every python
worker (``from fluxgw.runtime import Response``), so it imports nothing eagerly: the names
below are loaded on first use.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs workers ~20 ms

__all__ = ["ConfigError", "FluxError", "ProjectNotFound", "Response", "StateError"]

if TYPE_CHECKING:
    from typing import Any

    from .errors import ConfigError, FluxError, ProjectNotFound, StateError
    from .runtime import Response


def __getattr__(name: str) -> Any:
    if name == "Response":
        from .runtime import Response

        return Response
    if name in __all__:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'fluxgw' has no attribute {name!r}")
