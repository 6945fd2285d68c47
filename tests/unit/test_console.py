"""flux's one voice (fluxgw.console): status lines, warnings once, log records in one style."""

from __future__ import annotations

import logging

import pytest

from fluxgw import console


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch):
    """A process that has warned nothing yet; logging set back as it was afterwards."""
    monkeypatch.setattr(console, "_warned", set())
    monkeypatch.setattr(console, "_status_to_stderr", False)
    monkeypatch.setenv("NO_COLOR", "1")
    root, hyper = logging.getLogger(), logging.getLogger("hypercorn.error")
    access = logging.getLogger("hypercorn.access")
    saved = (list(root.handlers), root.level, hyper.level, access.disabled)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    hyper.setLevel(saved[2])
    access.disabled = saved[3]


def test_status_lines_and_warnings_share_one_prefix(capsys):
    console.say("serving /p at http://127.0.0.1:4000")
    console.warn("nothing is deployed yet")
    out, err = capsys.readouterr()
    assert out == "flux: serving /p at http://127.0.0.1:4000\n"
    assert err == "flux: warning: nothing is deployed yet\n"


def test_a_warning_is_said_once_by_message_or_by_key(capsys):
    assert console.warn("sandbox unavailable: bwrap missing")
    assert not console.warn("sandbox unavailable: bwrap missing")
    assert console.warn("/p/.flux/keys.json is corrupt", once="corrupt:keys")
    assert not console.warn("/p/.flux/keys.json is corrupt (again)", once="corrupt:keys")
    assert capsys.readouterr().err.splitlines() == [
        "flux: warning: sandbox unavailable: bwrap missing",
        "flux: warning: /p/.flux/keys.json is corrupt",
    ]


def test_json_request_logs_move_status_lines_to_stderr(capsys):
    console.configure_logging(json_requests=True)
    console.say("serving")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "flux: serving\n")


def test_log_records_speak_with_the_same_voice(capsys):
    console.configure_logging()
    log = logging.getLogger("fluxgw.test")
    log.info("not shown")
    log.warning("queue: %d job(s) queued again", 2)
    log.warning("queue: %d job(s) queued again", 2)  # once
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("trace writer failed")
    log.error("twice is fine for errors")
    log.error("twice is fine for errors")
    logging.getLogger("hypercorn.error").info("Running on http://127.0.0.1:1 (CTRL + C to quit)")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "flux: warning: queue: 2 job(s) queued again"
    assert lines[1] == "flux: error: trace writer failed"
    assert lines[2] == "    Traceback (most recent call last):" and "ValueError: bad" in lines[-3]
    assert lines[-2:] == ["flux: error: twice is fine for errors"] * 2
    assert not any("Running on" in line or "not shown" in line for line in lines)
