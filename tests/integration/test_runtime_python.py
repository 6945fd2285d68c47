"""The pool with real python workers: results, logs, failures, timeouts, concurrency, cleanup."""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import psutil
import pytest
from conftest import BOTH_LOOPS, wait_until

from fluxgw.project import FunctionSpec
from fluxgw.runtime.api import FunctionFailed, Invocation, InvocationResult
from fluxgw.runtime.options import PoolOptions
from fluxgw.runtime.pool import PoolManager

pytestmark = [pytest.mark.timeout(60), BOTH_LOOPS]


def make_function(
    root: Path, name: str, code: str, *, timeout: float = 5, files: dict[str, str] | None = None
) -> FunctionSpec:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(textwrap.dedent(code))
    for extra, content in (files or {}).items():
        (folder / extra).write_text(textwrap.dedent(content))
    return FunctionSpec(
        name=name,
        runtime="python",
        route=f"/{name}",
        method="POST",
        directory=folder,
        entry="main.py",
        timeout=timeout,
    )


def call(
    spec: FunctionSpec,
    body: bytes = b"",
    *,
    headers: tuple[tuple[str, str], ...] = (),
    query: tuple[tuple[str, str], ...] = (),
    deadline: float | None = None,
) -> Invocation:
    return Invocation(
        request_id="req-1",
        method="POST",
        path=spec.route,
        deadline=deadline if deadline is not None else time.time() + spec.timeout,
        query=query,
        headers=headers,
        body=body,
        traceparent="00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
    )


def descendants() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.status() != "zombie"]


async def gone(pids: list[int], within: float = 3.0) -> bool:
    with anyio.move_on_after(within):
        while any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
        ):
            await anyio.sleep(0.02)
        return True
    return False


@pytest.fixture
async def make_pool(
    tasks: anyio.abc.TaskGroup,
) -> AsyncIterator[Callable[..., Awaitable[PoolManager]]]:
    pools: list[PoolManager] = []

    async def factory(clock: Callable[[], float] | None = None, **options: Any) -> PoolManager:
        pool = PoolManager(PoolOptions(**options), **({"clock": clock} if clock else {}))
        await tasks.start(pool.run)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.aclose()


@pytest.fixture
async def pool(make_pool: Callable[..., Awaitable[PoolManager]]) -> PoolManager:
    return await make_pool()


async def test_sync_handler_sees_request_and_returns_json(
    pool: PoolManager, tmp_path: Path
) -> None:
    spec = make_function(
        tmp_path,
        "echo",
        """
        import json
        def handler(request, ctx):
            return {
                "method": request["method"], "path": request["path"], "url": request["url"],
                "query": request["query"], "query_list": request["query_list"],
                "headers": request["headers"], "body": request["body"],
                "raw": request["raw_body"].decode(),
                "ctx": [ctx.request_id, ctx.function, ctx.deadline > 0, ctx.traceparent],
            }
        """,
    )
    result = await pool.invoke(
        spec,
        call(
            spec,
            b'{"n": 1}',
            headers=(("content-type", "application/json"), ("authorization", "Bearer secret")),
            query=(("a", "1"), ("a", "2"), ("b", "x y")),
        ),
    )
    assert result.status == 200
    assert ("content-type", "application/json") in result.headers
    data = json.loads(result.body)
    assert data["method"] == "POST" and data["path"] == "/echo"
    assert data["query"] == {"a": "2", "b": "x y"} and data["query_list"]["a"] == ["1", "2"]
    assert data["url"].endswith("/echo?a=1&a=2&b=x+y")
    assert data["body"] == {"n": 1} and data["raw"] == '{"n": 1}'
    assert "authorization" not in data["headers"]  # never the caller's credentials
    assert data["headers"]["x-request-id"] == "req-1"
    assert data["headers"]["traceparent"].startswith("00-0123")
    assert data["ctx"][:3] == ["req-1", "echo", True] and data["ctx"][3].startswith("00-")
    assert result.cold_start
    again = await pool.invoke(
        spec, attrs.evolve(call(spec), query_string="a=1&a=%C3%A9&b=", url="https://h/echo?x")
    )
    assert not again.cold_start and again.worker_pid == result.worker_pid
    data = json.loads(again.body)
    assert data["query_list"] == {"a": ["1", "é"], "b": [""]} and data["url"] == "https://h/echo?x"


async def test_async_handler_and_sibling_import(pool: PoolManager, tmp_path: Path) -> None:
    spec = make_function(
        tmp_path,
        "aio",
        """
        import asyncio
        from helper import VALUE
        async def handler(request, ctx):
            await asyncio.sleep(0.01)
            return [VALUE, "async"]
        """,
        files={"helper.py": "VALUE = 41 + 1\n"},
    )
    for _ in range(2):  # the second call reuses the worker's asyncio loop
        result = await pool.invoke(spec, call(spec))
        assert (result.status, result.body) == (200, b'[42, "async"]')


async def test_response_sets_status_and_repeated_headers(pool: PoolManager, tmp_path: Path) -> None:
    spec = make_function(
        tmp_path,
        "resp",
        """
        from fluxgw.runtime import Response
        def handler(request, ctx):
            if request["query"].get("kind") == "text":
                return Response(status=418, body="teapot", headers={"X-Kind": "text"})
            return Response(201, {"made": True}, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        """,
    )
    result = await pool.invoke(spec, call(spec))
    assert result.status == 201 and result.body == b'{"made": true}'
    assert [v for k, v in result.headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]
    assert ("content-type", "application/json") in result.headers
    text = await pool.invoke(spec, call(spec, query=(("kind", "text"),)))
    assert text.status == 418 and text.body == b"teapot"
    assert ("X-Kind", "text") in text.headers
    assert ("content-type", "text/plain; charset=utf-8") in text.headers


async def test_output_is_captured_per_invocation_and_cannot_corrupt_protocol(
    pool: PoolManager, tmp_path: Path
) -> None:
    spec = make_function(
        tmp_path,
        "noisy",
        """
        import os, subprocess, sys
        print("at import")  # before any invocation: logged by the gateway, not returned
        def handler(request, ctx):
            print("hello", request["query"]["n"])
            print("no newline at end", end="")
            sys.stderr.write("to stderr\\n")
            ctx.logger.info("via logger")
            # Bytes that look like a frame, straight to fd 1, and a child writing to fd 1.
            os.write(1, b"\\x00\\x00\\x00\\x05\\x00\\x00\\x00\\x00junk\\n")
            subprocess.run(["echo", "from child"], check=True)
            return "done"
        """,
    )
    for n in ("1", "2"):
        result = await pool.invoke(spec, call(spec, query=(("n", n),)))
        assert result.status == 200 and result.body == b'"done"'
        texts = [(line.stream, line.text) for line in result.logs]
        assert ("stdout", f"hello {n}") in texts
        assert ("stdout", "no newline at end") in texts
        assert ("stderr", "to stderr") in texts
        assert ("log", "INFO via logger") in texts
        assert ("output", "from child") in texts or any("from child" in t for _, t in texts)
        assert all("at import" not in text for _, text in texts)


async def test_handler_exception_is_502_and_worker_survives(
    pool: PoolManager, tmp_path: Path
) -> None:
    spec = make_function(
        tmp_path,
        "boom",
        """
        import os
        def handler(request, ctx):
            if request["query"].get("fail"):
                print("about to fail")
                raise ValueError("bad input")
            return os.getpid()
        """,
    )
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec, query=(("fail", "1"),)))
    assert failed.value.status == 502 and failed.value.code == "function_error"
    assert "ValueError: bad input" in failed.value.message
    texts = [line.text for line in failed.value.logs]
    assert "about to fail" in texts and any("Traceback" in t for t in texts)
    ok = await pool.invoke(spec, call(spec))
    assert ok.status == 200 and int(ok.body) == failed.value.worker_pid  # same worker


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import not_a_module_anywhere\ndef handler(r, c): pass\n", "ModuleNotFoundError"),
        ("def handler(r, c):\n    return (\n", "SyntaxError"),
        ("x = 1\n", "defines no handler"),
    ],
)
async def test_broken_module_fails_to_start(
    pool: PoolManager, tmp_path: Path, code: str, expected: str
) -> None:
    spec = make_function(tmp_path, "broken", code)
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec))
    assert failed.value.status == 502 and failed.value.code == "function_failed_to_start"
    assert expected in failed.value.message
    assert any("Traceback" in line.text for line in failed.value.logs)
    assert pool.stats()["broken"] == {"busy": 0, "idle": 0, "in_flight": 0, "waiting": 0}


@pytest.mark.parametrize("how", ["sys.exit(3)", "os._exit(0)", "os.kill(os.getpid(), 9)"])
async def test_crash_is_502_then_a_fresh_worker_serves(
    pool: PoolManager, tmp_path: Path, how: str
) -> None:
    spec = make_function(
        tmp_path,
        "crash",
        f"""
        import os, sys
        def handler(request, ctx):
            if request["query"].get("crash"):
                {how}
            return os.getpid()
        """,
    )
    first = await pool.invoke(spec, call(spec))
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec, query=(("crash", "1"),)))
    assert failed.value.status == 502 and failed.value.code == "function_crashed"
    assert failed.value.worker_pid == first.worker_pid
    after = await pool.invoke(spec, call(spec))
    assert after.status == 200 and after.cold_start and after.worker_pid != first.worker_pid


@pytest.mark.timing
async def test_timeout_is_504_and_kills_the_process_group(
    pool: PoolManager, tmp_path: Path
) -> None:
    spec = make_function(
        tmp_path,
        "slow",
        """
        import subprocess, time
        def handler(request, ctx):
            child = subprocess.Popen(["sleep", "60"])
            print("child", child.pid, flush=True)
            time.sleep(5)
            return "late"
        """,
        timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec))
    elapsed = time.monotonic() - started
    assert failed.value.status == 504 and failed.value.code == "function_timeout"
    assert 0.9 < elapsed < 1.8, elapsed
    child_pid = int(
        next(ln.text for ln in failed.value.logs if ln.text.startswith("child")).split()[1]
    )
    assert await gone([failed.value.worker_pid, child_pid])
    ok = make_function(tmp_path, "quick", "def handler(r, c):\n    return 1\n", timeout=1)
    assert (await pool.invoke(ok, call(ok))).status == 200


@pytest.mark.timing
async def test_concurrent_calls_use_distinct_workers(make_pool: Callable, tmp_path: Path) -> None:
    pool = await make_pool(max_workers=4)
    spec = make_function(
        tmp_path,
        "nap",
        "import os, time\ndef handler(r, c):\n    time.sleep(0.3)\n    return os.getpid()\n",
    )
    await pool.invoke(spec, call(spec))  # one warm worker; three start cold in parallel
    results: list[InvocationResult] = []

    async def one() -> None:
        results.append(await pool.invoke(spec, call(spec)))

    started = time.monotonic()
    async with anyio.create_task_group() as tasks:
        for _ in range(4):
            tasks.start_soon(one)
    elapsed = time.monotonic() - started
    assert elapsed < 0.6, elapsed
    assert len({r.worker_pid for r in results}) == 4
    assert pool.stats()["nap"] == {"busy": 0, "idle": 4, "in_flight": 0, "waiting": 0}


@pytest.mark.timing
async def test_a_call_that_finds_no_capacity_in_time_is_503_overloaded(
    make_pool: Callable, tmp_path: Path
) -> None:
    pool = await make_pool(max_workers=1)
    spec = make_function(
        tmp_path,
        "single",
        "import time\ndef handler(r, c):\n    time.sleep(1.5)\n    return 1\n",
        timeout=5,
    )
    outcomes: list[object] = []

    async def first() -> None:
        outcomes.append(await pool.invoke(spec, call(spec)))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first)
        await wait_until(lambda: pool.stats().get(spec.name, {}).get("busy") == 1)  # it runs
        started = time.monotonic()
        with pytest.raises(FunctionFailed) as failed:
            await pool.invoke(spec, call(spec, deadline=time.time() + 0.5))
        assert time.monotonic() - started < 0.9
    # It never ran: 503 overloaded with a Retry-After, never a 504.
    assert failed.value.status == 503 and failed.value.code == "overloaded"
    assert failed.value.retry_after is not None and failed.value.retry_after >= 1
    assert isinstance(outcomes[0], InvocationResult)  # the worker it waited for was not harmed


async def test_binary_body_round_trips(pool: PoolManager, tmp_path: Path) -> None:
    spec = make_function(
        tmp_path,
        "bin",
        """
        from fluxgw.runtime import Response
        def handler(request, ctx):
            return Response(200, request["raw_body"][::-1], {"content-type": "application/x-raw"})
        """,
    )
    payload = os.urandom(5 * 1024 * 1024)
    result = await pool.invoke(
        spec, call(spec, payload, headers=(("content-type", "application/octet-stream"),))
    )
    assert result.body == payload[::-1]
    assert ("content-type", "application/x-raw") in result.headers


async def test_deploy_drains_old_generation(pool: PoolManager, tmp_path: Path) -> None:
    code = """
    import os, time
    VERSION = {version}
    def handler(request, ctx):
        if request["query"].get("slow"):
            time.sleep(0.8)
        return [VERSION, os.getpid()]
    """
    spec = make_function(tmp_path, "swap", code.format(version=1))
    pool.deploy([spec])
    old = await pool.invoke(spec, call(spec))
    slow: list[InvocationResult] = []

    async def in_flight() -> None:
        slow.append(await pool.invoke(spec, call(spec, query=(("slow", "1"),))))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(in_flight)
        await wait_until(lambda: pool.stats()[spec.name]["busy"] == 1)  # the old worker runs it
        (spec.directory / "main.py").write_text(textwrap.dedent(code.format(version=2)))
        pool.deploy([spec])  # same spec, new code in place: fresh workers
        new = await pool.invoke(spec, call(spec))
        assert new.body.startswith(b"[2,") and new.worker_pid != old.worker_pid
    assert slow[0].status == 200 and slow[0].body.startswith(b"[1,")
    assert slow[0].worker_pid == old.worker_pid
    assert await gone([old.worker_pid])
    assert pool.stats()["swap"] == {"busy": 0, "idle": 1, "in_flight": 0, "waiting": 0}


async def test_isolation_under_mixed_failures(make_pool: Callable, tmp_path: Path) -> None:
    pool = await make_pool(max_workers=20)
    spec = make_function(
        tmp_path,
        "mixed",
        """
        import os, time
        def handler(request, ctx):
            kind = request["query"].get("kind")
            if kind == "crash":
                os._exit(1)
            if kind == "hang":
                time.sleep(30)
            time.sleep(0.05)
            return "ok"
        """,
        timeout=3,  # 20 cold starts at once on a loaded machine take a while
    )
    statuses: list[int] = []

    async def one(kind: str) -> None:
        try:
            statuses.append((await pool.invoke(spec, call(spec, query=(("kind", kind),)))).status)
        except FunctionFailed as exc:
            statuses.append(exc.status)

    kinds = ["ok"] * 10 + ["crash"] * 5 + ["hang"] * 5
    async with anyio.create_task_group() as tasks:
        for kind in kinds:
            tasks.start_soon(one, kind)
    assert sorted(statuses) == [200] * 10 + [502] * 5 + [504] * 5
    statuses.clear()
    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(one, "ok")
    assert statuses == [200] * 20


async def test_idle_workers_are_reaped_with_the_injected_clock(
    make_pool: Callable, tmp_path: Path
) -> None:
    now = [1000.0]
    pool = await make_pool(idle_timeout=60, min_workers=1, clock=lambda: now[0])
    spec = make_function(
        tmp_path, "idle", "import time\ndef handler(r, c):\n    time.sleep(0.2)\n    return 1\n"
    )
    pool.deploy([spec])
    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(pool.invoke, spec, call(spec))
    # A sync handler runs one call per worker: the pool grew past one worker for them.
    started = pool.stats()["idle"]["idle"]
    assert started >= 2 and pool.stats()["idle"]["busy"] == 0
    now[0] += 30
    pool.reap_idle()
    assert pool.stats()["idle"]["idle"] == started
    now[0] += 31
    pool.reap_idle()
    assert pool.stats()["idle"] == {
        "busy": 0,
        "idle": 1,
        "in_flight": 0,
        "waiting": 0,
    }  # min_workers kept warm


async def test_prewarm_starts_workers_after_deploy(make_pool: Callable, tmp_path: Path) -> None:
    pool = await make_pool(min_workers=2)
    spec = make_function(tmp_path, "warm", "def handler(r, c):\n    return 1\n")
    pool.deploy([spec], prewarm=True)
    with anyio.fail_after(5):
        while pool.stats()["warm"]["idle"] < 2:
            await anyio.sleep(0.02)
    result = await pool.invoke(spec, call(spec))
    assert not result.cold_start


async def test_aclose_leaves_no_process_behind(tasks: anyio.abc.TaskGroup, tmp_path: Path) -> None:
    pool = PoolManager(PoolOptions(max_workers=3), grace_period=0.5)
    await tasks.start(pool.run)
    spec = make_function(
        tmp_path,
        "spawner",
        """
        import subprocess, time
        def handler(request, ctx):
            subprocess.Popen(["sleep", "60"])
            if request["query"].get("hang"):
                time.sleep(30)
            return 1
        """,
        timeout=20,
    )
    async with anyio.create_task_group() as inner:
        for _ in range(2):
            inner.start_soon(pool.invoke, spec, call(spec))
    hung: list[BaseException] = []

    async def hang() -> None:
        try:
            await pool.invoke(spec, call(spec, query=(("hang", "1"),)))
        except FunctionFailed as exc:
            hung.append(exc)

    tasks.start_soon(hang)
    await wait_until(lambda: len(descendants()) >= 5)  # three workers + their sleeping children
    with anyio.fail_after(5):
        await pool.aclose()
    assert hung and hung[0].status == 502  # type: ignore[attr-defined]
    assert descendants() == []
    await pool.aclose()  # idempotent
    with pytest.raises(FunctionFailed) as failed:
        await pool.invoke(spec, call(spec))
    assert failed.value.code == "runtime_unavailable"


async def test_cancelling_run_stops_every_worker(tmp_path: Path) -> None:
    spec = make_function(tmp_path, "bye", "def handler(r, c):\n    return 1\n")
    pool = PoolManager()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            await tasks.start(pool.run)
            await pool.invoke(spec, call(spec))
            assert descendants()
            tasks.cancel_scope.cancel()
    assert descendants() == []
