"""A revocation wins over traces on a full disk (docs/limits.md, "Full disk").

The project lives on a small tmpfs; a function that prints a lot fills it with traces until
the trace writer can no longer write. `flux api-keys revoke` must still succeed (it uses the
space the gateway keeps in reserve) and the running gateway must refuse the key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer, flux, key_for, serve, write_function

pytestmark = pytest.mark.e2e

TMPFS_MIB = 40
NOISY = """\
def handler(request, ctx):
    for _ in range(40):
        print("x" * 5000)  # ~200 KB of log lines per call, all kept in the trace
    return "ok"
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot create a small tmpfs here")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root/CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def test_revoke_succeeds_and_takes_effect_on_a_disk_full_of_traces(small_disk: Path) -> None:
    project = small_disk / "proj"
    (project / "functions").mkdir(parents=True)
    write_function(project, "noisy", NOISY, route="/noisy", method="GET")
    flux(project, "deploy")
    flux(project, "project", "update", "--plan", "team")
    key = key_for(project, "victim")
    with serve(project) as gw, httpx.Client(base_url=gw.url, timeout=30) as http:
        assert http.get("/noisy", headers=bearer(key)).status_code == 200
        # Fill the disk with traces until the trace writer fails for lack of space.
        deadline = time.monotonic() + 120
        while not any("traces are dropped" in line for line in list(gw.output)):
            assert time.monotonic() < deadline, f"disk not full: {free_bytes(small_disk)} free"
            with contextlib.suppress(httpx.HTTPError):
                http.get("/noisy", headers=bearer(key))
        assert free_bytes(small_disk) < 1024 * 1024, free_bytes(small_disk)

        revoked = flux(project, "api-keys", "revoke", "victim", check=False)
        assert revoked.returncode == 0, revoked.stderr

        deadline = time.monotonic() + 10
        while (answer := http.get("/noisy", headers=bearer(key))).status_code != 401:
            assert time.monotonic() < deadline, answer.status_code
            time.sleep(0.1)
        assert answer.json()["error"] == "revoked_key"
