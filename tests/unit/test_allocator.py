"""`flux serve` caps glibc malloc's arenas, so threads that come and go under load do not each
keep a heap of their own (the soak's RSS steps, BENCHMARKS.md "Output flood and soak")."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the arena cap is a glibc setting"
)

# Eight threads alive at once, each allocating blocks too large for Python's own small-object
# allocator (so they come from malloc, in the thread's arena); then glibc's malloc_stats()
# prints one "Arena N:" paragraph per arena on stderr.
THREADS = """
import ctypes, sys, threading
from fluxgw.allocator import limit_malloc_arenas
if sys.argv[1] == "capped":
    assert limit_malloc_arenas()
together = threading.Barrier(8)
def work():
    together.wait()
    kept = [bytes(4096) for _ in range(2000)]
    together.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", THREADS, mode], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return sum(line.startswith("Arena ") for line in run.stderr.splitlines())


def test_threads_share_two_arenas_once_capped() -> None:
    assert arenas("default") > 2  # what the cap prevents: an arena per thread
    assert arenas("capped") <= 2


# Every other 100 KiB block freed: holes in the heap that malloc keeps (only its top is given
# back by itself). Prints RSS in KiB before and after the trim.
HOLES = """
import sys
from fluxgw.allocator import release_free_memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
blocks = [bytearray(100 * 1024) for _ in range(1000)]
del blocks[::2]
before = rss()
assert release_free_memory()
print(before, rss())
"""


def test_free_memory_goes_back_to_the_system() -> None:
    run = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    before, after = map(int, run.stdout.split())
    assert before - after > 30 * 1024  # of the ~50 MiB in holes, most is released
