"""`flux tls trust` / `untrust`: the local CA in the Debian system store and the user's NSS db.

Only ever run when a user asks. Both stores can be pointed elsewhere (tests use temporary
ones, so they never change the machine's own trust):

- system: a filesystem root (``--system-root`` / ``$FLUX_TRUST_SYSTEM_ROOT``, default ``/``)
  under which Debian's layout is used: the CA goes to ``usr/local/share/ca-certificates/``,
  and ``update-ca-certificates`` rebuilds ``etc/ssl/certs/`` (what ``curl --capath`` reads)
  and its bundle.
- NSS (Chromium, Firefox with the shared db): ``--nss-db`` / ``$FLUX_TRUST_NSS_DB``, default
  ``~/.pki/nssdb``, changed with ``certutil`` (Debian package libnss3-tools).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import FluxError
from .tls import LocalCA, ca_name

SYSTEM_ROOT_ENV = "FLUX_TRUST_SYSTEM_ROOT"
NSS_DB_ENV = "FLUX_TRUST_NSS_DB"
STORES = ("system", "nss")
CA_FILE = "flux-local-ca.crt"  # .crt: the suffix update-ca-certificates picks up


def system_root(given: Path | None = None) -> Path:
    return given or Path(os.environ.get(SYSTEM_ROOT_ENV) or "/")


def nss_db(given: Path | None = None) -> Path:
    if given:
        return given
    if os.environ.get(NSS_DB_ENV):
        return Path(os.environ[NSS_DB_ENV])
    return Path.home() / ".pki" / "nssdb"


def _run(command: list[str], what: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise FluxError(f"{what}: {command[0]} not found") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise FluxError(f"{what}: {command[0]} failed: {detail[-1] if detail else 'no output'}")
    return result.stdout


def _update_ca_certificates(root: Path, *, fresh: bool = False) -> None:
    tool = shutil.which("update-ca-certificates") or "/usr/sbin/update-ca-certificates"
    if not Path(tool).exists():
        raise FluxError("update-ca-certificates not found: install Debian's ca-certificates")
    command = [tool]
    if root != Path("/"):
        # A store of its own: every folder the tool reads or writes, under ``root``.
        conf = root / "etc" / "ca-certificates.conf"
        for folder in ("usr/share/ca-certificates", "etc/ssl/certs", "etc/ca-certificates"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "etc" / "ca-certificates" / "update.d").mkdir(exist_ok=True)
        conf.touch()
        command += [
            "--certsconf", str(conf),
            "--certsdir", str(root / "usr" / "share" / "ca-certificates"),
            "--localcertsdir", str(root / "usr" / "local" / "share" / "ca-certificates"),
            "--etccertsdir", str(root / "etc" / "ssl" / "certs"),
            "--hooksdir", str(root / "etc" / "ca-certificates" / "update.d"),
        ]  # fmt: skip
    if fresh:
        command.append("--fresh")  # drops links to certificates that are gone
    _run(command, "system store")


def trust_system(ca: LocalCA, root: Path) -> str:
    folder = root / "usr" / "local" / "share" / "ca-certificates"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca.cert, folder / CA_FILE)
        (folder / CA_FILE).chmod(0o644)
    except PermissionError:
        raise FluxError(f"system store: cannot write {folder}: run it with sudo") from None
    _update_ca_certificates(root)
    return f"system store: added {folder / CA_FILE} ({root / 'etc' / 'ssl' / 'certs'})"


def untrust_system(ca: LocalCA, root: Path) -> str:
    path = root / "usr" / "local" / "share" / "ca-certificates" / CA_FILE
    if not path.exists():
        return f"system store: {path} was not there"
    try:
        path.unlink()
    except PermissionError:
        raise FluxError(f"system store: cannot remove {path}: run it with sudo") from None
    _update_ca_certificates(root, fresh=True)
    return f"system store: removed {path}"


def _certutil() -> str:
    tool = shutil.which("certutil")
    if tool is None:
        raise FluxError("NSS store: certutil not found: install Debian's libnss3-tools")
    return tool


def _nss_has(db: Path, nickname: str) -> bool:
    result = subprocess.run(
        [_certutil(), "-L", "-d", f"sql:{db}", "-n", nickname],
        capture_output=True,
        timeout=60,
    )
    return result.returncode == 0


def trust_nss(ca: LocalCA, db: Path) -> str:
    certutil = _certutil()
    if not (db / "cert9.db").exists():
        db.mkdir(parents=True, exist_ok=True, mode=0o700)
        _run([certutil, "-N", "-d", f"sql:{db}", "--empty-password"], "NSS store")
    nickname = ca_name()
    if _nss_has(db, nickname):  # -A would add a second copy; replace it instead
        _run([certutil, "-D", "-d", f"sql:{db}", "-n", nickname], "NSS store")
    # C: a trusted CA for TLS servers (not for e-mail or code signing).
    _run(
        [certutil, "-A", "-d", f"sql:{db}", "-t", "C,,", "-n", nickname, "-i", str(ca.cert)],
        "NSS store",
    )
    return f"NSS store: added {nickname!r} to {db}"


def untrust_nss(ca: LocalCA, db: Path) -> str:
    if not (db / "cert9.db").exists():
        return f"NSS store: no database at {db}"
    certutil, nickname = _certutil(), ca_name()
    removed = 0
    while _nss_has(db, nickname) and removed < 10:
        _run([certutil, "-D", "-d", f"sql:{db}", "-n", nickname], "NSS store")
        removed += 1
    return f"NSS store: removed {nickname!r} from {db}" if removed else f"NSS store: not in {db}"


def trust(ca: LocalCA, stores: tuple[str, ...], root: Path, db: Path) -> list[str]:
    done = []
    if "system" in stores:
        done.append(trust_system(ca, root))
    if "nss" in stores:
        done.append(trust_nss(ca, db))
    return done


def untrust(ca: LocalCA, stores: tuple[str, ...], root: Path, db: Path) -> list[str]:
    done = []
    if "system" in stores:
        done.append(untrust_system(ca, root))
    if "nss" in stores:
        done.append(untrust_nss(ca, db))
    return done
