"""Embed a real Flux gateway in a test (docs/reference.md#embedding-and-tests).

    async with open_gateway("path/to/project", plan="free") as gw:
        key = gw.create_key("ci")
        r = await gw.client.get("/hello", headers={"authorization": f"Bearer {key}"})
        gw.clock.advance(1.0)   # rate limits refill without sleeping
        gw.use_jwt_secret()     # user tokens: gw.mint_token("user-1"), or an IdentityProvider

The project's functions/ are copied into a temporary folder, so tests never touch the
project's own .flux/ (its keys, limits and traces). The gateway is the real one: the same
pipeline and real worker processes, served by hypercorn on 127.0.0.1 port 0 (suites run in
parallel), or in-process with ``in_process=True`` (``gw.app`` is the ASGI app, ``gw.client``
talks to it without a socket). It runs on anyio: under trio (pytest-trio) or asyncio
(anyio's pytest plugin) alike.
"""

from __future__ import annotations

import functools
import secrets
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx

from .auth.config import load_token_settings, update_token_settings
from .auth.mint import mint_for
from .auth.provider import IdentityProvider
from .deploy import deploy
from .gateway import Gateway, GatewayOptions
from .keyfile import create_key, revoke_key
from .runtime.options import DEFAULT_POOL, PoolOptions
from .secretstore import set_secrets, unset_secrets
from .settings import load_settings, update_settings
from .state import StateDir
from .tls import CertFiles, FunctionTrust, trust_in_functions, write_bundle

__all__ = ["FakeClock", "FluxTestGateway", "IdentityProvider", "open_gateway"]


class FakeClock:
    """A wall clock that moves only when told to: ``clock()`` -> epoch seconds."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a fake clock only moves forward; use set() to go back")
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = now


@attrs.define
class FluxTestGateway:
    """What a test gets: a client bound to the gateway, and helpers to arrange state."""

    gateway: Gateway
    project_dir: Path
    client: httpx.AsyncClient
    clock: FakeClock
    url: str
    ca_cert: Path | None = None  # with tls=True: the test CA's PEM (what clients trust)

    @property
    def app(self) -> Gateway:
        """The ASGI app (for httpx.ASGITransport or another ASGI test client)."""
        return self.gateway

    @property
    def state(self) -> StateDir:
        return self.gateway.state

    def create_key(self, name: str, *, functions: Iterable[str] = (), test: bool = False) -> str:
        """Create a key and make the running gateway accept it at once."""
        settings = load_settings(self.state, create=True)
        key = create_key(
            self.state, settings.project_id, name=name, test=test, functions=tuple(functions)
        )
        self._reload()
        return key

    def revoke_key(self, name: str) -> None:
        revoke_key(self.state, name)
        self._reload()

    def set_plan(self, plan: str) -> None:
        update_settings(self.state, plan=plan)
        self._reload()

    def set_cors_origins(self, origins: Iterable[str]) -> None:
        update_settings(self.state, cors_origins=list(origins))
        self._reload()

    def set_secret(self, name: str, value: str) -> None:
        """Store a secret; functions declaring it get new workers with the value at once."""
        set_secrets(self.state, {name: value}, time.time())
        self._reload()

    def unset_secret(self, name: str) -> None:
        unset_secrets(self.state, [name])
        self._reload()

    def redeploy(self) -> None:
        """Deploy the (copied) project's functions/ again, e.g. after editing a file."""
        deploy(self.state)
        self._reload()

    def auth(self, key: str) -> dict[str, str]:
        """Headers for a key or a user token: ``{"authorization": "Bearer ..."}``."""
        return {"authorization": f"Bearer {key}"}

    def use_jwt_secret(
        self, secret: bytes | None = None, *, issuer: str | None = None, audience: str | None = None
    ) -> bytes:
        """Take HS256 user tokens signed with ``secret`` (a random one by default); returns it.
        :meth:`mint_token` signs with it."""
        # text, not raw bytes: 32 random bytes start with "{" once in 256 draws, which the
        # settings refuse as "looks like a key"
        secret = secret if secret is not None else secrets.token_urlsafe(32).encode()
        update_token_settings(self.state, secret=secret, issuer=issuer, audience=audience)
        self._reload()
        return secret

    def use_identity_provider(self, provider: IdentityProvider) -> None:
        """Take user tokens from ``provider`` (its served key set, issuer and audience)."""
        update_token_settings(
            self.state,
            jwks_url=provider.jwks_url,
            issuer=provider.issuer,
            audience=provider.audience,
        )
        self._reload()

    def mint_token(
        self, subject: str, *, ttl: float = 3600, claims: dict[str, Any] | None = None
    ) -> str:
        """A user token for ``subject`` signed with the project secret (see use_jwt_secret),
        issued at the gateway's clock."""
        settings = load_token_settings(self.state)
        if settings is None:
            raise ValueError("the project takes no user tokens: call use_jwt_secret() first")
        return mint_for(settings, subject, ttl=ttl, claims=claims, now=self.clock())

    def _reload(self) -> None:
        # Files are tiny; reading them inline keeps the helpers synchronous and immediate.
        self.gateway.install(self.gateway.loader.load())


@asynccontextmanager
async def open_gateway(
    project_dir: str | Path,
    *,
    plan: str | None = None,
    clock: FakeClock | None = None,
    in_process: bool = False,
    tracing: bool = True,
    max_workers: int = DEFAULT_POOL.max_workers,
    secrets: Mapping[str, str] | None = None,
    sandbox: bool = True,
    tls: bool = False,
) -> AsyncIterator[FluxTestGateway]:
    """Start a gateway for a copy of ``project_dir`` (its functions/ folder); ``secrets`` are
    stored before the deploy (functions may declare them), ``sandbox`` as `flux serve`'s.

    ``tls=True`` serves HTTPS (HTTP/2 via ALPN) with a certificate of a throwaway CA
    (trustme); ``gw.client`` and the functions trust that CA, and ``gw.ca_cert`` is its PEM.
    """
    if tls and in_process:
        raise ValueError("tls=True needs a real socket: not with in_process=True")
    source = Path(project_dir)
    if not (source / "functions").is_dir():
        raise FileNotFoundError(f"{source} has no functions/ folder")
    clock = clock or FakeClock()
    with tempfile.TemporaryDirectory(prefix="flux-test-") as tmp:
        root = Path(tmp) / source.resolve().name
        shutil.copytree(
            source / "functions",
            root / "functions",
            ignore=shutil.ignore_patterns("__pycache__", "node_modules"),
        )
        _link_node_modules(source / "functions", root / "functions")
        state = StateDir(root)
        load_settings(state, create=True)
        if plan is not None:
            update_settings(state, plan=plan)
        if secrets:
            set_secrets(state, secrets, time.time())
        deploy(state)
        gateway = Gateway(
            state,
            GatewayOptions(
                clock=clock,
                tracing=tracing,
                pool=PoolOptions(max_workers=max_workers),
                sandbox=sandbox,
            ),
        )
        gateway.load()
        async with anyio.create_task_group() as tasks:
            if in_process:
                await tasks.start(gateway.run)
                url = "http://flux.test"
                transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=gateway)
                client = httpx.AsyncClient(transport=transport, base_url=url)
                shutdown = None
            else:
                from .server import serve_gateway

                certificate = _test_certificate(Path(tmp)) if tls else None
                shutdown = anyio.Event()
                binds = await tasks.start(
                    functools.partial(
                        serve_gateway,
                        gateway,
                        "127.0.0.1",
                        0,
                        grace_period=2.0,
                        shutdown=shutdown,
                        tls=certificate,
                    )
                )
                url = binds[0]
                verify: ssl.SSLContext | bool = True
                if tls:
                    verify = ssl.create_default_context(cafile=str(Path(tmp) / "ca.pem"))
                client = httpx.AsyncClient(base_url=url, timeout=60, verify=verify, http2=tls)
            try:
                ca_cert = Path(tmp) / "ca.pem" if tls else None
                yield FluxTestGateway(gateway, root, client, clock, url, ca_cert)
            finally:
                if tls:
                    trust_in_functions(None)
                await client.aclose()
                if shutdown is not None:
                    shutdown.set()
                else:
                    tasks.cancel_scope.cancel()


def _test_certificate(folder: Path) -> CertFiles:
    """A throwaway CA (ca.pem) and its certificate for localhost, 127.0.0.1 and ::1; the
    functions of this gateway trust the CA."""
    import trustme

    ca = trustme.CA(organization_name="flux test CA")
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    files = CertFiles(folder / "cert.pem", folder / "key.pem")
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key))
    bundle = write_bundle(folder / "ca.pem", folder / "bundle.pem")
    trust_in_functions(FunctionTrust(folder / "ca.pem", bundle))
    return files


def _link_node_modules(source: Path, target: Path) -> None:
    """Functions' node_modules are linked, not copied (they can be large)."""
    for modules in source.glob("*/node_modules"):
        link = target / modules.parent.name / "node_modules"
        if not link.exists():
            link.symlink_to(modules.resolve(), target_is_directory=True)
