"""In-process measurements: rate-limit decisions/s, KeyStore memory, route lookup, cold start.

Run as a script (``python inproc.py keystore N``) it is the fresh subprocess in which the
KeyStore's RSS growth is measured, so nothing the parent allocated blurs the figure.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs


@attrs.frozen
class Timing:
    median: float
    samples: tuple[float, ...]


def limiter_decisions_per_second(total: int, keys: int = 10_000, repeats: int = 3) -> dict:
    """Best of ``repeats`` runs of ``total`` checks over ``keys`` keys on the free plan.

    The free plan refuses most of them once each key's burst is used, so both the admit and the
    refuse path are exercised; the split is reported.
    """
    from fluxgw.ratelimit import PLANS, GcraLimiter

    plan = PLANS["free"]
    ids = [f"key-{i:06d}" for i in range(keys)]
    sequence = (ids * (total // keys + 1))[:total]
    best, admitted = 0.0, 0
    for _ in range(repeats):
        limiter = GcraLimiter(time.time)
        check = limiter.check
        start = time.perf_counter()
        ok = 0
        for key_id in sequence:
            if check(key_id, plan).allowed:
                ok += 1
        elapsed = time.perf_counter() - start
        if total / elapsed > best:
            best, admitted = total / elapsed, ok
    return {"per_second": best, "checks": total, "keys": keys, "admitted": admitted}


def keystore_rss(n: int) -> dict:
    """RSS growth of a fresh interpreter holding a KeyStore of ``n`` keys."""
    out = subprocess.run(
        [sys.executable, __file__, "keystore", str(n)], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise RuntimeError(f"keystore child failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _keystore_child(n: int) -> None:
    from fluxgw.keys import KeyRecord, KeyStore, display_prefix, generate_key, hash_key

    project_id = "bench-project"
    # Warm the code paths (and their allocator pools) on a throwaway store first.
    warm = generate_key(project_id)
    KeyStore(
        project_id,
        [
            KeyRecord(
                name="warm",
                key_hash=hash_key(warm),
                display=display_prefix(warm),
                environment="live",
                created_at=time.time(),
            )
        ],
    )
    gc.collect()
    before = _rss_bytes()
    now = time.time()

    def records():
        for i in range(n):
            key = generate_key(project_id)  # the key itself is garbage after this iteration
            yield KeyRecord(
                name=f"key-{i}",
                key_hash=hash_key(key),
                display=display_prefix(key),
                environment="live",
                created_at=now,
            )

    start = time.perf_counter()
    store = KeyStore(project_id, records())
    build_s = time.perf_counter() - start
    gc.collect()
    after = _rss_bytes()
    assert len(store) == n
    print(
        json.dumps(
            {
                "keys": n,
                "rss_before": before,
                "rss_after": after,
                "growth": after - before,
                "build_s": build_s,
            }
        )
    )


def route_lookup(
    sizes: tuple[int, ...] = (10, 10_000), lookups: int = 200_000, repeats: int = 5
) -> dict[int, float]:
    """Nanoseconds per ``RouteTable.lookup`` hit (best of ``repeats``) for each table size.

    Every size does the same number of lookups over a list of the same length, cycling
    through all of the table's routes, so only the table size differs.
    """
    from fluxgw.project import FunctionSpec
    from fluxgw.routing import RouteTable

    result: dict[int, float] = {}
    for size in sizes:
        specs = [
            FunctionSpec(
                name=f"fn-{i}",
                runtime="python",
                route=f"/api/v1/fn-{i}",
                method="GET",
                directory=Path("/tmp"),
                entry="main.py",
            )
            for i in range(size)
        ]
        table = RouteTable(specs)
        paths = [spec.route for spec in specs]
        probe = [paths[i % size] for i in range(4096)]
        rounds = max(1, lookups // len(probe))
        lookup = table.lookup
        assert lookup("GET", probe[0]).found
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in range(rounds):
                for path in probe:
                    lookup("GET", path)
            best = min(best, (time.perf_counter_ns() - start) / (rounds * len(probe)))
        result[size] = best
    return result


# ---------------------------------------------------------------------------------------------
# Cold start


def bare_spawn_ms(runtime: str, executable: str, runs: int) -> Timing:
    """Median wall time of starting and exiting the runtime with nothing to do."""
    with tempfile.TemporaryDirectory(prefix="flux-spawn-") as tmp:
        empty = Path(tmp) / "empty.ts"
        empty.write_text("")
        argv = {
            "python": [executable, "-c", "pass"],
            "node": [executable, "-e", "0"],
            "deno": [
                executable,
                "run",
                "--quiet",
                "--no-prompt",
                "--no-remote",
                "--no-lock",
                str(empty),
            ],
        }[runtime]
        subprocess.run(argv, check=True, timeout=60)  # page cache, deno's first-run set-up
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(argv, check=True, timeout=60)
            samples.append((time.perf_counter() - start) * 1000)
    return Timing(statistics.median(samples), tuple(samples))


def cold_start_ms(runtime: str, runs: int) -> dict:
    """First invoke on a fresh PoolManager: wall time and the pool's own ``startup_ms``."""
    import trio

    from fluxgw.project import FunctionSpec
    from fluxgw.runtime.api import Invocation
    from fluxgw.runtime.pool import PoolManager

    from .servers import FUNCTIONS

    name, route, entry, source = FUNCTIONS[runtime]
    walls: list[float] = []
    startups: list[float] = []
    with tempfile.TemporaryDirectory(prefix="flux-cold-") as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        (folder / entry).write_text(source)
        spec = FunctionSpec(
            name=name, runtime=runtime, route=route, method="GET", directory=folder, entry=entry
        )

        async def once(i: int) -> None:
            pool = PoolManager(grace_period=5)
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.run)
                pool.deploy([spec])
                invocation = Invocation(
                    request_id=f"cold-{i:04d}", method="GET", path=route, deadline=time.time() + 30
                )
                start = time.perf_counter()
                result = await pool.invoke(spec, invocation)
                walls.append((time.perf_counter() - start) * 1000)
                if result.status != 200 or not result.cold_start:
                    raise RuntimeError(
                        f"{runtime} cold start: status {result.status}, "
                        f"cold_start={result.cold_start}"
                    )
                startups.append(result.startup_ms)
                await pool.aclose()

        trio.run(once, -1)  # warm the page cache (and deno's module cache); not counted
        walls.clear()
        startups.clear()
        for i in range(runs):
            trio.run(once, i)
    return {
        "wall": Timing(statistics.median(walls), tuple(walls)),
        "startup": Timing(statistics.median(startups), tuple(startups)),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["keystore"]:
        _keystore_child(int(sys.argv[2]))
    else:
        raise SystemExit("usage: inproc.py keystore N")
