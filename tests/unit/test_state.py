"""The .flux/ folder: atomic writes, private modes, corrupt files reported, never overwritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fluxgw.errors import StateError
from fluxgw.state import StateDir, fingerprint


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_folder_is_private_and_gitignored(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    assert mode(state.root) == 0o700
    assert (state.root / ".gitignore").read_text().splitlines()[-1] == "*"


def test_written_files_are_0600_and_leave_no_temp_files(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.write_json(state.keys_file, {"version": 1, "keys": []})
    assert mode(state.keys_file) == 0o600
    assert state.read_json(state.keys_file) == {"version": 1, "keys": []}
    assert sorted(p.name for p in state.root.iterdir()) == [".gitignore", "keys.json"]


def test_corrupt_file_is_reported_with_its_path_and_left_alone(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.ensure()
    state.keys_file.write_text('{"version": 1, "keys": [')
    with pytest.raises(StateError) as caught:
        state.read_json(state.keys_file)
    assert str(state.keys_file) in str(caught.value)
    assert "corrupt" in str(caught.value)
    assert state.keys_file.read_text() == '{"version": 1, "keys": ['


def test_missing_file_gives_the_default(tmp_path: Path) -> None:
    assert StateDir(tmp_path).read_json(tmp_path / ".flux" / "nope.json", default=[]) == []


def test_fingerprint_changes_on_every_write_even_same_size(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.write_json(state.settings_file, {"a": 1})
    first = fingerprint(state.settings_file)
    state.write_json(state.settings_file, {"a": 2})  # same size, maybe same mtime tick
    assert fingerprint(state.settings_file) != first
    assert fingerprint(tmp_path / "absent") is None


def test_lock_excludes_another_process_until_released(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading
    import time

    state = StateDir(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from fluxgw.state import StateDir\n"
            "with StateDir(Path(sys.argv[1])).lock():\n"
            "    print('held', flush=True); time.sleep(0.5)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        acquired_at: list[float] = []

        def take() -> None:
            with state.lock():
                acquired_at.append(time.monotonic())

        started = time.monotonic()
        waiter = threading.Thread(target=take)
        waiter.start()
        waiter.join(timeout=10)
        assert acquired_at, "lock never acquired"
        assert acquired_at[0] - started >= 0.2  # waited for the other process to let go
    finally:
        holder.kill()
        holder.wait()
    assert mode(state.lock_file) == 0o600
