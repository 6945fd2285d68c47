"""A project made by `flux init` comes with a test suite that passes as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import flux


def test_flux_init_project_tests_pass(tmp_path: Path) -> None:
    target = tmp_path / "myproject"
    flux(None, "init", str(target))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert not (target / ".flux" / "keys.json").exists()  # tests ran on a copy
