"""`flux serve --workers N`: N gateway processes on one port, sharing the Redis store.

Each child is a complete `flux serve` that listens with ``SO_REUSEPORT`` on the same address;
the kernel spreads new connections over the children, and the Redis store makes them one
gateway to a client (exact shared limits, one queue, one trace store; docs/redis.md). With the
files store this is refused: its limiter, queue and key usage have one owner per folder.

The parent only supervises: it picks the port (port 0 works: it holds a bound, non-listening
``SO_REUSEPORT`` socket so the port cannot be taken meanwhile), starts the children in its own
process group, prints one ready line when every child is ready, forwards SIGINT/SIGTERM, and
exits when they have all stopped (with the worst exit code). A child that dies is reported;
the others keep serving.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .console import say, warn

READY = re.compile(r"serving .* at (\S+)")


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, ``SO_REUSEPORT`` socket: fixes the port for the children."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def child_command(child_args: Sequence[str], port: int) -> list[str]:
    """The child's `flux serve` line: the parent's arguments with the chosen port."""
    return [sys.executable, "-m", "fluxgw", *child_args, "--port", str(port), "--reuse-port"]


def run_workers(
    child_args: Sequence[str], host: str, port: int, workers: int, project_dir: Path
) -> int:
    reserved = reserve_port(host, port)
    port = reserved.getsockname()[1]
    children = [
        subprocess.Popen(
            child_command(child_args, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for _ in range(workers)
    ]
    ready = threading.Semaphore(0)
    urls: list[str] = []

    def relay(index: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        announced = False
        for line in child.stdout:
            match = READY.search(line)
            if match and not announced:
                announced = True
                urls.append(match.group(1))
                ready.release()
                continue
            print(f"[{index}] {line}", end="", flush=True)
        if not announced:
            ready.release()  # it died before serving: do not wait for it forever

    threads = [
        threading.Thread(target=relay, args=(i, c), daemon=True) for i, c in enumerate(children)
    ]
    for thread in threads:
        thread.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for _ in children:
            ready.acquire()
        reserved.close()  # every child listens now; the reservation has done its job
        if urls:
            say(f"serving {project_dir} at {urls[0]} ({len(urls)} of {workers} workers, one port)")
        if len(urls) < workers:
            warn(f"{workers - len(urls)} of {workers} workers failed to start")
        codes = [child.wait() for child in children]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        forward(signal.SIGTERM, None)
    for thread in threads:
        thread.join(timeout=5)
    return max(codes, default=0)
