"""Bench section `loops`: the gateway on trio and on asyncio, each against its own ceiling.

For each event loop: the bare hello app on hypercorn's worker for that loop (the ceiling,
measured before and after), then `flux serve --loop LOOP` (team plan, warm python function)
at c=32 and c=1, its 401 path and its 429 path (a drained free-plan key). Figures are ratios
to the same loop's ceiling, measured in the same run; the asyncio ceiling is also given as a
multiple of the trio one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import servers
from .wrk import WrkResult, run_wrk

LOOPS = ("trio", "asyncio")
TARGETS = {"trio": 0.7, "asyncio": 0.5}  # gateway -> warm python, c=32, vs own ceiling


def _best(url: str, s: Any, connections: int, key: str | None = None) -> WrkResult:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    run_wrk(url, connections=connections, seconds=s.warmup, headers=headers)
    runs = [
        run_wrk(url, connections=connections, seconds=s.seconds, headers=headers)
        for _ in range(max(1, s.repeats))
    ]
    return max(runs, key=lambda run: run.rps)


def _ceiling(loop: str, s: Any, logs: Path) -> dict[int, WrkResult]:
    port = servers.free_port()
    with servers.ceiling_server(port, logs, loop).start():
        url = f"http://127.0.0.1:{port}/"
        return {c: _best(url, s, c) for c in (1, 32)}


def _verdict(ok: bool, miss: str) -> str:
    return "yes" if ok else f"**no**: {miss}"


def measure(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """Summary rows: [figure, measured, target, met?]."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    names = tuple(f"{loop}-{c}" for loop in LOOPS for c in (1, 32))
    team, team_keys = servers.make_project(work / "loops-team", "team", names)
    free, free_keys = servers.make_project(work / "loops-free", "free", LOOPS)
    rows: list[list[str]] = []
    ceilings: dict[str, float] = {}
    for loop in LOOPS:
        before = _ceiling(loop, s, logs)
        port = servers.free_port()
        base = f"http://127.0.0.1:{port}"
        with servers.gateway_server(team, port, logs, name=f"gateway-{loop}", loop=loop).start():
            status, body = servers.get(base + "/py", team_keys[f"{loop}-1"])
            if status != 200:
                raise servers.BenchError(f"{loop}: gateway -> python {status} {body[:200]!r}")
            py = {c: _best(base + "/py", s, c, team_keys[f"{loop}-{c}"]) for c in (1, 32)}
            unauth = _best(base + "/py", s, 32)
        port = servers.free_port()
        base = f"http://127.0.0.1:{port}"
        with servers.gateway_server(
            free, port, logs, name=f"gateway-free-{loop}", loop=loop
        ).start():
            for _ in range(130):  # the free plan's burst is 120: drain it
                servers.get(base + "/py", free_keys[loop])
            status, _ = servers.get(base + "/py", free_keys[loop])
            if status != 429:
                raise servers.BenchError(f"{loop}: expected 429 after the burst, got {status}")
            limited = _best(base + "/py", s, 32, free_keys[loop])
        after = _ceiling(loop, s, logs)
        ceiling32 = (before[32].rps + after[32].rps) / 2
        ceiling_p50 = (before[1].p50_ms + after[1].p50_ms) / 2
        ceilings[loop] = ceiling32
        log(
            f"loops: {loop:<7} ceiling {ceiling32:8.0f}  python {py[32].rps:8.0f}  "
            f"401 {unauth.rps:8.0f}  429 {limited.rps:8.0f} req/s"
        )
        ratio = py[32].rps / ceiling32
        target = TARGETS[loop]
        rows.append(
            [
                f"{loop}: gateway -> warm python, c=32, vs {loop} ceiling",
                f"{ratio:.2f} ({py[32].rps:,.0f} vs {ceiling32:,.0f} req/s)",
                f">= {target}",
                _verdict(ratio >= target, f"{target - ratio:.2f} short"),
            ]
        )
        for label, run in (("401", unauth), ("429", limited)):
            r = run.rps / ceiling32
            rows.append(
                [
                    f"{loop}: {label} path, c=32, vs {loop} ceiling",
                    f"{r:.2f} ({run.rps:,.0f} req/s)",
                    ">= 0.9",
                    _verdict(r >= 0.9, f"{0.9 - r:.2f} short"),
                ]
            )
        added = py[1].p50_ms - ceiling_p50
        rows.append(
            [
                f"{loop}: gateway -> warm python, c=1, added p50",
                f"+{added:.3f} ms (p50 {py[1].p50_ms:.3f} vs {ceiling_p50:.3f} ms)",
                "<= 0.5 ms",
                _verdict(added <= 0.5, f"{added - 0.5:.3f} ms over"),
            ]
        )
    rows.append(
        [
            "asyncio ceiling vs trio ceiling, c=32",
            f"x{ceilings['asyncio'] / ceilings['trio']:.2f} "
            f"({ceilings['asyncio']:,.0f} vs {ceilings['trio']:,.0f} req/s)",
            "(context)",
            "n/a",
        ]
    )
    return rows
