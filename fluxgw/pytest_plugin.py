"""pytest plugin (registered by entry point): the ``flux_gateway`` fixture.

It starts a real gateway (fluxgw.testing.open_gateway) on a copy of the project that holds the
test suite: the nearest folder at or above pytest's rootdir that has functions/. Override the
``flux_project_dir`` fixture to point it elsewhere. The fixture is async: run the test with
pytest-trio (trio_mode, or @pytest.mark.trio) or with anyio's pytest plugin
(@pytest.mark.anyio, on trio or asyncio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest


@pytest.fixture
def flux_project_dir(request: pytest.FixtureRequest) -> Path:
    from .project import find_project

    return find_project(Path(request.config.rootpath))


@pytest.fixture
async def flux_gateway(flux_project_dir: Path) -> AsyncIterator[object]:
    from .testing import open_gateway

    async with open_gateway(flux_project_dir) as gateway:
        yield gateway
