"""Soak the gateway: constant load across the three runtimes, then report what drifted.

16 client threads (one API key each, team plan, so the limiter never refuses) call the
python, node and deno hello functions in turn for ``--minutes``. Reported: requests and
errors (any answer but 200, any transport error), the gateway process's RSS in the minute
after the warm-up and in the last minute (medians; growth must stay under 5%), and the trace
store's size on disk against its cap. Exit status 1 if there was any error, RSS grew 5% or
more, or the trace store is over its cap.

Not part of CI (it takes minutes). Usage: scripts/soak [--minutes 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from benchlib import servers

from fluxgw.runtime.discovery import find_runtime
from fluxgw.tracestore import DEFAULT_MAX_BYTES

ROUTES = ("/py", "/node", "/deno")
SAMPLE_EVERY = 5.0  # s between RSS samples
MAX_RSS_GROWTH = 0.05
WINDOW = 60.0  # s of samples whose median is the RSS at the start and at the end


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.examples: list[str] = []  # the first few error answers, whole

    def add(self, error: str | None, example: str = "") -> None:
        with self.lock:
            self.requests += 1
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1
                if len(self.examples) < 5:
                    self.examples.append(f"{error}: {example[:300]}")


def client(url: str, key: str, offset: int, until: float, tally: Tally) -> None:
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        turn = offset
        while time.monotonic() < until:
            route = ROUTES[turn % len(ROUTES)]
            turn += 1
            example = ""
            try:
                answer = http.get(route)
                error = None
                if answer.status_code != 200:
                    code = answer.json().get("error", "?") if answer.content[:1] == b"{" else "?"
                    error = f"{route} -> {answer.status_code} {code}"
                    example = answer.text
            except httpx.HTTPError as exc:
                error = f"{route} -> {type(exc).__name__}"
                example = str(exc)
            tally.add(error, example)


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1024 * 1024)


def store_bytes(project: Path) -> int:
    root = project / ".flux"
    return sum(
        path.stat().st_size
        for path in (root / "traces.db", root / "traces.db-wal", root / "traces.db-shm")
        if path.exists()
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    missing = [r for r in ("node", "deno") if find_runtime(r) is None]
    if missing:
        print(f"soak: {', '.join(missing)} not installed (run scripts/setup)", file=sys.stderr)
        return 2
    seconds = args.minutes * 60
    warmup = min(60.0, seconds / 4)
    with tempfile.TemporaryDirectory(prefix="flux-soak-") as tmp:
        names = tuple(f"soak{i}" for i in range(args.concurrency))
        project, keys = servers.make_project(Path(tmp) / "proj", "team", names)
        port = servers.free_port()
        with servers.gateway_server(project, port, Path(tmp)) as gateway:
            gateway.start()
            url = f"http://127.0.0.1:{port}"
            tally = Tally()
            start = time.monotonic()
            until = start + seconds
            threads = [
                threading.Thread(target=client, args=(url, keys[name], i, until, tally))
                for i, name in enumerate(names)
            ]
            for thread in threads:
                thread.start()
            samples: list[tuple[float, float]] = []
            while any(thread.is_alive() for thread in threads):
                samples.append((time.monotonic() - start, rss_mib(gateway.pid)))
                time.sleep(SAMPLE_EVERY)
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - start
            size = store_bytes(project)
    # RSS saws up and down by 2-4 MiB between the gateway's 30 s collections (each one hands
    # free pages back): compare the median of the first minute after warm-up with the median
    # of the last minute, each window spanning two collections, not two single samples that
    # may fall on opposite sides of one.
    after_warmup = [(at, rss) for at, rss in samples if at >= warmup] or samples[-1:]
    first, last = after_warmup[0][0], after_warmup[-1][0]
    base = statistics.median(rss for at, rss in after_warmup if at < first + WINDOW)
    end = statistics.median(rss for at, rss in after_warmup if at > last - WINDOW)
    low, high = min(r for _, r in after_warmup), max(r for _, r in after_warmup)
    growth = (end - base) / base
    errors = sum(tally.errors.values())
    print(f"soak: {args.minutes:g} min, c={args.concurrency}, routes {', '.join(ROUTES)}")
    print(f"  requests      {tally.requests} ({tally.requests / elapsed:.0f}/s)")
    print(f"  errors        {errors}" + (f"  {tally.errors}" if errors else ""))
    for example in tally.examples:
        print(f"    {example}")
    per_minute = [f"{rss:.1f}" for at, rss in samples if int(at) % 60 < SAMPLE_EVERY]
    print(f"  RSS per minute (MiB): {' '.join(per_minute)}")
    print(
        f"  gateway RSS   {samples[0][1]:.1f} MiB at start, {base:.1f} MiB after a "
        f"{warmup:.0f} s warm-up, {end:.1f} MiB at the end (medians of a minute each): "
        f"{growth:+.1%} (limit +{MAX_RSS_GROWTH:.0%}); {low:.1f}-{high:.1f} MiB in between"
    )
    cap = DEFAULT_MAX_BYTES
    print(f"  trace store   {size / 2**20:.1f} MiB on disk, cap {cap / 2**20:.0f} MiB")
    ok = errors == 0 and growth < MAX_RSS_GROWTH and size <= cap
    print("soak: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
