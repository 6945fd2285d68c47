"""CORS decisions (docs/reference.md#cors)."""

from __future__ import annotations

import pytest

from fluxgw.cors import (
    EXPOSE_HEADERS,
    CorsPolicy,
    is_preflight,
    merge_vary,
    normalize_origin,
    preflight_headers,
    response_headers,
)

APP = "https://app.example.com"
EVIL = "https://evil.example"
OPEN = CorsPolicy()
LISTED = CorsPolicy(allowed_origins=(APP,))


def as_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    names = [n.lower() for n, _ in headers]
    assert len(names) == len(set(names)), f"duplicate header in {headers}"
    return {n.lower(): v for n, v in headers}


@pytest.mark.parametrize(
    ("policy", "origin", "method", "allowed"),
    [
        (OPEN, APP, "GET", True),
        (OPEN, EVIL, "GET", True),
        (OPEN, EVIL, "HEAD", True),
        (OPEN, EVIL, "POST", True),
        (OPEN, "null", "DELETE", True),
        (LISTED, APP, "GET", True),
        (LISTED, EVIL, "GET", True),
        (LISTED, "null", "GET", True),
        (LISTED, APP, "POST", True),
        (LISTED, APP, "DELETE", True),
        (LISTED, EVIL, "POST", False),
        (LISTED, EVIL, "PUT", False),
        (LISTED, EVIL, "PATCH", False),
        (LISTED, EVIL, "DELETE", False),
        (LISTED, "null", "POST", False),
        (LISTED, "https://APP.example.com", "POST", False),  # browsers send lower case
        (LISTED, APP + ":443", "POST", False),
    ],
)
def test_allowlist_matrix(policy, origin, method, allowed):
    headers, decision = response_headers(policy, origin, method)
    got = as_dict(headers)
    assert got["vary"] == "Origin"
    if allowed:
        assert got["access-control-allow-origin"] == origin
        assert got["access-control-expose-headers"] == EXPOSE_HEADERS
        assert "allowed" in decision
    else:
        assert "access-control-allow-origin" not in got
        assert "access-control-expose-headers" not in got
        assert "not in the allowlist" in decision


def test_no_origin_gets_only_vary():
    headers, decision = response_headers(LISTED, None, "POST")
    assert headers == [("Vary", "Origin")]
    assert decision == "no Origin header"


def test_expose_headers_name_the_gateway_fields():
    for name in ("x-request-id", "Retry-After", "RateLimit", "RateLimit-Policy"):
        assert name in EXPOSE_HEADERS.split(", ")


def test_is_preflight():
    full = {"origin": APP, "access-control-request-method": "POST"}
    assert is_preflight("OPTIONS", full)
    assert not is_preflight("OPTIONS", {"origin": APP})
    assert not is_preflight("OPTIONS", {"access-control-request-method": "POST"})
    assert not is_preflight("POST", full)
    raw = [(b"Origin", APP.encode()), (b"Access-Control-Request-Method", b"PUT")]
    assert is_preflight("OPTIONS", raw)
    assert is_preflight("OPTIONS", [("origin", APP), ("access-control-request-method", "GET")])


def test_preflight_allowed_fields():
    headers, decision = preflight_headers(
        LISTED, APP, "POST", "Content-Type, X-Trace, x-trace, Authorization", ("POST",)
    )
    got = as_dict(headers)
    assert got["access-control-allow-origin"] == APP
    assert got["access-control-allow-methods"] == "POST"
    assert got["access-control-allow-headers"] == "authorization, content-type, x-trace"
    assert got["access-control-max-age"] == "600"
    assert got["vary"].split(", ")[0] == "Origin"
    assert "Access-Control-Request-Headers" in got["vary"]
    assert decision.startswith("preflight allowed")


def test_preflight_base_headers_without_request_headers():
    headers, _ = preflight_headers(OPEN, EVIL, "GET", None, ("GET",))
    got = as_dict(headers)
    assert got["access-control-allow-origin"] == EVIL
    assert got["access-control-allow-headers"] == "authorization, content-type"


def test_preflight_disallowed_origin_gets_no_allow_origin():
    headers, decision = preflight_headers(LISTED, EVIL, "POST", None, ("GET", "POST"))
    got = as_dict(headers)
    assert "access-control-allow-origin" not in got
    assert got["access-control-allow-methods"] == "GET"  # what this origin could do
    assert "vary" in got
    assert "not in the allowlist" in decision


def test_preflight_method_not_served_at_path():
    headers, decision = preflight_headers(OPEN, APP, "DELETE", None, ("GET",))
    assert "access-control-allow-origin" not in as_dict(headers)
    assert "not served" in decision
    headers, decision = preflight_headers(OPEN, APP, "HEAD", None, ())
    assert "access-control-allow-origin" not in as_dict(headers)


def test_preflight_without_route_knowledge_uses_policy_only():
    headers, _ = preflight_headers(OPEN, APP, "PATCH", None, None)
    got = as_dict(headers)
    assert got["access-control-allow-origin"] == APP
    assert "PATCH" in got["access-control-allow-methods"]


def test_preflight_refuses_invalid_tokens():
    headers, decision = preflight_headers(OPEN, APP, "POST", "x-ok, bad header", ("POST",))
    assert "access-control-allow-origin" not in as_dict(headers)
    assert "invalid header name" in decision
    headers, decision = preflight_headers(OPEN, APP, "PO ST", None, ("POST",))
    assert "access-control-allow-origin" not in as_dict(headers)


def test_merge_vary_dedups_case_insensitively_keeping_function_values():
    merged = merge_vary(
        [("content-type", "text/plain"), ("Vary", "Accept-Encoding, origin")], ["Origin"]
    )
    assert merged == [("content-type", "text/plain"), ("Vary", "Accept-Encoding, origin")]


def test_merge_vary_joins_several_fields_into_one():
    merged = merge_vary(
        [("vary", "Accept"), ("x-a", "1"), ("VARY", "accept, Cookie")],
        ["Origin", "Access-Control-Request-Method, origin"],
    )
    assert merged == [
        ("Vary", "Accept, Cookie, Origin, Access-Control-Request-Method"),
        ("x-a", "1"),
    ]


def test_merge_vary_adds_when_absent_and_star_wins():
    assert merge_vary([("x", "1")], ["Origin"]) == [("x", "1"), ("Vary", "Origin")]
    assert merge_vary([("Vary", "*")], ["Origin"]) == [("Vary", "*")]
    assert merge_vary([("Vary", "Accept")], ["*"]) == [("Vary", "*")]
    assert merge_vary([("x", "1")], []) == [("x", "1")]
    assert merge_vary([("Vary", " , ")], []) == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://App.Example.COM", "https://app.example.com"),
        ("https://app.example.com/", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://localhost:80", "http://localhost"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("HTTP://127.0.0.1:5173/", "http://127.0.0.1:5173"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("  https://a.example  ", "https://a.example"),
    ],
)
def test_normalize_origin(url, expected):
    assert normalize_origin(url) == expected


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "must be a URL"),
        ("app.example.com", "http:// or https://"),
        ("ftp://app.example.com", "http:// or https://"),
        ("https://app.example.com/path", "no path"),
        ("https://app.example.com?x=1", "no path"),
        ("https://app.example.com#f", "no path"),
        ("https://user:pw@app.example.com", "user name"),
        ("https://app.example.com:99999", "invalid port"),
        ("https://app.example.com:0", "invalid port"),
        ("https://", "no host"),
        ("https://*.example.com", "wildcards"),
        ("*", "wildcards"),
        ("null", "'null'"),
        ("https://bad_host!.example", "invalid host"),
    ],
)
def test_normalize_origin_refuses(url, match):
    with pytest.raises(ValueError, match=match):
        normalize_origin(url)


def test_policy_normalizes_and_dedups_its_allowlist():
    policy = CorsPolicy(allowed_origins=["https://A.example:443/", "https://a.example"])
    assert policy.allowed_origins == ("https://a.example",)
    assert policy == CorsPolicy(allowed_origins=("https://a.example",))
    with pytest.raises(ValueError):
        CorsPolicy(allowed_origins=("not a url",))
