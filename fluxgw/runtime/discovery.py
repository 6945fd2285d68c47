"""Find the runtime binaries (python, node, deno) and say how to install a missing one.

Lookup order: python is always ``sys.executable`` (the gateway's own interpreter, so
``fluxgw.runtime.Response`` is importable in workers). node: ``$FLUX_NODE``, else ``PATH``.
deno: ``$FLUX_DENO``, else ``PATH``, else ``<repo>/.tools/node_modules/.bin/deno`` where the
project's ``scripts/setup`` installs it from npm. Results are cached per (runtime, env, PATH);
tests inject their own :class:`RuntimeFinder`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import fluxgw

REPO_DIR = Path(fluxgw.__file__).resolve().parents[1]
SHIMS_DIR = Path(__file__).resolve().parent / "shims"

INSTALL_HINTS = {
    "node": "node is not installed: install Node.js 20+ (or run scripts/setup), "
    "put node on PATH or set FLUX_NODE",
    "deno": "deno is not installed: run scripts/setup (npm install deno) or put deno on PATH "
    "(or set FLUX_DENO)",
}


class RuntimeFinder:
    """Resolves runtime names to executables; ``env`` defaults to ``os.environ``."""

    def __init__(
        self, env: Mapping[str, str] | None = None, fallback_dir: Path | None = REPO_DIR
    ) -> None:
        self._env = env
        self._fallback_dir = fallback_dir
        self._cache: dict[tuple[str, str | None, str | None], str | None] = {}

    def find(self, runtime: str) -> str | None:
        """The executable for ``runtime``, or None when it is not installed."""
        if runtime == "python":
            return sys.executable
        env = os.environ if self._env is None else self._env
        override = env.get(f"FLUX_{runtime.upper()}")
        key = (runtime, override, env.get("PATH"))
        if key not in self._cache:
            self._cache[key] = self._lookup(runtime, override, env.get("PATH"))
        return self._cache[key]

    def _lookup(self, runtime: str, override: str | None, path: str | None) -> str | None:
        if runtime not in INSTALL_HINTS:
            return None
        if override:
            # An explicit setting wins; a wrong one means "not installed", not "try PATH".
            found = shutil.which(override)
            return found if found else None
        found = shutil.which(runtime, path=path)
        if found:
            return found
        if runtime == "deno" and self._fallback_dir is not None:
            local = self._fallback_dir / ".tools" / "node_modules" / ".bin" / "deno"
            if local.is_file() and os.access(local, os.X_OK):
                return str(local)
        return None

    def problem(self, runtime: str) -> str | None:
        """None when ``runtime`` is usable, else the message telling the user how to fix it."""
        if runtime not in ("python", *INSTALL_HINTS):
            return f"unknown runtime {runtime!r}"
        if self.find(runtime) is None:
            return INSTALL_HINTS[runtime]
        return None


default_finder = RuntimeFinder()


def find_runtime(runtime: str) -> str | None:
    return default_finder.find(runtime)


def runtime_problem(runtime: str) -> str | None:
    """None if ``runtime`` is available, else the install hint (shown by deploy and in 502s)."""
    return default_finder.problem(runtime)


def worker_command(
    runtime: str, executable: str, entry: Path, memory_mib: int | None = None
) -> list[str]:
    """The argv that starts a worker for ``entry`` with ``executable``.

    ``memory_mib`` (the function's memory limit) also caps V8's heap for node and deno, so a
    growing JS heap is collected harder before the RSS watchdog has to kill the worker.
    """
    if runtime == "python":
        # -I: ignore PYTHON* env and user site; -B: never write __pycache__ into the function
        # folder (flux dev watches it: a .pyc would trigger a redeploy loop).
        return [executable, "-I", "-B", str(SHIMS_DIR / "python_worker.py"), str(entry)]
    shim = str(SHIMS_DIR / "js_worker.mjs")
    heap = [f"--max-old-space-size={memory_mib}"] if memory_mib else []
    if runtime == "node":
        return [executable, "--no-warnings", *heap, shim, str(entry)]
    if runtime == "deno":
        # No prompts, no update check, no network fetches of remote modules at run time.
        # --no-lock: never write a deno.lock into the function folder (flux dev watches it).
        v8 = [f"--v8-flags={heap[0]}"] if heap else []
        # Its permissions (--allow-read=... etc., never -A) come from the launcher, right
        # after "run": fluxgw/runtime/sandbox.py deno_permissions.
        return [executable, "run", "--quiet", "--no-prompt", "--no-remote", "--no-lock",
                *v8, shim, str(entry)]  # fmt: skip
    raise ValueError(f"unknown runtime {runtime!r}")
