"""How a worker is launched: its argv (bubblewrap around the runtime) and its environment.

:func:`build_launch` is pure: function spec, runtime command, what the runtime must read and
the variables the function declared in, argv and environment out (unit-tested as data). The
rest of this module looks at the machine: which paths a runtime needs, whether ``bwrap`` is
installed and works here (:func:`detect_sandbox`). The contract is docs/sandbox.md.

Inside the sandbox a worker sees: the system's ``/usr`` (and its ``/bin``, ``/lib*`` links), a
few ``/etc`` files (DNS, TLS roots, users, time zone), its runtime (read-only), its own deployed
folder (read-only), a private ``/tmp`` (tmpfs, gone with the worker), a fresh ``/proc`` of its
own pid namespace and a minimal ``/dev``. Nothing of ``.flux/`` (keys, traces, queue, other
functions' folders) and no other process. The network is shared: functions call each other
over loopback. All capabilities are dropped, and the sandbox dies with the gateway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from ..project import FunctionSpec
from ..tls import function_env, function_trust_files
from .discovery import SHIMS_DIR, worker_command

MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
TMP_SIZE = 128 * 1024 * 1024  # bytes of the private /tmp (memory-backed)
# /etc entries a runtime may need: DNS, TLS roots, users, time zone, the dynamic loader.
ETC_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/passwd",
    "/etc/group",
    "/etc/ld.so.cache",
    "/etc/alternatives",
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOST_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")  # locale and time zone follow the gateway's
# Set by process.py at spawn (the numbers of the worker's protocol pipes), read by the shim.
PIPE_ENV = ("FLUX_REQUEST_FD", "FLUX_PROTOCOL_FD")
DENO_TMP = "/tmp/flux-tmp"  # deno's HOME and TMPDIR in the sandbox, inside the private /tmp


@attrs.frozen
class Sandbox:
    """Whether workers are sandboxed: ``bwrap`` is its path, or None with ``note`` saying why."""

    bwrap: str | None
    note: str
    # (kind, source, target): "ro-bind" dirs and "symlink"s of the host's root, from host_layout
    layout: tuple[tuple[str, str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return self.bwrap is not None


NO_SANDBOX = Sandbox(None, "off")


@attrs.frozen
class WorkerLaunch:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    sandboxed: bool

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


def build_launch(
    spec: FunctionSpec,
    command: Sequence[str],
    *,
    sandbox: Sandbox,
    read_only: Sequence[str],
    variables: Mapping[str, str],
    host_env: Mapping[str, str],
    deno_dir: str | None = None,
) -> WorkerLaunch:
    """The argv and environment of one worker of ``spec``.

    ``command`` runs the runtime on the shim; ``read_only`` are the runtime's own paths (its
    binary, libraries, the shims); ``variables`` the function's declared env and secrets;
    ``host_env`` the gateway's environment, of which only locale and time zone pass.
    """
    executable_dir = os.path.dirname(command[0])
    env: dict[str, str] = {"PATH": f"{MINIMAL_PATH}:{executable_dir}"}
    env.update((name, host_env[name]) for name in HOST_ENV if name in host_env)
    env.setdefault("LANG", "C.UTF-8")
    if sandbox.enabled:
        env["HOME"] = env["TMPDIR"] = "/tmp"
    else:
        env.update((name, host_env[name]) for name in ("HOME", "TMPDIR") if name in host_env)
    env.update(NO_COLOR="1", FLUX_FUNCTION=spec.name, FLUX_RUNTIME=spec.runtime)
    if spec.runtime == "deno" and deno_dir:
        env.update(DENO_DIR=deno_dir, DENO_NO_UPDATE_CHECK="1", DENO_NO_PROMPT="1")
    env.update(variables)
    argv = tuple(command)
    deno_tmp = None
    if spec.runtime == "deno":
        if sandbox.enabled:
            binds = [*read_only, str(spec.directory), *([deno_dir] if deno_dir else [])]
            deno_tmp = sandboxed_deno_tmp(binds)
        else:
            deno_tmp = deno_tmp_dir(spec)
        env["HOME"] = env["TMPDIR"] = deno_tmp
        permissions = deno_permissions(spec.directory, deno_tmp, [*env, *PIPE_ENV])
        assert argv[1] == "run", argv  # the flags go right after deno's subcommand
        argv = (argv[0], argv[1], *permissions, *argv[2:])
    if sandbox.bwrap is not None:
        argv = (*bwrap_args(spec, sandbox, read_only, deno_dir, deno_tmp), *argv)
    return WorkerLaunch(argv=argv, env=tuple(env.items()), sandboxed=sandbox.enabled)


def deno_permissions(folder: Path, tmp: str, env_names: Iterable[str]) -> list[str]:
    """deno's own permission flags (never ``-A``): read its folder and its tmp, write its tmp,
    read the variables it was given, reach the network. No ``--allow-run``, ``--allow-ffi``,
    ``--allow-sys``: Deno.Command, FFI and system information are refused with NotCapable.

    The protocol pipes are opened as ``/dev/fd/N`` (js_worker.mjs): deno lets a read/write
    grant on ``/dev/fd`` open an inherited pipe, while a descriptor of a regular file there
    would still need ``-A``.
    """
    reads = {str(folder), os.path.realpath(folder), tmp, "/dev/fd"}
    return [
        f"--allow-read={_deno_list(reads)}",
        f"--allow-write={_deno_list({tmp, '/dev/fd'})}",
        f"--allow-env={_deno_list(set(env_names))}",
        "--allow-net",
    ]


def _deno_list(values: Iterable[str]) -> str:
    # deno splits these lists on "," and reads ",," as a literal comma.
    return ",".join(value.replace(",", ",,") for value in sorted(values))


def sandboxed_deno_tmp(binds: Iterable[str]) -> str:
    """deno's writable folder in the sandbox: a folder of the private /tmp that holds none of
    the paths bound there (a project under /tmp puts its function folder, and deno's cache,
    under /tmp: a grant of all /tmp would cover them)."""
    candidate = DENO_TMP
    while any(path == candidate or path.startswith(candidate + "/") for path in binds):
        candidate += "_"
    return candidate


def deno_tmp_dir(spec: FunctionSpec) -> str:
    """Without the sandbox, the one folder a deno function may write (its TMPDIR and HOME):
    private to the function (0700), next to deno's shared cache."""
    path = os.path.join(_deno_base(), "tmp", spec.name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def bwrap_args(
    spec: FunctionSpec,
    sandbox: Sandbox,
    read_only: Sequence[str],
    deno_dir: str | None,
    deno_tmp: str | None = None,
) -> list[str]:
    assert sandbox.bwrap is not None
    args = [
        sandbox.bwrap,
        "--die-with-parent",  # no worker outlives the gateway
        "--unshare-pid",  # /proc shows its own processes only: not the gateway's environ
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
    ]
    for kind, source, target in sandbox.layout:
        args += ["--symlink" if kind == "symlink" else "--ro-bind", source, target]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_SIZE), "--tmpfs", "/tmp"]
    if deno_tmp:
        args += ["--dir", deno_tmp]  # on the private tmpfs: deno may write only there
    # Binds after the tmpfs: a runtime or project under /tmp is laid on top of the empty one.
    for path in read_only:
        args += ["--ro-bind", path, path]
    folder = str(spec.directory)
    args += ["--ro-bind", folder, folder]
    if spec.runtime == "deno" and deno_dir:
        args += ["--bind", deno_dir, deno_dir]  # its own compile cache, per function
    args += ["--chdir", folder, "--"]
    return args


# -- the machine ---------------------------------------------------------------------------


def host_layout(root: Path = Path("/")) -> tuple[tuple[str, str, str], ...]:
    """The system folders to expose: real folders read-only, merged-/usr links as links."""
    out: list[tuple[str, str, str]] = []
    for name in SYSTEM_DIRS:
        path = root / name.lstrip("/")
        if path.is_symlink():
            out.append(("symlink", os.readlink(path), name))
        elif path.is_dir():
            out.append(("ro-bind", str(path), name))
    return tuple(out)


def runtime_paths(runtime: str, executable: str) -> list[str]:
    """What the runtime reads besides /usr: its install folder, our shims, python's prefixes."""
    import fluxgw

    paths = {str(SHIMS_DIR), str(Path(fluxgw.__file__).resolve().parent)}
    real = Path(executable).resolve()
    if runtime == "python":
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(real.parent)}
        prefixes |= {p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p}
        paths |= {os.path.abspath(p) for p in prefixes}
    else:
        # node from a distribution lives in /usr; from nvm or a tarball, under <prefix>/bin.
        prefix = real.parent.parent if real.parent.name == "bin" else real.parent
        paths |= {str(prefix), str(Path(executable).parent)}  # the link itself, and its target
    return outermost(p for p in paths if p != "/")


def outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those inside /usr (always bound) or inside another one: every bind
    mount is a little more start-up time for each worker."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not (path + "/").startswith(("/usr/", *(k + "/" for k in kept))):
            kept.append(path)
    return kept


def deno_cache_dir(spec: FunctionSpec, sandboxed: bool) -> str:
    """The writable DENO_DIR of a function: per function in the sandbox (a shared writable
    cache would let one function plant compiled code for another), shared otherwise."""
    base = _deno_base()
    path = os.path.join(base, "functions", spec.name) if sandboxed else base
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _deno_base() -> str:
    return os.environ.get("DENO_DIR") or os.path.join(
        tempfile.gettempdir(), f"fluxgw-deno-{os.getuid()}"
    )


def detect_sandbox(enabled: bool = True, bwrap: str | None = None) -> Sandbox:
    """The sandbox this machine offers: bwrap if installed and a probe run succeeds."""
    if not enabled:
        return Sandbox(None, "off (--no-sandbox): functions can read the gateway's files")
    if not sys.platform.startswith("linux"):
        return Sandbox(None, "unavailable: bubblewrap sandboxing needs Linux")
    found = bwrap or shutil.which("bwrap")
    if not found:
        return Sandbox(None, "unavailable: bwrap is not installed (Debian package bubblewrap)")
    candidate = Sandbox(found, "", host_layout())
    problem = _probe(candidate)
    if problem:
        return Sandbox(None, f"unavailable: bwrap does not work here ({problem})")
    version = _bwrap_version(found)
    return attrs.evolve(candidate, note=f"bubblewrap {version}".strip())


def _probe(sandbox: Sandbox) -> str | None:
    probe = FunctionSpec(
        name="probe",
        runtime="python",
        route="/probe",
        method="GET",
        directory=SHIMS_DIR,
        entry="python_worker.py",
    )
    # In its own pid namespace the command is pid 2 (bwrap's init is 1).
    command = [
        os.path.abspath(sys.executable),
        "-I",
        "-c",
        "import os,sys; sys.exit(os.getpid() > 9)",
    ]
    launch = build_launch(
        probe,
        command,
        sandbox=sandbox,
        read_only=runtime_paths("python", command[0]),
        variables={},
        host_env=os.environ,
    )
    try:
        done = subprocess.run(
            launch.argv,
            env=launch.env_dict,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1][:200] if lines else f"exit code {done.returncode}"
    return None


def _bwrap_version(bwrap: str) -> str:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.decode(errors="replace").strip().removeprefix("bubblewrap ")


class Launcher:
    """What the pool calls to launch a worker: ``launcher(spec, executable)``.

    ``variables(spec)`` gives the function's declared environment (flux.json ``env`` plus its
    secrets' current values); the default passes ``env`` only.
    """

    def __init__(
        self,
        sandbox: Sandbox = NO_SANDBOX,
        variables: Callable[[FunctionSpec], Mapping[str, str]] | None = None,
    ) -> None:
        self.sandbox = sandbox
        self._variables = variables or (lambda spec: dict(spec.env))
        self._paths: dict[tuple[str, str], list[str]] = {}

    def __call__(self, spec: FunctionSpec, executable: str) -> WorkerLaunch:
        # Normalised ("venv/../bin" would not exist in the sandbox), symlinks kept (a venv).
        executable = os.path.abspath(executable)
        key = (spec.runtime, executable)
        if key not in self._paths:  # only the sandbox binds them
            paths = self.sandbox.enabled and runtime_paths(spec.runtime, executable)
            self._paths[key] = paths or []
        deno_dir = deno_cache_dir(spec, self.sandbox.enabled) if spec.runtime == "deno" else None
        trust = function_env(spec.runtime)  # the gateway's local CA (docs/tls.md)
        return build_launch(
            spec,
            worker_command(spec.runtime, executable, spec.entry_path, spec.memory),
            sandbox=self.sandbox,
            read_only=[*self._paths[key], *(function_trust_files() if trust else ())],
            variables={**trust, **self._variables(spec)},
            host_env=os.environ,
            deno_dir=deno_dir,
        )


def mark_non_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): other processes of the same user (a function outside the
    sandbox included) can no longer read this process's memory or /proc/<pid>/environ.
    Linux only; returns whether it was applied."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0  # 4 = PR_SET_DUMPABLE
    except (OSError, AttributeError):
        return False
