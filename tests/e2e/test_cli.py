"""The real `flux` command (docs/reference.md#command-line): output, exit codes, state files."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

from conftest import FLUX, flux, write_function

KEY_PATTERN = re.compile(r"flx_(live|test)_[0-9A-Za-z]{44}")


def test_init_then_deploy_prints_the_routing_table(tmp_path: Path) -> None:
    target = tmp_path / "new"
    flux(None, "init", str(target))
    assert (target / ".flux" / ".gitignore").exists()
    assert (target / ".gitignore").read_text().startswith(".flux/")
    result = flux(target, "deploy")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Deployed version 1 (3 functions)")
    assert lines[1].split() == ["METHOD", "ROUTE", "FUNCTION", "RUNTIME"]
    table = {tuple(line.split()[:3]) for line in lines[2:]}
    assert table == {
        ("GET", "/hello/deno", "hello_deno"),
        ("POST", "/hello/node", "hello_node"),
        ("GET", "/hello/python", "hello_python"),
    }
    routes = json.loads(flux(target, "routes", "--json").stdout)
    assert routes["version"] == 1
    assert sorted(f["name"] for f in routes["functions"]) == [
        "hello_deno",
        "hello_node",
        "hello_python",
    ]


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    flux(None, "init", str(tmp_path / "p"))
    again = flux(None, "init", str(tmp_path / "p"), check=False)
    assert again.returncode == 1
    assert "not overwriting" in again.stderr


def test_refused_deploy_names_file_and_field_and_keeps_the_live_one(project: Path) -> None:
    write_function(project, "hello", "def handler(r, c):\n    return 1\n", route="/hello")
    flux(project, "deploy")
    (project / "functions" / "hello" / "flux.json").write_text(
        json.dumps({"name": "hello", "runtime": "python", "methd": "GET"})
    )
    result = flux(project, "deploy", check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert "functions/hello/flux.json: field 'methd'" in result.stderr
    live = json.loads(flux(project, "routes", "--json").stdout)
    assert live["version"] == 1
    assert [f["route"] for f in live["functions"]] == ["/hello"]


def test_deploy_snapshots_the_code(project: Path) -> None:
    folder = write_function(project, "hello", "def handler(r, c):\n    return 'v1'\n")
    flux(project, "deploy")
    (folder / "main.py").write_text("def handler(r, c):\n    return 'v2'\n")
    live = json.loads(flux(project, "routes", "--json").stdout)
    snapshot = Path(live["functions"][0]["directory"]) / "main.py"
    assert "v1" in snapshot.read_text()  # the live code changes only with the next deploy


def test_api_keys_create_list_revoke(project: Path) -> None:
    write_function(project, "hello", "def handler(r, c):\n    return 1\n")
    created = flux(project, "api-keys", "create", "--name", "ci")
    assert KEY_PATTERN.fullmatch(created.stdout.strip())
    assert created.stdout.count("\n") == 1
    key = created.stdout.strip()
    test_key = flux(
        project, "api-keys", "create", "--name", "t", "--test", "--function", "hello"
    ).stdout.strip()
    assert test_key.startswith("flx_test_")

    listing = flux(project, "api-keys", "list").stdout.splitlines()
    assert listing[0].split()[:5] == ["NAME", "PREFIX", "ENV", "CREATED", "LAST"]
    row = next(line for line in listing if line.startswith("ci "))
    assert f"{key[:19]}..." in row  # prefix + project tag + 4 random chars
    assert "just now" in row and "never" in row and "active" in row
    scoped = next(line for line in listing if line.startswith("t "))
    assert "hello" in scoped

    as_json = json.loads(flux(project, "api-keys", "list", "--json").stdout)
    assert {k["name"] for k in as_json} == {"ci", "t"}
    assert all(key not in json.dumps(k) for k in as_json)

    duplicate = flux(project, "api-keys", "create", "--name", "ci", check=False)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr

    flux(project, "api-keys", "revoke", "ci")
    row = next(
        line
        for line in flux(project, "api-keys", "list").stdout.splitlines()
        if line.startswith("ci ")
    )
    assert "revoked" in row
    again = flux(project, "api-keys", "revoke", "ci", check=False)
    assert again.returncode == 1 and "no active key named 'ci'" in again.stderr


def test_no_state_file_holds_a_key_and_keys_file_is_private(project: Path) -> None:
    write_function(project, "hello", "def handler(r, c):\n    return 1\n")
    flux(project, "deploy")
    keys = [flux(project, "api-keys", "create", "--name", f"k{i}").stdout.strip() for i in range(3)]
    keys_file = project / ".flux" / "keys.json"
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o600
    for path in (project / ".flux").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for key in keys:
                assert key.encode() not in content, path
                assert key[9 + 6 : 9 + 38].encode() not in content, path  # the random part


def test_scoping_to_an_unknown_function_is_refused(project: Path) -> None:
    write_function(project, "hello", "def handler(r, c):\n    return 1\n")
    result = flux(project, "api-keys", "create", "--name", "x", "--function", "nope", check=False)
    assert result.returncode == 1
    assert "'nope'" in result.stderr


def test_project_update_and_show(project: Path) -> None:
    shown = json.loads(flux(project, "project", "show", "--json").stdout)
    assert shown["plan"] == "free" and shown["cors_origins"] == []
    assert shown["limits"] == {"rate_per_minute": 60, "burst": 120}
    flux(
        project,
        "project",
        "update",
        "--plan",
        "pro",
        "--cors-origin",
        "https://App.example.com:443/",
        "--cors-origin",
        "http://localhost:3000",
    )
    shown = json.loads(flux(project, "project", "show", "--json").stdout)
    assert shown["plan"] == "pro"
    assert shown["limits"] == {"rate_per_minute": 1000, "burst": 2000}
    assert shown["cors_origins"] == ["https://app.example.com", "http://localhost:3000"]
    text = flux(project, "project", "show").stdout
    assert "pro" in text and "https://app.example.com" in text

    bad_origin = flux(project, "project", "update", "--cors-origin", "not a url", check=False)
    assert bad_origin.returncode == 1 and "--cors-origin" in bad_origin.stderr
    bad_plan = flux(project, "project", "update", "--plan", "gold", check=False)
    assert bad_plan.returncode == 2


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    nowhere = subprocess.run([FLUX, "routes"], cwd=tmp_path, capture_output=True, text=True)
    assert nowhere.returncode == 1
    assert nowhere.stderr.count("\n") == 1 and "flux init" in nowhere.stderr
    usage = subprocess.run([FLUX, "frobnicate"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_project_is_found_upward(project: Path) -> None:
    folder = write_function(project, "hello", "def handler(r, c):\n    return 1\n")
    result = subprocess.run([FLUX, "deploy"], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (project / ".flux" / "deployment.json").exists()


def test_corrupt_keys_file_is_reported_not_overwritten(project: Path) -> None:
    flux(project, "api-keys", "create", "--name", "a")
    keys_file = project / ".flux" / "keys.json"
    keys_file.write_text("{not json")
    result = flux(project, "api-keys", "create", "--name", "b", check=False)
    assert result.returncode == 1
    assert str(keys_file) in result.stderr and "corrupt" in result.stderr
    assert keys_file.read_text() == "{not json"
