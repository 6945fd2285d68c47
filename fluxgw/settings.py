"""Project settings in .flux/project.json: project id, plan, CORS allowlist."""

from __future__ import annotations

from typing import Any

import attrs

from .cors import normalize_origin
from .errors import FluxError, StateError
from .ratelimit import PLANS
from .state import StateDir, new_project_id


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
    try:
        project_id = data["project_id"]
        plan = data.get("plan", "free")
        origins = data.get("cors_origins", [])
        if not isinstance(project_id, str) or not project_id:
            raise ValueError("project_id must be a non-empty string")
        if plan not in PLANS:
            raise ValueError(f"plan {plan!r} is not one of {', '.join(PLANS)}")
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise ValueError("cors_origins must be a list of strings")
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise StateError(path, f"is not valid project settings ({exc}); left untouched") from None
    return ProjectSettings(project_id=project_id, plan=plan, cors_origins=tuple(origins))


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
