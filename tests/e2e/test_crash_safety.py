"""SIGKILL `flux api-keys create` and `flux deploy` at random instants: the state always loads
and holds every key whose creation was reported."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

from conftest import FLUX, flux, write_function

from fluxgw.deploy import load_deployment
from fluxgw.keyfile import load_records
from fluxgw.keys import hash_key
from fluxgw.state import StateDir

ROUNDS = 50


def kill_at_random(command: list[str], rng: random.Random, upper: float) -> str:
    """Start ``command``, SIGKILL it after a random delay, return what it printed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0, upper))
    process.send_signal(signal.SIGKILL)
    out, _ = process.communicate(timeout=30)
    return out.decode()


def test_kill_during_key_creation_never_loses_a_reported_key(project: Path) -> None:
    rng = random.Random(20261126)
    state = StateDir(project)
    flux(project, "project", "show")  # project id exists before the race starts
    # Calibrate: how long one create takes here, so kills land all over its run.
    started = time.monotonic()
    reported = [flux(project, "api-keys", "create", "--name", "calibrate").stdout.strip()]
    duration = time.monotonic() - started
    for i in range(ROUNDS):
        out = kill_at_random(
            [FLUX, "--project", str(project), "api-keys", "create", "--name", f"k{i}"],
            rng,
            duration * 1.3,
        )
        if out.strip():
            reported.append(out.strip())
        hashes = {record.key_hash for record in load_records(state)}  # must always load
        for key in reported:
            assert hash_key(key) in hashes
    assert len(reported) > 1, "no kill landed after a reported creation: calibrate"
    assert len(reported) < ROUNDS + 1, "every run finished: kills came too late to test anything"


def test_kill_during_deploy_leaves_a_loadable_deployment(project: Path) -> None:
    rng = random.Random(7)
    state = StateDir(project)
    for n in range(5):
        write_function(project, f"f{n}", "def handler(r, c):\n    return 1\n", route=f"/f{n}")
    started = time.monotonic()
    flux(project, "deploy")
    duration = time.monotonic() - started
    last_reported = 1
    for _ in range(ROUNDS):
        out = kill_at_random([FLUX, "--project", str(project), "deploy"], rng, duration * 1.3)
        deployment = load_deployment(state)  # must always load
        if out.startswith("Deployed version"):
            last_reported = int(out.split()[2])
        assert deployment.version >= last_reported
        assert len(deployment.functions) == 5
        for spec in deployment.functions:
            assert spec.entry_path.is_file()  # the live snapshot is complete
