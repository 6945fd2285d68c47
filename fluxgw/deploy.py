"""Deployments: validate the source, snapshot it, then switch the live pointer atomically.

A deployment is a copy of ``functions/`` under ``.flux/deployments/<n>/`` plus the validated
specs in ``.flux/deployment.json``. The running gateway serves the snapshot, not the source, so
editing a file never changes what is live until the next `flux deploy` (self-hosted mode), and
a refused deploy leaves the last good one live: nothing is written before validation passes,
and the pointer is switched with one atomic rename after the copy is complete.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

import attrs

from . import snapshot
from .errors import ConfigError, StateError
from .project import FieldError, FunctionSpec, load_functions
from .routing import RouteTable
from .safeio import clip
from .secretstore import check_declared, current_secrets
from .state import StateDir, fsync_dir

KEEP_DEPLOYMENTS = 3  # old snapshots kept so workers draining them still find their files


@attrs.frozen
class Deployment:
    version: int
    deployed_at: float
    functions: tuple[FunctionSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "deployed_at": self.deployed_at,
            "functions": [spec.to_json() for spec in self.functions],
        }


EMPTY = Deployment(version=0, deployed_at=0.0, functions=())


def load_deployment(state: StateDir) -> Deployment:
    """The live deployment from deployment.json; StateError names the file and field."""
    data = state.read_json(state.deployment_file)
    if data is None:
        return EMPTY
    path = str(state.deployment_file)

    def refuse(field: str, problem: str) -> StateError:
        return StateError(path, f"field '{field}': {problem}; left untouched")

    if not isinstance(data, dict):
        raise StateError(path, "must hold a JSON object; left untouched")
    version, deployed_at, items = (data.get(f) for f in ("version", "deployed_at", "functions"))
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise refuse("version", f"must be a whole number >= 0, got {clip(version)}")
    if isinstance(deployed_at, bool) or not isinstance(deployed_at, int | float):
        raise refuse("deployed_at", f"must be epoch seconds, got {clip(deployed_at)}")
    if not isinstance(items, list):
        raise refuse("functions", f"must be a list, got {clip(items)}")
    functions = []
    for index, item in enumerate(items):
        try:
            functions.append(FunctionSpec.from_json(item))
        except FieldError as exc:
            raise refuse(f"functions[{index}].{exc.field}", exc.problem) from None
    try:
        RouteTable(functions)  # two functions with one name, or on one route + method
    except ValueError as exc:
        raise refuse("functions", str(exc)) from None
    return Deployment(version=version, deployed_at=float(deployed_at), functions=tuple(functions))


def deploy(state: StateDir, *, dotenv: Path | None = None) -> Deployment:
    """Validate every flux.json (raises ConfigError, nothing written), snapshot, switch.

    A function naming a secret that is not stored (nor in ``dotenv``, `flux dev`) is refused."""
    project_dir = state.project_dir
    specs = load_functions(project_dir)  # validation first: a refused deploy writes nothing
    check_declared(specs, current_secrets(state, dotenv), dev_env=dotenv)
    checked = snapshot.plan(project_dir / "functions")
    state.ensure()
    with state.lock():
        current = load_deployment(state)
        version = max(current.version, _highest_snapshot(state)) + 1
        target = state.deployments_dir / str(version)
        staging = state.deployments_dir / f"{version}.tmp"
        state.deployments_dir.mkdir(mode=0o700, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        try:
            snapshot.copy(checked, staging / "functions")
            staging.rename(target)
            fsync_dir(state.deployments_dir)
        except ConfigError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StateError(str(target), f"cannot snapshot functions: {exc}") from None
        # Re-validate from the snapshot so the live specs point at the copied files (and a file
        # that changed between validation and copy is still checked).
        snapshot_specs = load_functions(target)
        del specs
        deployment = Deployment(version=version, deployed_at=time.time(), functions=snapshot_specs)
        state.write_json(state.deployment_file, deployment.to_json())
        _prune(state, keep_from=version - KEEP_DEPLOYMENTS + 1)
    return deployment


def _highest_snapshot(state: StateDir) -> int:
    highest = 0
    if state.deployments_dir.is_dir():
        for entry in state.deployments_dir.iterdir():
            stem = entry.name.removesuffix(".tmp")
            if stem.isdigit():
                highest = max(highest, int(stem))
    return highest


def _prune(state: StateDir, *, keep_from: int) -> None:
    for entry in state.deployments_dir.iterdir():
        stem = entry.name.removesuffix(".tmp")
        if stem.isdigit() and (int(stem) < keep_from or entry.name.endswith(".tmp")):
            with contextlib.suppress(OSError):
                shutil.rmtree(entry)
