"""What fluxgw declares as its public surface (fluxgw/__init__.py) is importable as documented."""

from __future__ import annotations

import subprocess
import sys

import fluxgw
import fluxgw.errors
import fluxgw.runtime
import fluxgw.testing


def test_declared_names_are_the_documented_objects() -> None:
    assert sorted(fluxgw.__all__) == [
        "ConfigError",
        "FluxError",
        "ProjectNotFound",
        "Response",
        "StateError",
    ]
    assert fluxgw.Response is fluxgw.runtime.Response
    for name in ("ConfigError", "StateError", "ProjectNotFound"):
        assert getattr(fluxgw, name) is getattr(fluxgw.errors, name)
        assert issubclass(getattr(fluxgw, name), fluxgw.FluxError)
    assert {"open_gateway", "FakeClock", "FluxTestGateway"} <= set(fluxgw.testing.__all__)


def test_importing_response_in_a_worker_stays_light() -> None:
    # Python workers import fluxgw.runtime for Response: the package must not drag in the
    # gateway (anyio, hypercorn) or typing with it.
    code = (
        "import sys; from fluxgw.runtime import Response; "
        "print(sorted(m for m in ('anyio', 'hypercorn', 'typing', 'fluxgw.errors') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(fluxgw.__path__[0].rsplit("/", 1)[0])},
    )
    assert out.stdout.strip() == "[]"
