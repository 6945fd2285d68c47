"""`.flux/store.json` and redis:// URLs: valid ones parse, anything else is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fluxgw.errors import FluxError, StateError
from fluxgw.state import StateDir
from fluxgw.store.config import load_store_config, parse_redis_url


def test_urls_parse_with_defaults_and_hide_the_password() -> None:
    a = parse_redis_url("redis://127.0.0.1")
    assert (a.host, a.port, a.db) == ("127.0.0.1", 6379, 0)
    b = parse_redis_url("redis://:s3cret@10.0.0.5:6390/3")
    assert (b.port, b.db, b.password) == (6390, 3, "s3cret")
    assert "s3cret" not in b.display and "s3cret" not in repr(b)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://x", "not a redis:// URL"),
        ("redis://", "names no host"),
        ("redis://h:99999", "invalid port"),
        ("redis://h/abc", "database must be a number"),
        ("redis://h/16", "database must be a number"),
        ("redis://h/0?ssl=1", "options"),
    ],
)
def test_bad_urls_are_one_line_errors(url: str, problem: str) -> None:
    with pytest.raises(FluxError, match=problem) as info:
        parse_redis_url(url)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_no_file_means_files_and_a_bad_file_names_itself(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert load_store_config(state).kind == "files"
    state.ensure()
    (state.root / "store.json").write_text(json.dumps({"url": "redis://h:1/2"}))
    config = load_store_config(state)
    assert config.kind == "redis" and config.fallback == "local"
    assert config.redis is not None and config.redis.port == 1
    (state.root / "store.json").write_text(json.dumps({"url": 5}))
    with pytest.raises(StateError, match=r"store\.json"):
        load_store_config(state)
    (state.root / "store.json").write_text(json.dumps({"fallback": "open"}))
    with pytest.raises(StateError, match="fallback"):
        load_store_config(state)
