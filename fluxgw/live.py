"""The gateway's live view of the project: keys, settings and routes, swapped atomically.

A request reads one :class:`LiveState` reference at its start and uses it to the end, so a
reload mid-request never mixes two versions. :class:`LiveLoader` notices changes with a stat
of three small files (fingerprint: mtime, size, inode), and parses them in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from .auth.config import load_token_settings, settings_path
from .auth.tokens import TokenVerifier
from .cors import CorsPolicy
from .deploy import Deployment, load_deployment
from .errors import StateError
from .keyfile import load_records
from .keys import KeyStore, KeyStoreError
from .ratelimit import PLANS, Plan
from .redact import EMPTY, Redactor
from .routing import RouteTable
from .secretstore import current_secrets, secrets_file
from .settings import ProjectSettings, load_settings
from .state import Fingerprint, StateDir, fingerprint


@attrs.frozen
class LiveState:
    settings: ProjectSettings
    plan: Plan
    cors: CorsPolicy
    keys: KeyStore
    deployment: Deployment
    routes: RouteTable
    tokens: TokenVerifier | None = None  # None: the project takes no user tokens
    secrets: Mapping[str, str] = attrs.field(factory=dict, repr=False)  # name -> value
    redactor: Redactor = attrs.field(default=EMPTY, repr=False)


@attrs.frozen
class Fingerprints:
    settings: Fingerprint
    keys: Fingerprint
    deployment: Fingerprint
    tokens: Fingerprint = None
    secrets: Fingerprint = None
    dotenv: Fingerprint = None


class LiveLoader:
    """Loads LiveState from .flux/, reusing the parts whose file did not change."""

    def __init__(
        self,
        state: StateDir,
        clock: Callable[[], float] | None = None,
        dotenv: Path | None = None,
    ) -> None:
        self.state = state
        self.clock = clock or time.time  # for token time checks and the key set cache
        self.dotenv = dotenv  # `flux dev`: functions/.env, over the stored secrets
        self.seen: Fingerprints | None = None
        self.current: LiveState | None = None
        # A corrupt file is parsed (and reported) once per distinct content, not every 200 ms:
        # the fingerprints of the failed attempt, and the file and fingerprint last reported.
        self.failed: Fingerprints | None = None
        self.reported: tuple[str, Fingerprint] | None = None

    def fingerprints(self) -> Fingerprints:
        return Fingerprints(
            settings=self.state.fingerprint(self.state.settings_file),
            keys=self.state.fingerprint(self.state.keys_file),
            deployment=self.state.fingerprint(self.state.deployment_file),
            tokens=self.state.fingerprint(settings_path(self.state)),
            secrets=self.state.fingerprint(secrets_file(self.state)),
            dotenv=fingerprint(self.dotenv) if self.dotenv else None,
        )

    def changed(self) -> bool:
        """Did a file change since the last load, or since the last failed attempt?"""
        marks = self.fingerprints()
        return marks != self.seen and marks != self.failed

    def first_report(self, exc: StateError) -> bool:
        """True the first time this problem (this file with this content) is seen: log it then,
        and not again until the file changes (docs/limits.md)."""
        key = (exc.path, fingerprint(Path(exc.path)))
        if key == self.reported:
            return False
        self.reported = key
        return True

    def take_recovered(self) -> str | None:
        """The file last reported as corrupt, if the last load succeeded since ("X is valid
        again"); then forgets it."""
        if self.reported is None or self.failed is not None:
            return None
        path, self.reported = self.reported[0], None
        return path

    def load(self) -> LiveState:
        """Blocking (file reads): call from a thread when the event loop is running.

        Raises StateError if a file is corrupt: the caller keeps the previous LiveState.
        """
        marks = self.fingerprints()
        try:
            live = self._load(marks)
        except BaseException:
            self.failed = marks
            raise
        self.failed = None
        return live

    def _load(self, marks: Fingerprints) -> LiveState:
        old, previous = self.current, self.seen
        settings = load_settings(self.state, create=True)
        if (
            old is None
            or previous is None
            or marks.keys != previous.keys
            or (settings.project_id != old.settings.project_id)
        ):
            try:
                keys = KeyStore(settings.project_id, load_records(self.state))
            except KeyStoreError as exc:  # e.g. two active keys with one name, edited by hand
                raise StateError(str(self.state.keys_file), f"{exc}; left untouched") from None
        else:
            keys = old.keys
        if old is None or previous is None or marks.deployment != previous.deployment:
            deployment = load_deployment(self.state)
            routes = RouteTable(deployment.functions)
        else:
            deployment, routes = old.deployment, old.routes
        if old is None or previous is None or marks.tokens != previous.tokens:
            token_settings = load_token_settings(self.state)
            tokens = TokenVerifier(token_settings, self.clock) if token_settings else None
        else:
            tokens = old.tokens
        if (
            old is None
            or previous is None
            or (marks.secrets, marks.dotenv) != (previous.secrets, previous.dotenv)
        ):
            secrets: Mapping[str, str] = current_secrets(self.state, self.dotenv)
            redactor = Redactor(secrets)
        else:
            secrets, redactor = old.secrets, old.redactor
        live = LiveState(
            settings=settings,
            plan=PLANS[settings.plan],
            cors=CorsPolicy(allowed_origins=settings.cors_origins),
            keys=keys,
            deployment=deployment,
            routes=routes,
            tokens=tokens,
            secrets=secrets,
            redactor=redactor,
        )
        self.current, self.seen = live, marks
        return live
