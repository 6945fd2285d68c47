"""Step 6's translations between HTTP and the runtime: the Invocation a function receives,
and which of a function's response headers may reach the client."""

from __future__ import annotations

import urllib.parse

from .admin.security import without_session_cookies
from .auth.principal import JWT, Principal
from .httpio import HOP_BY_HOP, Headers, Scope
from .project import FunctionSpec
from .runtime.api import Invocation
from .tracing import new_traceparent

# Never forwarded from the caller: the key never reaches a function (a verified user token
# does: see build_invocation), and the gateway's own request id and trace context replace
# whatever the client sent.
NOT_FORWARDED = frozenset({"authorization", "x-request-id", "traceparent", "tracestate"})
# Headers a client could forge to pass for the gateway's own: always dropped.
GATEWAY_PREFIX = "x-flux-"
# Owned by the gateway on every answer: a function cannot widen the project's CORS policy
# (an `Access-Control-Allow-Origin: *` of its own would bypass the allowlist, and two values
# make browsers refuse the answer) nor contradict the rate-limit fields.
GATEWAY_OWNED_PREFIXES = ("access-control-", "ratelimit")


def build_invocation(
    *,
    request_id: str,
    method: str,
    path: str,
    headers: dict[str, str],
    scope: Scope,
    spec: FunctionSpec,
    body: bytes,
    now: float,
    principal: Principal | None = None,
) -> Invocation:
    """The invocation for ``spec``: full URL, filtered headers, a fresh W3C traceparent that
    continues the caller's trace (if it sent one), and the function's deadline: ``now`` (epoch
    seconds, the gateway's clock) plus its timeout."""
    traceparent, trace_id = new_traceparent(headers.get("traceparent"))
    query = scope.get("query_string", b"").decode("latin-1")
    host = headers.get("host") or "{}:{}".format(*(scope.get("server") or ("localhost", 80)))
    url = f"{scope.get('scheme', 'http')}://{host}{urllib.parse.quote(path)}"
    if query:
        url += "?" + query
    forwarded = [
        (name, value)
        for name, value in headers.items()
        if name not in NOT_FORWARDED and not name.startswith(GATEWAY_PREFIX)
    ]
    if "cookie" in headers:  # the dashboard's session cookie never reaches a function
        forwarded = [(n, without_session_cookies(v) if n == "cookie" else v) for n, v in forwarded]
        forwarded = [(n, v) for n, v in forwarded if v or n != "cookie"]
    if principal is not None and principal.kind == JWT and "authorization" in headers:
        # the user's token, so the function can call other services on the user's behalf
        forwarded.append(("authorization", headers["authorization"]))
    forwarded += [("x-request-id", request_id), ("traceparent", traceparent)]
    return Invocation(
        request_id=request_id,
        function=spec.name,
        method=method,
        url=url,
        path=path,
        query_string=query,
        headers=tuple(forwarded),
        body=body,
        deadline=now + spec.timeout,
        traceparent=traceparent,
        trace_id=trace_id,
        auth=principal.context() if principal is not None else None,
    )


def function_headers(pairs: tuple[tuple[str, str], ...]) -> Headers:
    """A function's response headers, lower-cased, without hop-by-hop fields (the gateway
    frames the response itself), without the fields the gateway owns (CORS, rate limit) and
    without values that would break the HTTP framing."""
    headers: Headers = []
    for name, value in pairs:
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower.startswith(GATEWAY_OWNED_PREFIXES)
            or not _valid_header(lower, value)
        ):
            continue
        headers.append((lower, value))
    return headers


def _valid_header(name: str, value: str) -> bool:
    if not name or any(c in name for c in " \t\r\n:") or "\r" in value or "\n" in value:
        return False
    try:
        name.encode("ascii")
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
