"""`flux deploy` copies only regular files inside each function's folder (docs/limits.md).

Each refusal is one stderr line naming the path, exit 1, and leaves the last good deployment
live (nothing new under .flux/deployments/).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from tests.conftest import flux, write_function

pytestmark = pytest.mark.e2e

HANDLER = "def handler(request, ctx):\n    return 'ok'\n"


def deploy_refused(project: Path, *words: str) -> str:
    """Run `flux deploy`, expect a one-line refusal holding ``words``; return the line."""
    snapshots = sorted(os.listdir(project / ".flux" / "deployments"))
    result = flux(project, "deploy", check=False, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    for word in words:
        assert word in line, line
    assert sorted(os.listdir(project / ".flux" / "deployments")) == snapshots
    return line


@pytest.fixture
def deployed(project: Path) -> Path:
    """A project with one good deployment live; returns the function's folder."""
    folder = write_function(project, "x", HANDLER, route="/x", method="GET")
    flux(project, "deploy")
    return folder


def test_symlink_to_root_is_refused(project: Path, deployed: Path) -> None:
    (deployed / "root").symlink_to("/")
    deploy_refused(project, "functions/x/root", "outside its function folder")


def test_symlink_to_a_file_outside_is_refused(
    project: Path, deployed: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret\n")
    (deployed / "x").symlink_to(secret)
    deploy_refused(project, "functions/x/x", "outside its function folder")
    (deployed / "x").unlink()
    (deployed / "passwd").symlink_to("/etc/passwd")
    deploy_refused(project, "functions/x/passwd", "/etc/passwd")


def test_symlink_to_a_sibling_function_is_refused(project: Path, deployed: Path) -> None:
    other = write_function(project, "y", HANDLER, route="/y", method="GET")
    (deployed / "borrowed.py").symlink_to(other / "main.py")
    deploy_refused(project, "functions/x/borrowed.py", "outside its function folder")


def test_flux_json_pointing_at_dev_zero_is_refused(project: Path, deployed: Path) -> None:
    (deployed / "flux.json").unlink()
    (deployed / "flux.json").symlink_to("/dev/zero")
    deploy_refused(project, "functions/x/flux.json", "not a regular file")


def test_huge_flux_json_is_refused(project: Path, deployed: Path) -> None:
    config = {"name": "x", "runtime": "python", "route": "/x", "method": "GET"}
    (deployed / "flux.json").write_text(json.dumps(config) + " " * 100_000)
    deploy_refused(project, "functions/x/flux.json", "larger than 65536 bytes")


def test_fifo_is_refused_without_hanging(project: Path, deployed: Path) -> None:
    os.mkfifo(deployed / "pipe")
    deploy_refused(project, "functions/x/pipe", "is a FIFO")


def test_fifo_as_flux_json_is_refused_without_hanging(project: Path, deployed: Path) -> None:
    (deployed / "flux.json").unlink()
    os.mkfifo(deployed / "flux.json")
    deploy_refused(project, "functions/x/flux.json", "FIFO")


def test_socket_is_refused(project: Path, deployed: Path) -> None:
    # AF_UNIX paths are limited to ~108 bytes: bind from inside the folder.
    cwd = os.getcwd()
    os.chdir(deployed)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("sock")
            deploy_refused(project, "functions/x/sock", "is a socket")
    finally:
        os.chdir(cwd)


def test_device_file_is_refused(project: Path, deployed: Path) -> None:
    try:
        os.mknod(deployed / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (root); not available here")
    deploy_refused(project, "functions/x/zero", "character device")


def test_symlinked_function_folder_leaving_functions_is_refused(
    project: Path, deployed: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (project / "functions" / "z").symlink_to(outside)
    deploy_refused(project, "functions/z", "outside functions/")


def test_too_many_files_are_refused(project: Path, deployed: Path) -> None:
    data = deployed / "data"
    data.mkdir()
    for index in range(10_001):
        (data / str(index)).touch()
    deploy_refused(project, "more than 10000 files")


def test_too_big_a_snapshot_is_refused(project: Path, deployed: Path) -> None:
    with open(deployed / "big.bin", "wb") as big:  # sparse: no disk space used
        big.truncate(256 * 1024 * 1024 + 1)
    deploy_refused(project, "functions/x/big.bin", "larger than 256 MiB")


def test_symlink_inside_the_folder_is_copied_as_a_file(project: Path, deployed: Path) -> None:
    (deployed / "lib").mkdir()
    (deployed / "lib" / "helper.py").write_text("VALUE = 1\n")
    (deployed / "alias.py").symlink_to("lib/helper.py")
    flux(project, "deploy")
    live = json.loads((project / ".flux" / "deployment.json").read_text())
    copied = Path(live["functions"][0]["directory"]) / "alias.py"
    assert not copied.is_symlink() and copied.read_text() == "VALUE = 1\n"
