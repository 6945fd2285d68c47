"""Who is calling: API keys and user tokens (JWT) behind one step (docs/auth.md).

Both credentials end in the same :class:`~fluxgw.auth.principal.Principal`, so the rest of the
pipeline (rate limit, scope check, what the function sees, the trace) never asks which kind it
was given: it reads the principal.
"""

from .principal import AUTH_KINDS, Principal

__all__ = ["AUTH_KINDS", "Principal"]
