"""What `flux deploy` copies into a snapshot: regular files inside each function's folder.

``functions/`` is walked without following symlinks. A symlink is followed only when it
resolves to a regular file inside the same function folder (``functions/<name>/``; for a
top-level entry, inside ``functions/``); it is copied as a plain file. Anything else is
refused with one line naming the path: a symlink that leaves the folder, a symlink to a folder,
a dangling symlink, a FIFO, a socket, a device. The total is capped (MAX_FILES files,
MAX_BYTES bytes) so a stray data folder cannot fill the disk. See docs/limits.md.

Checking happens before anything is written (:func:`plan`), and :func:`copy` re-checks each
file on its open descriptor, so a file swapped for a FIFO in between cannot hang the deploy.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

import attrs

from .errors import ConfigError
from .safeio import clip, file_kind

MAX_FILES = 10_000
MAX_BYTES = 256 * 1024 * 1024
IGNORED = ("__pycache__", "*.pyc", ".DS_Store", ".env")  # .env: local secrets (flux dev)
_CHUNK = 1 << 20


@attrs.frozen
class Entry:
    relative: str  # path inside functions/, "/"-separated
    source: Path  # where to read it (a symlink's target, resolved)
    is_dir: bool
    mode: int


@attrs.frozen
class Plan:
    entries: tuple[Entry, ...]
    total_bytes: int


def plan(functions_dir: Path, shown_root: str = "functions") -> Plan:
    """Every entry to copy, checked against the rules above; ConfigError on the first refusal."""
    entries: list[Entry] = []
    state = {"files": 0, "bytes": 0}
    top = functions_dir.resolve()
    _walk(functions_dir, "", top, top, shown_root, entries, state)
    return Plan(tuple(entries), state["bytes"])


def _walk(
    folder: Path,
    relative: str,
    boundary: Path,
    top: Path,
    shown_root: str,
    entries: list[Entry],
    state: dict[str, int],
) -> None:
    try:
        children = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        shown = _shown(shown_root, relative)
        raise ConfigError(shown, None, f"cannot list: {exc.strerror}") from None
    for child in children:
        if any(fnmatch.fnmatch(child.name, pattern) for pattern in IGNORED):
            continue
        rel = f"{relative}/{child.name}" if relative else child.name
        shown = _shown(shown_root, rel)
        # Each function folder is its own boundary; entries directly in functions/ have
        # functions/ itself.
        inside = boundary if relative else top
        st = child.stat(follow_symlinks=False)
        source = Path(child.path)
        if stat.S_ISLNK(st.st_mode):
            where = "its function folder" if relative else f"{shown_root}/"
            source, st = _follow(source, inside, shown, where)
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(rel, source, True, st.st_mode))
            function_folder = boundary if relative else source.resolve()
            _walk(source, rel, function_folder, top, shown_root, entries, state)
        elif stat.S_ISREG(st.st_mode):
            state["files"] += 1
            state["bytes"] += st.st_size
            _check_caps(state, shown)
            entries.append(Entry(rel, source, False, st.st_mode))
        else:
            raise ConfigError(
                shown, None, f"is {file_kind(st.st_mode)}: only regular files are deployed"
            )


def _follow(link: Path, boundary: Path, shown: str, where: str) -> tuple[Path, os.stat_result]:
    """A symlink's resolved target and its stat, if it is a regular file inside ``boundary``."""
    try:
        target = Path(os.path.realpath(link, strict=True))
    except (OSError, RuntimeError):
        raise ConfigError(shown, None, "is a dangling or looping symlink") from None
    if not target.is_relative_to(boundary):
        raise ConfigError(shown, None, f"is a symlink to {clip(str(target))}, outside {where}")
    st = os.stat(target)
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(shown, None, "is a symlink to a folder: only files are followed")
    return target, st


def _check_caps(state: dict[str, int], shown: str) -> None:
    if state["files"] > MAX_FILES:
        raise ConfigError(shown, None, f"snapshot would hold more than {MAX_FILES} files")
    if state["bytes"] > MAX_BYTES:
        raise ConfigError(
            shown, None, f"snapshot would be larger than {MAX_BYTES // (1024 * 1024)} MiB"
        )


def _shown(root: str, relative: str) -> str:
    return f"{root}/{relative}" if relative else root


def copy(checked: Plan, destination: Path, shown_root: str = "functions") -> None:
    """Write ``checked`` under ``destination`` (which must not exist). Each file is opened
    without following symlinks and non-blocking, and checked again on its descriptor."""
    destination.mkdir(mode=0o700, parents=True)
    budget = MAX_BYTES
    for entry in checked.entries:
        target = destination / entry.relative
        if entry.is_dir:
            target.mkdir(mode=0o700)
            continue
        budget -= _copy_file(entry, target, budget, _shown(shown_root, entry.relative))
    for entry in reversed(checked.entries):  # folders last: a read-only one must not block
        os.chmod(destination / entry.relative, stat.S_IMODE(entry.mode) | stat.S_IRUSR)


def _copy_file(entry: Entry, target: Path, budget: int, shown: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        src = os.open(entry.source, flags)
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(shown, None, f"is {file_kind(st.st_mode)}: changed during deploy")
        copied = 0
        with open(target, "xb") as out:
            while chunk := os.read(src, _CHUNK):
                copied += len(chunk)
                if copied > budget:
                    raise ConfigError(
                        shown, None, f"snapshot grew past {MAX_BYTES // (1024 * 1024)} MiB"
                    )
                out.write(chunk)
        return copied
    finally:
        os.close(src)
