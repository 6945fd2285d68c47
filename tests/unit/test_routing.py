"""RouteTable: exact (method, path) lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxgw.project import FunctionSpec
from fluxgw.routing import NO_ROUTE, RouteTable


def spec(name: str, route: str, method: str = "POST", **kw) -> FunctionSpec:
    return FunctionSpec(
        name=name,
        runtime=kw.pop("runtime", "python"),
        route=route,
        method=method,
        directory=Path("/tmp"),
        entry="main.py",
        **kw,
    )


@pytest.fixture
def table() -> RouteTable:
    return RouteTable(
        [
            spec("create_order", "/create_order", runtime="deno"),
            spec("get_order", "/orders/get", "GET"),
            spec("update_order", "/orders/get", "PUT", is_async=True),
            spec("delete_order", "/orders/get", "DELETE", runtime="node"),
        ]
    )


def test_lookup_hits(table):
    match = table.lookup("POST", "/create_order")
    assert match.found and match.spec.name == "create_order"
    assert match.allowed_methods == ("POST",)
    match = table.lookup("PUT", "/orders/get")
    assert match.spec.name == "update_order"
    assert match.allowed_methods == ("GET", "PUT", "DELETE")


def test_lookup_misses(table):
    assert table.lookup("POST", "/nope") is NO_ROUTE
    assert table.lookup("POST", "/nope").allowed_methods == ()
    for path in ("/create_order/", "/Create_Order", "/create_order?x=1", "create_order", ""):
        assert not table.lookup("POST", path).found, path


def test_method_mismatch_reports_served_methods(table):
    match = table.lookup("POST", "/orders/get")
    assert match.spec is None
    assert match.allowed_methods == ("GET", "PUT", "DELETE")
    assert not table.lookup("get", "/orders/get").found  # methods are case-sensitive


def test_head_is_not_mapped_to_get(table):
    match = table.lookup("HEAD", "/orders/get")
    assert not match.found and "GET" in match.allowed_methods


def test_methods_for_by_name_len(table):
    assert table.methods_for("/orders/get") == ("GET", "PUT", "DELETE")
    assert table.methods_for("/missing") == ()
    assert table.by_name("get_order").route == "/orders/get"
    assert table.by_name("missing") is None
    assert len(table) == 4
    assert len(RouteTable([])) == 0


def test_rows_sorted_for_printing(table):
    assert table.rows() == [
        ("POST", "/create_order", "create_order", "deno"),
        ("GET", "/orders/get", "get_order", "python"),
        ("PUT", "/orders/get", "update_order", "python async"),
        ("DELETE", "/orders/get", "delete_order", "node"),
    ]


def test_duplicates_are_refused():
    with pytest.raises(ValueError, match="both"):
        RouteTable([spec("a", "/x"), spec("b", "/x")])
    with pytest.raises(ValueError, match="named"):
        RouteTable([spec("a", "/x"), spec("a", "/y")])


@pytest.mark.parametrize("size", [10, 10_000])
def test_lookup_is_correct_at_any_size(size):
    methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
    specs = [spec(f"f{i}", f"/r/{i // 5}", methods[i % 5]) for i in range(size)]
    table = RouteTable(specs)
    assert len(table) == size
    for i in (0, 1, size // 2, size - 1):
        s = specs[i]
        match = table.lookup(s.method, s.route)
        assert match.spec is s
        assert len(match.allowed_methods) == 5
    assert not table.lookup("GET", f"/r/{size}").found
    # the same answer object each time: lookups allocate nothing
    assert table.lookup("GET", "/r/0") is table.lookup("GET", "/r/0")
