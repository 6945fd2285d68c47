"""Sample a running gateway with py-spy and summarise where its CPU time goes."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

from .servers import VENV_BIN

_WRAPPERS = ("main (", "run (", "serve (", "run_server (", "_main (", "serve_gateway (")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy_path() -> str | None:
    local = VENV_BIN / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` (and its subprocesses) for ``seconds``; None without py-spy."""
    exe = py_spy_path()
    if exe is None:
        return None
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "100",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/fluxgw/"):
        if marker in path:
            path = ("fluxgw/" if marker == "/fluxgw/" else "") + path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarise(raw: Path, top: int = 12) -> dict:
    """Self shares of samples per function, and inclusive shares of fluxgw's own functions
    (what the gateway's authors can change), from py-spy's collapsed stacks."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f.strip()]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for frame in set(frames):
            if "fluxgw/" in frame and not frame.startswith(_WRAPPERS):
                incl_counts[frame] += n

    def share(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100 * c / total) for name, c in counter.most_common(top)] if total else []

    return {"samples": total, "self": share(self_counts), "inclusive": share(incl_counts)}
