"""Bench section `loops`: the gateway on trio and on asyncio, each against its own ceiling.

For each event loop, three servers run side by side: the bare hello app on hypercorn's worker
for that loop (the ceiling), `flux serve --loop LOOP` (team plan, warm python function) and a
second gateway whose free-plan key has been drained (the 429 path). Idle, a server costs the
others nothing measurable. Then, in rounds (4 quick, 8 full; alternating order, so a drift of
the shared machine's load hits every side alike), one short wrk run each of: the ceiling and
the gateway at c=32, its 401 path, its 429 path, and the ceiling and the gateway at c=1. Every
figure is the median over the rounds of that round's ratio (or p50 difference) to the same
round's ceiling: on this 2-core machine the load of other processes comes in bursts of
seconds, and a ceiling measured minutes apart from the run it divides moved ratios by up to
0.3 (BENCHMARKS.md, "Both event loops"). The asyncio ceiling is also given as a multiple of
the trio one.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import servers
from .wrk import run_wrk

LOOPS = ("trio", "asyncio")
TARGETS = {"trio": 0.7, "asyncio": 0.5}  # gateway -> warm python, c=32, vs own ceiling
SECONDS = 2  # each wrk run of a round


def _verdict(ok: bool, miss: str) -> str:
    return "yes" if ok else f"**no**: {miss}"


def _drain(base: str, key: str, loop: str) -> None:
    for _ in range(130):  # the free plan's burst is 120: drain it
        servers.get(base + "/py", key)
    status, _ = servers.get(base + "/py", key)
    if status != 429:
        raise servers.BenchError(f"{loop}: expected 429 after the burst, got {status}")


def _rounds(
    loop: str,
    targets: dict[str, tuple[str, int, str | None]],
    rounds: int,
    log: Callable[[str], None],
) -> dict[str, list[tuple[float, float]]]:
    """``rounds`` alternating passes over ``targets`` (name -> url, connections, key);
    per name the (req/s, p50 ms) of every round."""
    for url, connections, key in targets.values():  # warm each once (JIT caches, workers)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        run_wrk(url, connections=connections, seconds=1, headers=headers)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for round_ in range(rounds):
        order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
        for name in order:
            url, connections, key = targets[name]
            headers = {"Authorization": f"Bearer {key}"} if key else None
            run = run_wrk(url, connections=connections, seconds=SECONDS, headers=headers)
            runs[name].append((run.rps, run.p50_ms))
        log(
            f"loops: {loop:<7} round {round_ + 1}: "
            + "  ".join(f"{name} {runs[name][-1][0]:,.0f}" for name in targets)
        )
    return runs


def _ratio(runs: dict[str, list[tuple[float, float]]], name: str) -> float:
    """The median over the rounds of ``name``'s req/s over the same round's ceiling."""
    pairs = zip(runs[name], runs["ceiling"], strict=True)
    return statistics.median(a[0] / b[0] for a, b in pairs)


def _rps(runs: dict[str, list[tuple[float, float]]], name: str) -> float:
    return statistics.median(run[0] for run in runs[name])


def measure(s: Any, work: Path, log: Callable[[str], None]) -> list[list[str]]:
    """Summary rows: [figure, measured, target, met?]."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    names = tuple(f"{loop}-{c}" for loop in LOOPS for c in (1, 32))
    team, team_keys = servers.make_project(work / "loops-team", "team", names)
    free, free_keys = servers.make_project(work / "loops-free", "free", LOOPS)
    rounds = 4 if s.quick else 8
    rows: list[list[str]] = []
    ceilings: dict[str, float] = {}
    for loop in LOOPS:
        ports = [servers.free_port() for _ in range(3)]
        ceiling, gateway, limited = (f"http://127.0.0.1:{port}" for port in ports)
        with contextlib.ExitStack() as stack:
            stack.enter_context(servers.ceiling_server(ports[0], logs, loop).start())
            stack.enter_context(
                servers.gateway_server(
                    team, ports[1], logs, name=f"gateway-{loop}", loop=loop
                ).start()
            )
            stack.enter_context(
                servers.gateway_server(
                    free, ports[2], logs, name=f"gateway-free-{loop}", loop=loop
                ).start()
            )
            status, body = servers.get(gateway + "/py", team_keys[f"{loop}-1"])
            if status != 200:
                raise servers.BenchError(f"{loop}: gateway -> python {status} {body[:200]!r}")
            _drain(limited, free_keys[loop], loop)
            runs = _rounds(
                loop,
                {
                    "ceiling": (ceiling + "/", 32, None),
                    "python": (gateway + "/py", 32, team_keys[f"{loop}-32"]),
                    "401": (gateway + "/py", 32, None),
                    "429": (limited + "/py", 32, free_keys[loop]),
                    "ceiling c=1": (ceiling + "/", 1, None),
                    "python c=1": (gateway + "/py", 1, team_keys[f"{loop}-1"]),
                },
                rounds,
                log,
            )

        ceilings[loop] = _rps(runs, "ceiling")
        python = _ratio(runs, "python")
        target = TARGETS[loop]
        rows.append(
            [
                f"{loop}: gateway -> warm python, c=32, vs {loop} ceiling",
                f"{python:.2f} (median of {rounds} rounds; {_rps(runs, 'python'):,.0f} vs "
                f"{_rps(runs, 'ceiling'):,.0f} req/s)",
                f">= {target}",
                _verdict(python >= target, f"{target - python:.2f} short"),
            ]
        )
        for label in ("401", "429"):
            r = _ratio(runs, label)
            rows.append(
                [
                    f"{loop}: {label} path, c=32, vs {loop} ceiling",
                    f"{r:.2f} ({_rps(runs, label):,.0f} req/s)",
                    ">= 0.9",
                    _verdict(r >= 0.9, f"{0.9 - r:.2f} short"),
                ]
            )
        added = statistics.median(
            a[1] - b[1] for a, b in zip(runs["python c=1"], runs["ceiling c=1"], strict=True)
        )
        p50 = statistics.median(run[1] for run in runs["python c=1"])
        ceiling_p50 = statistics.median(run[1] for run in runs["ceiling c=1"])
        rows.append(
            [
                f"{loop}: gateway -> warm python, c=1, added p50",
                f"+{added:.3f} ms (p50 {p50:.3f} vs {ceiling_p50:.3f} ms)",
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
