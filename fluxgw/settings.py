"""Project settings in .flux/project.json: project id, plan, CORS allowlist."""

from __future__ import annotations

import re
from typing import Any

import attrs

from .cors import normalize_origin
from .errors import FluxError, StateError
from .ratelimit import PLANS
from .safeio import clip, shorten
from .state import StateDir, new_project_id

PROJECT_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


@attrs.frozen
class ProjectSettings:
    project_id: str
    plan: str = "free"
    cors_origins: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "plan": self.plan,
            "cors_origins": list(self.cors_origins),
        }


def _from_json(path: str, data: Any) -> ProjectSettings:
    """Validate project.json; StateError names the file and the field."""

    def refuse(field: str, problem: str) -> StateError:
        return StateError(path, f"field '{field}': {problem}; left untouched")

    if not isinstance(data, dict):
        raise StateError(path, "must hold a JSON object; left untouched")
    project_id = data.get("project_id")
    plan = data.get("plan", "free")
    origins = data.get("cors_origins", [])
    if not isinstance(project_id, str) or not PROJECT_ID.fullmatch(project_id):
        raise refuse("project_id", f"must be 1-64 letters or digits, got {clip(project_id)}")
    if not isinstance(plan, str) or plan not in PLANS:
        raise refuse("plan", f"{clip(plan)} is not one of {', '.join(PLANS)}")
    if not isinstance(origins, list):
        raise refuse("cors_origins", f"must be a list of origins, got {clip(origins)}")
    normalized = []
    for index, origin in enumerate(origins):
        try:
            normalized.append(normalize_origin(origin))  # as `flux project update` stores it
        except ValueError as exc:
            raise refuse(f"cors_origins[{index}]", shorten(str(exc), 200)) from None
    return ProjectSettings(project_id=project_id, plan=plan, cors_origins=tuple(normalized))


def load_settings(state: StateDir, *, create: bool = False) -> ProjectSettings:
    """The project's settings; with ``create``, a fresh project id is written on first use."""
    data = state.read_json(state.settings_file)
    if data is not None:
        return _from_json(str(state.settings_file), data)
    settings = ProjectSettings(project_id=new_project_id())
    if create:
        with state.lock():
            data = state.read_json(state.settings_file)
            if data is not None:  # another command won the race
                return _from_json(str(state.settings_file), data)
            state.write_json(state.settings_file, settings.to_json())
    return settings


def update_settings(
    state: StateDir, *, plan: str | None = None, cors_origins: list[str] | None = None
) -> ProjectSettings:
    """Apply `flux project update`: validate first, then one atomic write under the lock."""
    if plan is not None and plan not in PLANS:
        raise FluxError(f"unknown plan {plan!r}: choose one of {', '.join(PLANS)}")
    normalized: tuple[str, ...] | None = None
    if cors_origins is not None:
        try:
            normalized = tuple(dict.fromkeys(normalize_origin(o) for o in cors_origins if o))
        except ValueError as exc:
            raise FluxError(f"--cors-origin: {exc}") from None
    load_settings(state, create=True)
    with state.lock():
        current = _from_json(str(state.settings_file), state.read_json(state.settings_file))
        updated = attrs.evolve(
            current,
            plan=plan if plan is not None else current.plan,
            cors_origins=normalized if normalized is not None else current.cors_origins,
        )
        state.write_json(state.settings_file, updated.to_json())
    return updated
