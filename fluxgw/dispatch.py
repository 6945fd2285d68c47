"""Step 6's translations between HTTP and the runtime: the Invocation a function receives,
and which of a function's response headers may reach the client."""

from __future__ import annotations

import re
import urllib.parse

from .admin.security import without_session_cookies
from .auth.principal import JWT, Principal
from .errors import HttpError
from .httpio import HOP_BY_HOP, Headers, Scope
from .project import FunctionSpec
from .runtime.api import Invocation
from .safeio import clip, shorten
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
# Sent by hypercorn on every answer (Date), or by nobody (Server: the gateway does not
# advertise itself): a function's own would be a second value.
SERVER_OWNED = frozenset({"date", "server"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (§5.5)


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
    frames the response itself; RFC 9110 §7.6.1, including those its Connection names),
    without the fields the gateway or the server own (CORS, rate limit, Date, Server).

    A name that is not an RFC 9110 token, or a value with a control character, would be a
    header injection: the whole answer is refused with 502 ``invalid_response`` and nothing
    of it reaches the client (docs/limits.md)."""
    headers: Headers = []
    dropped = HOP_BY_HOP
    for name, value in pairs:
        problem = header_problem(name, value)
        if problem is not None:
            raise HttpError(502, "invalid_response", f"the function's response {problem}")
        lower = name.lower()
        if lower == "connection":
            named = {token.strip().lower() for token in value.split(",")}
            dropped = dropped | named
    for name, value in pairs:
        lower = name.lower()
        if lower in dropped or lower in SERVER_OWNED or lower.startswith(GATEWAY_OWNED_PREFIXES):
            continue
        headers.append((lower, value))
    return headers


def header_problem(name: object, value: object) -> str | None:
    """Why (name, value) cannot be sent as an HTTP header field, or None."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        return f"header name {clip(name, 40)} is not a valid field name"
    if not isinstance(value, str) or _FORBIDDEN_IN_VALUE.search(value):
        return f"header {shorten(name, 40)} has a control character in its value"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return f"header {shorten(name, 40)} has a character outside Latin-1 in its value"
    return None
