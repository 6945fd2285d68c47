"""live.LiveLoader: the gateway's view of .flux/, reloaded only where a file changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxgw.deploy import deploy
from fluxgw.errors import StateError
from fluxgw.keyfile import create_key
from fluxgw.live import LiveLoader
from fluxgw.settings import load_settings, update_settings
from fluxgw.state import StateDir


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    folder = tmp_path / "functions" / "hello"
    folder.mkdir(parents=True)
    (folder / "flux.json").write_text('{"name": "hello", "runtime": "python"}')
    (folder / "main.py").write_text("def handler(request, ctx):\n    return 1\n")
    state = StateDir(tmp_path)
    load_settings(state, create=True)
    return state


def test_first_load_reads_everything(state: StateDir) -> None:
    deploy(state)
    loader = LiveLoader(state)
    assert loader.changed()
    live = loader.load()
    assert not loader.changed()
    assert live.plan.name == "free" and len(live.keys) == 0
    assert live.routes.lookup("POST", "/hello").spec is not None


def test_a_change_reloads_only_its_part(state: StateDir) -> None:
    loader = LiveLoader(state)
    first = loader.load()
    assert first.deployment.version == 0
    settings = load_settings(state)
    create_key(state, settings.project_id, name="ci")
    assert loader.changed()
    second = loader.load()
    assert len(second.keys) == 1
    assert second.routes is first.routes  # deployment untouched: the same table object
    update_settings(state, plan="pro")
    third = loader.load()
    assert third.plan.name == "pro" and third.keys is second.keys
    deploy(state)
    fourth = loader.load()
    assert fourth.deployment.version == 1 and fourth.routes is not first.routes


def test_a_corrupt_keys_file_raises_and_keeps_the_loader_on_the_last_good_state(
    state: StateDir,
) -> None:
    loader = LiveLoader(state)
    good = loader.load()
    state.keys_file.write_text("{not json")
    with pytest.raises(StateError):
        loader.load()
    assert loader.current is good
