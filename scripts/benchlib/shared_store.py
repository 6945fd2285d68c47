"""The Redis store's rows (docs/redis.md): gateway throughput on files vs Redis vs
`--workers 2` on Redis, the Redis round trip's share of a request, and the in-process limiter
against the Redis limiter, all in the same run.

Part of scripts/bench (section ``redis``): ``scripts/bench --quick --only redis``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import servers
from benchlib.wrk import WrkResult, run_wrk

sys.path.insert(0, str(servers.REPO / "tests"))
from redisserver import RedisServer  # the tests' real redis-server starter

Log = Callable[[str], None]


def _best(label: str, url: str, s: Any, connections: int, key: str, log: Log) -> WrkResult:
    """Best of the settings' repeats after a warm-up (as the core rows measure)."""
    headers = {"Authorization": f"Bearer {key}"}
    run_wrk(url, connections=connections, seconds=s.warmup, headers=headers)
    runs = [
        run_wrk(url, connections=connections, seconds=s.seconds, headers=headers)
        for _ in range(max(1, s.repeats))
    ]
    best = max(runs, key=lambda run: run.rps)
    log(f"redis: {label:<8} c={connections:<3} {best.rps:8.0f} req/s  p50 {best.p50_ms:.3f} ms")
    return best


def redis_limiter_rate(port: int, seconds: float) -> dict[str, float]:
    """Decisions per second of the Redis limiter: one caller (round trip bound) and 32
    concurrent callers (what a busy gateway does); plus the mean round trip."""
    import anyio
    import coredis

    from fluxgw.ratelimit import PLANS
    from fluxgw.store.redis_limiter import RedisLimiter

    async def run() -> dict[str, float]:
        client = coredis.Redis(host="127.0.0.1", port=port)
        async with client:
            limiter = RedisLimiter(client, "flux:bench:")
            plan = PLANS["team"]
            done = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                await limiter.check(f"k{done % 1000}", plan)
                done += 1
            serial = done / (time.perf_counter() - start)
            count = 0

            async def worker(deadline: float) -> None:
                nonlocal count
                while time.perf_counter() < deadline:
                    await limiter.check(f"c{count % 1000}", plan)
                    count += 1

            start = time.perf_counter()
            async with anyio.create_task_group() as tasks:
                for _ in range(32):
                    tasks.start_soon(worker, start + seconds)
            concurrent = count / (time.perf_counter() - start)
        return {"serial": serial, "concurrent": concurrent, "rtt_ms": 1000 / serial}

    return anyio.run(run)


def measure(s: Any, work: Path, log: Log) -> list[list[str]]:
    """The section's summary rows (see :func:`rows`)."""
    return rows(measure_all(s, work, log))


def measure_all(s: Any, work: Path, log: Log) -> dict[str, Any]:
    logs = work / "logs-redis"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    redis = RedisServer(work)
    redis.start()
    try:
        out["limiter"] = redis_limiter_rate(redis.port, 1.0 if s.quick else 3.0)
        names = ("files", "redis", "workers", "c1")
        files, files_keys = servers.make_project(work / "files-store", "team", names)
        shared, keys = servers.make_project(work / "redis-store", "team", names)
        servers.flux(shared, "project", "update", "--store", redis.url)
        for label, project, key, extra in (
            ("files", files, files_keys["files"], ()),
            ("redis", shared, keys["redis"], ()),
            ("workers", shared, keys["workers"], ("--workers", "2")),
        ):
            port = servers.free_port()
            argv = [servers.FLUX, "--project", str(project), "serve", "--port", str(port), *extra]
            name = f"gateway-{label}"
            with servers.Server(name, argv, "flux: serving", logs).start():
                url = f"http://127.0.0.1:{port}/py"
                status, body = servers.get(url, key)
                if status != 200:
                    raise servers.BenchError(f"{name}: {status} {body[:200]!r}")
                out[label] = _best(label, url, s, 32, key, log)
                if label == "redis":
                    out["redis-c1"] = _best(label, url, s, 1, keys["c1"], log)
    finally:
        redis.stop()
    return out


def rows(result: dict[str, Any]) -> list[list[str]]:
    lim = result["limiter"]
    files, redis, workers = result["files"].rps, result["redis"].rps, result["workers"].rps
    share = lim["rtt_ms"] / result["redis-c1"].p50_ms
    return [
        [
            "Redis store: 1 instance vs files, python, c=32",
            f"{redis / files:.2f} ({redis:,.0f} vs {files:,.0f} req/s)",
            "reported",
            "-",
        ],
        [
            "Redis store: --workers 2 vs 1 instance, c=32",
            f"x{workers / redis:.2f} ({workers:,.0f} req/s)",
            "reported (2 cores shared with wrk)",
            "-",
        ],
        [
            "Redis round trip's share of a request (c=1 p50)",
            f"{share:.0%} ({lim['rtt_ms']:.3f} of {result['redis-c1'].p50_ms:.3f} ms)",
            "reported",
            "-",
        ],
        [
            "Redis limiter decisions/s (1 caller / 32 concurrent)",
            f"{lim['serial']:,.0f} / {lim['concurrent']:,.0f}",
            "reported (in-process limiter: see its row)",
            "-",
        ],
    ]
