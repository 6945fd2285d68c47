"""The routing table: ``(method, path) -> FunctionSpec`` by exact match
(docs/reference.md#project-and-fluxjson), pure.

Lookups are two dict probes and allocate nothing: every possible answer (hit, wrong method,
unknown path) is a :class:`RouteMatch` built when the table is built. A deploy builds a new
table and swaps it in whole, so a request never sees half of one.

``HEAD`` is *not* served by a ``GET`` function: a function is arbitrary code that may have side
effects or cost, and answering HEAD would mean running it and throwing the body away, behind the
author's back. ``HEAD`` on a GET route therefore gets the same 404 as any other unserved method;
the match still carries ``allowed_methods`` so the 404 message (and a preflight) can say what
the path does serve.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .project import METHODS, FunctionSpec

_METHOD_ORDER = {m: i for i, m in enumerate(METHODS)}


@attrs.frozen
class RouteMatch:
    """A lookup result: the function (None for a 404) and the methods served at the path."""

    spec: FunctionSpec | None
    allowed_methods: tuple[str, ...]

    @property
    def found(self) -> bool:
        return self.spec is not None


NO_ROUTE = RouteMatch(None, ())


class RouteTable:
    """An immutable index of a deployment's functions, built once per deploy."""

    __slots__ = ("_by_name", "_by_path", "_specs")

    def __init__(self, specs: Iterable[FunctionSpec]) -> None:
        self._specs = tuple(specs)
        self._by_name: dict[str, FunctionSpec] = {}
        grouped: dict[str, dict[str, FunctionSpec]] = {}
        for spec in self._specs:
            if spec.name in self._by_name:
                raise ValueError(f"two functions are named {spec.name!r}")
            self._by_name[spec.name] = spec
            at_path = grouped.setdefault(spec.route, {})
            if spec.method in at_path:
                other = at_path[spec.method].name
                raise ValueError(
                    f"{spec.method} {spec.route} is served by both {other!r} and {spec.name!r}"
                )
            at_path[spec.method] = spec
        # path -> (methods, method -> match, match for any other method)
        self._by_path: dict[str, tuple[tuple[str, ...], dict[str, RouteMatch], RouteMatch]] = {}
        for path, at_path in grouped.items():
            methods = tuple(sorted(at_path, key=lambda m: _METHOD_ORDER.get(m, len(METHODS))))
            hits = {m: RouteMatch(spec, methods) for m, spec in at_path.items()}
            self._by_path[path] = (methods, hits, RouteMatch(None, methods))

    def __len__(self) -> int:
        return len(self._specs)

    def lookup(self, method: str, path: str) -> RouteMatch:
        """Exact, case-sensitive match of path and method; O(1), no allocation."""
        entry = self._by_path.get(path)
        if entry is None:
            return NO_ROUTE
        return entry[1].get(method, entry[2])

    def methods_for(self, path: str) -> tuple[str, ...]:
        """Methods served at ``path`` (in GET, POST, PUT, PATCH, DELETE order); () if none."""
        entry = self._by_path.get(path)
        return entry[0] if entry is not None else ()

    def by_name(self, name: str) -> FunctionSpec | None:
        return self._by_name.get(name)

    @property
    def specs(self) -> tuple[FunctionSpec, ...]:
        return self._specs

    def rows(self) -> list[tuple[str, str, str, str]]:
        """``(method, route, function, runtime[ async])`` sorted by route then method, for
        ``flux routes`` and the table ``flux deploy`` prints."""
        return [
            (
                spec.method,
                spec.route,
                spec.name,
                spec.runtime + (" async" if spec.is_async else ""),
            )
            for spec in sorted(
                self._specs,
                key=lambda s: (s.route, _METHOD_ORDER.get(s.method, len(METHODS)), s.name),
            )
        ]
