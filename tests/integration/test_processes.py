"""The controller as a process: embedded Postgres, schema check, two replicas on one
database, the OpenAPI document against the routes served."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from controller.registry import ROUTES
from tests.integration.conftest import ADMIN_TOKEN, Api, seed, server_url, with_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_controller(
    data_dir: Path, port: int, *, database_url: str | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TERRACE_ADMIN_TOKEN": ADMIN_TOKEN}
    env.pop("TERRACE_DATABASE_URL", None)
    args = [
        sys.executable,
        "-m",
        "terrace.cli",
        "controller",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"127.0.0.1:{port}",
        *extra,
    ]
    if database_url:
        args += ["--database-url", database_url]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def wait_healthy(proc: subprocess.Popen[bytes], base: str, deadline_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    last = ""
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"controller exited {proc.returncode}:\n{out}")
            try:
                async with session.get(base + "/healthz") as r:
                    if r.status == 200:
                        return
                    last = await r.text()
            except aiohttp.ClientError as exc:
                last = str(exc)
            await asyncio.sleep(0.2)
    raise AssertionError(f"controller not healthy within {deadline_s}s; last: {last}")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


async def test_embedded_postgres_path(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    proc = spawn_controller(tmp_path / "data", port)
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(proc, base, deadline_s=120)
    api = Api(base, ADMIN_TOKEN)
    try:
        pool = await api.ok("POST", "/v1/pools", {"cidr": "10.64.0.0/16"})
        assert pool["family"] == 4
        assert (await api.ok("GET", "/v1/status"))["counts"]["pools"] == 1
    finally:
        await api.session.close()
    assert (tmp_path / "data" / "pgdata").is_dir()


async def test_unmigrated_database_is_refused(tmp_path: Path) -> None:
    name = f"terrace_empty_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(server_url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(server_url(), name)
        env = {**os.environ, "TERRACE_ADMIN_TOKEN": ADMIN_TOKEN}
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "terrace.cli",
                "controller",
                "--database-url",
                url,
                "--data-dir",
                str(tmp_path),
                "--listen",
                f"127.0.0.1:{free_port()}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert "terrace db upgrade" in done.stderr
        upgraded = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "terrace.cli", "db", "upgrade", "--database-url", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert upgraded.returncode == 0, upgraded.stderr
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_two_controllers_one_database(
    api: Api, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A change through one controller wakes a long-poll held by another process."""
    s = await seed(api)
    port = free_port()
    proc = spawn_controller(tmp_path, port, database_url=database_url)
    procs.append(proc)
    other = f"http://127.0.0.1:{port}"
    await wait_healthy(proc, other)
    replica = Api(other, ADMIN_TOKEN)
    try:
        first = await replica.ok("GET", "/v1/hosts/h1/desired-state?timeout=0")
        poll = asyncio.create_task(
            replica.get(f"/v1/hosts/h1/desired-state?after={first['revision']}&timeout=30")
        )
        await asyncio.sleep(0.5)
        assert not poll.done()
        await api.ok(
            "POST", "/v1/endpoints", {"network_id": s["acme_net"]["id"], "host": "h1", "name": "c1"}
        )
        status, state = await asyncio.wait_for(poll, 10)
        assert status == 200 and [e["name"] for e in state["endpoints"]] == ["c1"]
    finally:
        await replica.session.close()


async def test_openapi_matches_routes(api: Api) -> None:
    status, doc = await api.get("/openapi.json", token="")
    assert status == 200
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(r.method, r.path) for r in ROUTES}
    assert documented == served
    # every documented route is served (a 404 names a missing object, not a missing route)
    streams = {(r.method, r.path) for r in ROUTES if r.content_type == "text/event-stream"}
    for method, path in sorted(documented - streams):
        concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000").replace(
            "{name}", "nohost"
        )
        code, problem = await api.call(method, concrete, {} if method in ("POST", "PUT") else None)
        assert code != 405, (method, path)
        if code == 404:
            assert not problem["type"].endswith("no-such-route"), (method, path)


async def test_sigterm_ends_long_polls_and_exits(
    api: Api, database_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A controller being stopped answers its held long-polls and exits promptly."""
    await seed(api)
    port = free_port()
    proc = spawn_controller(tmp_path, port, database_url=database_url)
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(proc, base)
    replica = Api(base, ADMIN_TOKEN)
    try:
        poll = asyncio.create_task(
            replica.get("/v1/hosts/h1/desired-state?after=999999&timeout=120")
        )
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        proc.terminate()
        status, state = await asyncio.wait_for(poll, 10)
        assert status == 200 and state["host"]["name"] == "h1"
        await asyncio.to_thread(proc.wait, 10)
        assert loop.time() - started < 10
    finally:
        await replica.session.close()
