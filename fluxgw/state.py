"""The .flux/ folder: crash-safe writes, one advisory lock, cheap change detection.

Every write goes temp file -> fsync -> rename -> fsync(folder), so a crash at any instant leaves
either the old file or the new one, never a torn one. A `flux` command and a running gateway
take the same ``flock`` before a read-modify-write, so their writes never interleave. A file
that does not parse is reported with its path and left alone: we never overwrite what we could
not read, because it may hold the only copy of a user's keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import reserve
from .errors import StateError
from .safeio import UnsafeInput, clip, read_regular_file, shorten
from .safeio import loads as safe_loads

if TYPE_CHECKING:
    from .store.documents import Documents

GITIGNORE = "# Written by the flux command: keys, limiter state, traces. Never commit.\n*\n"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700

# Files only ever written while holding the lock (see StateDir.lock).
LOCKED_FILES = (
    "keys.json",
    "project.json",
    "deployment.json",
    "ratelimit.json",
    "key-usage.json",
    "jwt.json",
    "secrets.json",
)

Fingerprint = tuple[int, int, int] | None
MAX_STATE_FILE = 512 * 1024 * 1024  # keys.json of 1,000,000 keys is ~250 MB
# The files a Redis store holds instead (docs/redis.md): keys, settings, user-token settings.
SHARED_DOCUMENTS = ("keys.json", "project.json", "jwt.json")


class _Unset:
    pass


_UNSET = _Unset()


class StateDir:
    """Paths and safe file operations for one project's ``.flux/`` folder."""

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self.root = project_dir / ".flux"
        # keys.json and project.json live in Redis when .flux/store.json says so
        # (docs/redis.md); resolved on first use, None for the files store.
        self.documents: Documents | _Unset | None = _UNSET
        self._read_versions: dict[str, int] = {}

    def _shared(self, path: Path) -> Documents | None:
        """The shared store holding ``path``, or None when it is a file in .flux/."""
        if path.parent != self.root or path.name not in SHARED_DOCUMENTS:
            return None
        if isinstance(self.documents, _Unset):
            from .store.documents import open_documents

            self.documents = open_documents(self)
        return self.documents

    # -- paths -------------------------------------------------------------------------------
    @property
    def keys_file(self) -> Path:
        return self.root / "keys.json"

    @property
    def settings_file(self) -> Path:
        return self.root / "project.json"

    @property
    def deployment_file(self) -> Path:
        return self.root / "deployment.json"

    @property
    def deployments_dir(self) -> Path:
        return self.root / "deployments"

    @property
    def ratelimit_file(self) -> Path:
        return self.root / "ratelimit.json"

    @property
    def key_usage_file(self) -> Path:
        return self.root / "key-usage.json"

    @property
    def traces_db(self) -> Path:
        return self.root / "traces.db"

    @property
    def queue_db(self) -> Path:
        return self.root / "queue.db"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    # -- folder ------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create .flux/ (mode 0700) with its own .gitignore; idempotent."""
        try:
            self.root.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            os.chmod(self.root, PRIVATE_DIR)
            ignore = self.root / ".gitignore"
            if not ignore.exists():
                atomic_write_bytes(ignore, GITIGNORE.encode(), mode=0o644)
        except OSError as exc:
            problem = f"cannot create state folder: {exc.strerror}"
            raise StateError(str(self.root), problem) from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the project's advisory write lock (blocking; held for milliseconds)."""
        self.ensure()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._remove_stale_temp_files()
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _remove_stale_temp_files(self) -> None:
        # A writer killed between mkstemp and rename leaves a temp file behind. Files written
        # under the lock can only be someone's live temp file while they hold the lock, which
        # we now do: whatever is left is garbage.
        for name in LOCKED_FILES:
            for stale in self.root.glob(f".{name}.*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def reset_store(self) -> None:
        """Forget which store holds the shared documents (after `--store` switched it)."""
        self.documents = _UNSET

    def fingerprint(self, path: Path) -> Fingerprint:
        """:func:`fingerprint` of a state file, or the version of a shared document."""
        shared = self._shared(path)
        if shared is not None:
            return (shared.read(path.name)[0], -1, -1)
        return fingerprint(path)

    # -- files -------------------------------------------------------------------------------
    def read_json(self, path: Path, default: Any = None) -> Any:
        """Parsed content of ``path``, ``default`` if it does not exist; StateError if corrupt."""
        shared = self._shared(path)
        if shared is not None:
            version, payload = shared.read(path.name)
            self._read_versions[path.name] = version  # what a write must still find there
            if payload is None:
                return default
            raw, path = payload, Path(f"{shared.label}/{path.name}")
        else:
            try:
                raw = read_regular_file(path, MAX_STATE_FILE)
            except FileNotFoundError:
                return default
            except OSError as exc:
                raise StateError(str(path), f"cannot read: {exc.strerror}") from None
        try:
            return safe_loads(raw)
        except UnsafeInput as exc:
            raise StateError(
                str(path),
                f"is corrupt ({exc}); it was left untouched: fix or remove it by hand",
            ) from None

    def read_epoch_map(self, path: Path) -> dict[str, float]:
        """A JSON object of name -> epoch seconds (ratelimit.json, key-usage.json), validated:
        StateError names the file and the first bad field."""
        data = self.read_json(path, default={})
        if not isinstance(data, dict):
            raise StateError(str(path), "must hold a JSON object; left untouched")
        result: dict[str, float] = {}
        for name, value in data.items():
            number = value if isinstance(value, float) else None
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 53:
                number = float(value)
            if number is None:
                field = shorten(name, 30)
                raise StateError(
                    str(path), f"field '{field}': must be epoch seconds, got {clip(value)}"
                )
            result[name] = number
        return result

    def write_json(
        self, path: Path, data: Any, *, mode: int = PRIVATE_FILE, use_reserve: bool = True
    ) -> None:
        """Write ``data`` atomically. On a full disk, ``use_reserve`` frees the space the
        gateway keeps in reserve and tries once more (reserve.py): a revocation must never
        lose to traces. The gateway's own periodic writes pass ``use_reserve=False``."""
        self.ensure()
        payload = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
        shared = self._shared(path)
        if shared is not None:
            # Compare-and-set on the version this command read: a write by another machine
            # in between is refused rather than overwritten.
            if shared.write(path.name, payload, expected=self._read_versions.get(path.name, 0)) < 0:
                raise StateError(
                    f"{shared.label}/{path.name}", "was changed meanwhile; run the command again"
                )
            return
        try:
            try:
                atomic_write_bytes(path, payload, mode=mode)
            except OSError as exc:
                if not (use_reserve and exc.errno in reserve.NO_SPACE):
                    raise
                if not reserve.release(self.root):
                    raise
                atomic_write_bytes(path, payload, mode=mode)
        except OSError as exc:
            raise StateError(str(path), f"cannot write: {exc.strerror}") from None


def atomic_write_bytes(path: Path, payload: bytes, *, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` with ``payload`` so that a crash leaves the old or the new content."""
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)  # before any byte lands: a secret is never world-readable
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the directory entry itself is data)."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fingerprint(path: Path) -> Fingerprint:
    """A cheap change marker: (mtime_ns, size, inode). The inode changes on every atomic
    rename, so even two writes within one mtime tick are told apart."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def new_project_id() -> str:
    return secrets.token_hex(12)
