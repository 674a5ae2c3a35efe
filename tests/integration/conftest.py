"""Integration tier: a real Postgres (a fresh database per test session) and the real
aiohttp application served on a loopback port."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web

from controller.app import Settings, close_controller, create_app, open_controller
from tests.conftest import require

DEFAULT_URL = "postgresql:///postgres?host=/var/run/postgresql"
ADMIN_TOKEN = "tra_test_" + secrets.token_hex(8)
TABLES = (
    "events, fabric, rules, addresses, endpoints, blocks, subnets, networks, tokens, "
    "hosts, racks, tenants, pools"
)


def server_url() -> str:
    return os.environ.get("TERRACE_TEST_DATABASE_URL", DEFAULT_URL).replace(
        "postgresql+asyncpg://", "postgresql://"
    )


def with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{name}" + (f"?{query}" if query else "")


@pytest_asyncio.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    admin_url = server_url()
    try:
        conn = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        require(False, f"no Postgres at {admin_url}: {exc}")
        raise
    name = f"terrace_test_{os.getpid()}_{secrets.token_hex(3)}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin_url, name)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest.fixture(scope="session")
def admin_token() -> Iterator[str]:
    old = os.environ.get("TERRACE_ADMIN_TOKEN")
    os.environ["TERRACE_ADMIN_TOKEN"] = ADMIN_TOKEN
    yield ADMIN_TOKEN
    if old is None:
        os.environ.pop("TERRACE_ADMIN_TOKEN", None)
    else:
        os.environ["TERRACE_ADMIN_TOKEN"] = old


class Api:
    """A test client: `await api.post(path, body, token=...)` → (status, json)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.session = aiohttp.ClientSession()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {token or self.token}"}
        if token == "":
            hdrs = {}
        hdrs.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as r:
            text = await r.text()
            ctype = r.headers.get("Content-Type", "")
            payload: Any = text
            if "json" in ctype and text:
                payload = json.loads(text)
            if r.status >= 400:
                assert ctype.startswith("application/problem+json"), (r.status, ctype, text)
            return r.status, payload

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("DELETE", path, **kw)

    async def ok(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        status: int | None = None,
        token: str | None = None,
    ) -> Any:
        code, payload = await self.call(method, path, body, token=token)
        expected = status or (201 if method == "POST" else 200)
        assert code == expected, (method, path, code, payload)
        return payload


class Server:
    def __init__(self, runner: web.AppRunner, base: str, controller: Any) -> None:
        self.runner = runner
        self.base = base
        self.controller = controller


async def start_server(url: str, data_dir: Path, *, migrate: bool = True) -> Server:
    settings = Settings(database_url=url, data_dir=data_dir, listen=None, migrate=migrate)
    controller, _ = await open_controller(settings)
    runner = web.AppRunner(create_app(controller))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await asyncio.wait_for(controller.feed.connected.wait(), 10)
    return Server(runner, f"http://127.0.0.1:{port}", controller)


async def stop_server(server: Server) -> None:
    await server.runner.cleanup()
    await close_controller(server.controller, None)


@pytest_asyncio.fixture(scope="session")
async def server(
    database_url: str, admin_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    srv = await start_server(database_url, tmp_path_factory.mktemp("ctl"))
    yield srv
    await stop_server(srv)


@pytest_asyncio.fixture
async def api(server: Server, database_url: str) -> AsyncIterator[Api]:
    """A client on an empty database (every table truncated before the test)."""
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"TRUNCATE {TABLES} CASCADE")
    await conn.close()
    client = Api(server.base, ADMIN_TOKEN)
    yield client
    await client.session.close()


async def seed(api: Api, *, v6: bool = True) -> dict[str, Any]:
    """Pools, two tenants, a rack with two hosts, a network per tenant with subnets."""
    s: dict[str, Any] = {}
    await api.ok("POST", "/v1/pools", {"cidr": "10.64.0.0/16"}, status=201)
    await api.ok("POST", "/v1/pools", {"cidr": "2001:db8:100::/40"}, status=201)
    for name in ("acme", "globex"):
        s[name] = await api.ok("POST", "/v1/tenants", {"name": name}, status=201)
    await api.ok("POST", "/v1/racks", {"name": "r1"}, status=201)
    await api.ok("POST", "/v1/racks", {"name": "r2"}, status=201)
    s["h1"] = await api.ok(
        "POST", "/v1/hosts", {"name": "h1", "rack": "r1", "address": "172.30.0.1"}, status=201
    )
    s["h2"] = await api.ok(
        "POST", "/v1/hosts", {"name": "h2", "rack": "r2", "address": "172.30.0.3"}, status=201
    )
    for tenant in ("acme", "globex"):
        net = await api.ok(
            "POST", "/v1/networks", {"name": "web"}, status=201, token=s[tenant]["token"]
        )
        await api.ok(
            "POST",
            f"/v1/networks/{net['id']}/subnets",
            {"family": 4, "prefix_length": 24},
            status=201,
            token=s[tenant]["token"],
        )
        if v6:
            await api.ok(
                "POST",
                f"/v1/networks/{net['id']}/subnets",
                {"family": 6, "prefix_length": 64},
                status=201,
                token=s[tenant]["token"],
            )
        s[f"{tenant}_net"] = net
    return s
