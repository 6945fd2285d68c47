"""`flux secrets set|list|unset`: parse, call :mod:`fluxgw.secretstore`, print (never a value)."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path
from typing import Any

from .errors import FluxError
from .state import StateDir


def add_secrets_parser(commands: Any) -> None:
    secrets = commands.add_parser("secrets", help="secrets for functions (values never shown)")
    actions = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    set_ = actions.add_parser(
        "set", help="store NAME=VALUE pairs; a lone NAME reads its value from stdin"
    )
    set_.add_argument("pairs", nargs="*", metavar="NAME=VALUE|NAME")
    set_.add_argument("--env-file", type=Path, metavar="FILE", help="dotenv file of NAME=VALUE")
    listing = actions.add_parser("list", help="names, last update, digest, users")
    listing.add_argument("--json", action="store_true")
    unset = actions.add_parser("unset", help="remove secrets")
    unset.add_argument("names", nargs="+", metavar="NAME")


def secrets_command(project_dir: Path, args: argparse.Namespace) -> int:
    from .secretstore import set_secrets, unset_secrets

    state = StateDir(project_dir)
    if args.secrets_command == "set":
        pairs = _pairs(args)
        set_secrets(state, pairs, time.time())
        names = ", ".join(pairs)
        print(f"set {names}: running functions that use them get new workers within 1 s")
        return 0
    if args.secrets_command == "unset":
        unset_secrets(state, args.names)
        print(f"unset {', '.join(args.names)}")
        return 0
    return _list(state, args.json)


def _pairs(args: argparse.Namespace) -> dict[str, str]:
    from .secretstore import read_env_file

    pairs: dict[str, str] = read_env_file(args.env_file) if args.env_file else {}
    lone = [item for item in args.pairs if "=" not in item]
    if len(lone) > 1:
        raise FluxError("give one NAME to read from stdin at a time (or NAME=VALUE pairs)")
    for item in args.pairs:
        if "=" in item:
            name, value = item.split("=", 1)
            pairs[name] = value
    if lone:
        pairs[lone[0]] = _read_stdin(lone[0])
    if not pairs:
        raise FluxError("nothing to set: give NAME=VALUE, NAME (value on stdin) or --env-file")
    return pairs


def _read_stdin(name: str) -> str:
    if sys.stdin is None:
        raise FluxError(f"no standard input to read the value of {name} from")
    if sys.stdin.isatty():
        return getpass.getpass(f"value of {name} (not shown): ")
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FluxError(f"the value of {name} on stdin is not UTF-8 text") from None
    # `echo VALUE | flux secrets set NAME` adds one newline that is not part of the value.
    return text.removesuffix("\n").removesuffix("\r")


def _list(state: StateDir, as_json: bool) -> int:
    from .deploy import load_deployment
    from .printing import print_json, print_table, relative_time
    from .secretstore import load_secrets

    stored = load_secrets(state)
    functions = load_deployment(state).functions
    users = {name: sorted(s.name for s in functions if name in s.secrets) for name in stored}
    if as_json:
        print_json(
            [
                {
                    "name": s.name,
                    "updated_at": s.updated_at,
                    "sha256": s.digest,
                    "functions": users[s.name],
                }
                for s in stored.values()
            ]
        )
        return 0
    if not stored:
        print("no secrets yet: flux secrets set NAME=VALUE")
        return 0
    rows = [
        (s.name, relative_time(s.updated_at), s.digest, ",".join(users[s.name]) or "-")
        for s in sorted(stored.values(), key=lambda s: s.name)
    ]
    print_table(("NAME", "UPDATED", "SHA256", "FUNCTIONS"), rows)
    return 0
