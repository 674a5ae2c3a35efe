"""R5: the API fuzzed from its own `/openapi.json` (schemathesis) with admin and tenant
tokens: no 5xx, and every documented response matches its documented schema and
content type. A failing case prints the Hypothesis seed and the request to replay it.

Bounded: a few examples per operation (TERRACE_FUZZ_EXAMPLES, default 12). The
controller is a process on a fresh database of the test server, seeded with one of
every object so generated ids sometimes hit real rows. The SSE stream never ends by
design: schemathesis reads an event stream until the request timeout and checks each
event it got against the documented one (`itemSchema`), so streams get a short timeout
(STREAM_SECONDS) and every other request a long one (long-polls are capped by it).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import ADMIN_TOKEN, server_url, with_database
from tests.integration.test_processes import free_port, spawn_controller

EXAMPLES = int(os.environ.get("TERRACE_FUZZ_EXAMPLES", "12"))
REQUEST_SECONDS = 15
STREAM_SECONDS = 1.5  # the seeded events arrive at once; then the stream only idles
CHECKS = (
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
)


async def _create_database(name: str) -> None:
    conn = await asyncpg.connect(server_url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(server_url())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _wait_healthy(proc: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 60
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"controller exited {proc.returncode}")
        try:
            r = requests.get(base + "/healthz", timeout=2)
            if r.status_code == 200:
                return
            last = r.text
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.2)
    raise AssertionError(f"controller not healthy; last: {last}")


def _seed(base: str) -> str:
    """One of every object; returns a tenant token."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def post(path: str, body: dict[str, Any], headers: dict[str, str] = admin) -> Any:
        r = requests.post(base + path, json=body, headers=headers, timeout=10)
        assert r.status_code == 201, (path, r.status_code, r.text)
        return r.json()

    post("/v1/pools", {"cidr": "10.64.0.0/12"})
    post("/v1/pools", {"cidr": "2001:db8:100::/40"})
    tenant = post("/v1/tenants", {"name": "fuzz"})
    tenant_auth = {"Authorization": f"Bearer {tenant['token']}"}
    post("/v1/racks", {"name": "r1"})
    post("/v1/hosts", {"name": "h1", "rack": "r1", "address": "172.30.0.1"})
    net = post("/v1/networks", {"name": "web"}, tenant_auth)
    other = post("/v1/networks", {"name": "db"}, tenant_auth)
    post(f"/v1/networks/{net['id']}/subnets", {"family": 4, "prefix_length": 24}, tenant_auth)
    post(f"/v1/networks/{net['id']}/subnets", {"family": 6, "prefix_length": 64}, tenant_auth)
    post("/v1/endpoints", {"network_id": net["id"], "host": "h1", "name": "c1"}, tenant_auth)
    post(f"/v1/networks/{other['id']}/rules", {"from_network": net["id"]}, tenant_auth)
    return str(tenant["token"])


class Target:
    def __init__(self, base: str, tenant_token: str) -> None:
        self.base = base
        self.tokens = {"admin": ADMIN_TOKEN, "tenant": tenant_token}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    name = f"terrace_fuzz_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_create_database(name))
    proc: subprocess.Popen[bytes] | None = None
    try:
        url = with_database(server_url(), name)
        subprocess.run(
            [sys.executable, "-m", "terrace.cli", "db", "upgrade", "--database-url", url],
            check=True,
            capture_output=True,
        )
        port = free_port()
        proc = spawn_controller(Path(tmp_path_factory.mktemp("fuzz")), port, database_url=url)
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base)
        yield Target(base, _seed(base))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        asyncio.run(_drop_database(name))


@pytest.fixture(scope="module")
def api_schema(target: Target) -> Any:
    return schemathesis.openapi.from_url(target.base + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def _is_event_stream(case: Any) -> bool:
    responses = case.operation.definition.raw.get("responses", {})
    return any("text/event-stream" in r.get("content", {}) for r in responses.values())


def _call(case: Any, target: Target, who: str) -> None:
    headers = {"Authorization": f"Bearer {target.tokens[who]}"}
    timeout = STREAM_SECONDS if _is_event_stream(case) else REQUEST_SECONDS
    case.call_and_validate(base_url=target.base, headers=headers, checks=CHECKS, timeout=timeout)


@schema.parametrize()
@FUZZ
def test_api_fuzz_as_admin(case: Any, target: Target) -> None:
    _call(case, target, "admin")


@schema.parametrize()
@FUZZ
def test_api_fuzz_as_tenant(case: Any, target: Target) -> None:
    _call(case, target, "tenant")
