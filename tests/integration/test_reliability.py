"""Reliability under load and faults (issue 7, R1 and R2), with controllers as processes.

R1: two controller replicas on one database, 32 concurrent clients, N allocations
(1,000; 10,000 with TERRACE_FULL=1): no address handed out twice (in the answers and in
the database), no 5xx.

R2: `kill -9` of a controller in the middle of load: every 201 answered before the kill
is still there afterwards and a restarted controller serves; `kill -9` of Postgres (a
private server for this test, never the shared one): clients get 503 quickly, not
hangs; once Postgres is back the controller serves again without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest
import pytest_asyncio

from tests.conftest import record_figure
from tests.integration.conftest import ADMIN_TOKEN, Api
from tests.integration.test_processes import free_port, spawn_controller, wait_healthy

FULL = os.environ.get("TERRACE_FULL") == "1"
CLIENTS = 32


@pytest.fixture
def controllers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Controller processes started by a test; stopped (or reaped) afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def start_replica(
    data_dir: Path, url: str, procs: list[subprocess.Popen[bytes]]
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = spawn_controller(data_dir, port, database_url=url)
    procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    await wait_healthy(proc, base)
    return proc, base


async def fabric_for_load(api: Api, hosts: int) -> str:
    """A pool pair, a tenant, `hosts` hosts, a network with an IPv4 /16 and an IPv6 /64."""
    await api.ok("POST", "/v1/pools", {"cidr": "10.64.0.0/12"})
    await api.ok("POST", "/v1/pools", {"cidr": "2001:db8:100::/40"})
    tenant = await api.ok("POST", "/v1/tenants", {"name": "load"})
    await api.ok("POST", "/v1/racks", {"name": "r1"})
    for i in range(hosts):
        await api.ok(
            "POST", "/v1/hosts", {"name": f"h{i}", "rack": "r1", "address": f"172.30.0.{i}"}
        )
    net = await api.ok("POST", "/v1/networks", {"name": "load", "tenant_id": tenant["id"]})
    for family, length in ((4, 16), (6, 64)):
        await api.ok(
            "POST", f"/v1/networks/{net['id']}/subnets", {"family": family, "prefix_length": length}
        )
    return str(net["id"])


class Load:
    """Clients creating endpoints round-robin over controllers; every answer is kept."""

    def __init__(self, bases: list[str], network: str, hosts: int) -> None:
        self.bases = bases
        self.network = network
        self.hosts = hosts
        self.created: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.failures: list[str] = []

    async def run(self, total: int, *, stop_on_error: bool = False) -> None:
        counter = iter(range(total))
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

            async def client(c: int) -> None:
                for i in counter:
                    body = {
                        "network_id": self.network,
                        "host": f"h{i % self.hosts}",
                        "name": f"e{i}",
                    }
                    base = self.bases[(c + i) % len(self.bases)]
                    try:
                        async with session.post(base + "/v1/endpoints", json=body) as r:
                            self.statuses.append(r.status)
                            doc = await r.json(content_type=None)
                            if r.status == 201:
                                self.created.append(doc)
                            else:
                                self.failures.append(f"{r.status}: {doc}")
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        self.failures.append(repr(exc))
                        if stop_on_error:
                            return

            await asyncio.gather(*(client(c) for c in range(CLIENTS)))


async def duplicates_in_database(url: str) -> tuple[list[Any], int, int]:
    conn = await asyncpg.connect(url)
    try:
        dupes = await conn.fetch(
            "SELECT address, count(*) FROM addresses GROUP BY address HAVING count(*) > 1"
        )
        overlapping = await conn.fetchval(
            "SELECT count(*) FROM blocks a JOIN blocks b ON a.id < b.id AND a.cidr && b.cidr"
        )
        addresses = await conn.fetchval("SELECT count(*) FROM addresses")
        return list(dupes), int(overlapping), int(addresses)
    finally:
        await conn.close()


async def test_r1_two_replicas_no_duplicate_addresses(
    api: Api, database_url: str, tmp_path: Path, controllers: list[subprocess.Popen[bytes]]
) -> None:
    total = 10_000 if FULL else 1_000
    network = await fabric_for_load(api, hosts=8)
    bases = [
        (await start_replica(tmp_path / f"c{i}", database_url, controllers))[1] for i in (1, 2)
    ]
    load = Load(bases, network, hosts=8)
    started = time.perf_counter()
    await load.run(total)
    elapsed = time.perf_counter() - started

    record_figure(
        "R1", f"{total} allocations, 2 replicas, {CLIENTS} clients", round(elapsed, 1), "s"
    )
    record_figure("R1", "5xx answers", sum(1 for s in load.statuses if s >= 500))
    assert [s for s in load.statuses if s >= 500] == [], load.failures[:5]
    assert load.failures == [], load.failures[:5]
    assert len(load.created) == total
    for family in ("ipv4", "ipv6"):
        answered = [e[family] for e in load.created]
        assert None not in answered
        assert len(set(answered)) == total, f"duplicate {family} addresses in the answers"
    dupes, overlapping, addresses = await duplicates_in_database(database_url)
    record_figure("R1", "duplicate addresses in the database", len(dupes))
    assert dupes == [] and overlapping == 0
    assert addresses == 2 * total


# --------------------------------------------------------------------------- R2


@pytest_asyncio.fixture
async def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """A Postgres server of this test's own (pgserver), migrated; stopped afterwards."""
    import pgserver

    pgdata = Path(f"/tmp/tr-r2-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    server = await asyncio.to_thread(pgserver.get_server, str(pgdata), cleanup_mode="delete")
    try:
        url = server.get_uri()
        upgraded = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "terrace.cli", "db", "upgrade", "--database-url", url],
            capture_output=True,
            text=True,
            check=False,
        )
        assert upgraded.returncode == 0, upgraded.stderr
        yield server
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.cleanup)


def kill_postgres(server: Any) -> None:
    """SIGKILL the postmaster, then whatever of its backends outlive it."""
    postmaster = psutil.Process(server.get_pid())
    children = postmaster.children(recursive=True)
    postmaster.send_signal(signal.SIGKILL)
    postmaster.wait(10)
    _gone, alive = psutil.wait_procs(children, timeout=5)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=5)


async def timed_call(api: Api, method: str, path: str, body: Any = None) -> tuple[int, float]:
    started = time.perf_counter()
    status, _ = await asyncio.wait_for(api.call(method, path, body), 30)
    return status, time.perf_counter() - started


async def read_back(api: Api, created: list[dict[str, Any]]) -> list[str]:
    """Endpoints answered 201 that are missing or changed now."""
    lost = []
    for doc in created:
        status, now = await api.get(f"/v1/endpoints/{doc['id']}")
        if status != 200 or now["ipv4"] != doc["ipv4"]:
            lost.append(f"{doc['name']}: {status}")
    return lost


async def until_serves(api: Api, network: str, deadline_s: float = 60) -> int:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last: Any = None
    while loop.time() < end:
        body = {"network_id": network, "host": "h0", "name": f"after-{loop.time():.3f}"}
        with contextlib.suppress(aiohttp.ClientError):
            last = await api.call("POST", "/v1/endpoints", body)
            if last[0] == 201:
                return 201
        await asyncio.sleep(0.2)
    raise AssertionError(f"the controller does not serve again; last answer: {last}")


async def test_r2_kill_controller_then_postgres(
    private_postgres: Any, tmp_path: Path, controllers: list[subprocess.Popen[bytes]]
) -> None:
    url = private_postgres.get_uri()
    first, base = await start_replica(tmp_path / "c1", url, controllers)
    api = Api(base, ADMIN_TOKEN)
    try:
        network = await fabric_for_load(api, hosts=4)
        load = Load([base], network, hosts=4)
        running = asyncio.create_task(load.run(100_000, stop_on_error=True))
        await _until(lambda: len(load.created) >= 200, "200 allocations before the kill", load)
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(running, 60)
        first.wait(10)
        answered = list(load.created)
        record_figure(
            "R2", "endpoints answered 201 before kill -9 of the controller", len(answered)
        )

        _, base = await start_replica(tmp_path / "c2", url, controllers)
        await api.session.close()
        api = Api(base, ADMIN_TOKEN)
        lost = await read_back(api, answered)
        record_figure("R2", "of them missing after a restarted controller", len(lost))
        assert lost == []
        assert await until_serves(api, network, deadline_s=10) == 201

        await asyncio.to_thread(kill_postgres, private_postgres)
        outage = [
            await timed_call(api, "GET", "/v1/endpoints"),
            await timed_call(
                api, "POST", "/v1/endpoints", {"network_id": network, "host": "h1", "name": "down"}
            ),
            await timed_call(api, "GET", "/v1/hosts/h1/desired-state?timeout=0"),
            await timed_call(api, "GET", "/healthz"),
        ]
        slowest = max(seconds for _, seconds in outage)
        record_figure("R2", "slowest answer while Postgres is down", round(slowest, 3), "s")
        record_figure("R2", "statuses while Postgres is down", " ".join(str(s) for s, _ in outage))
        assert all(status == 503 for status, _ in outage), outage
        assert all(seconds < 2 for _, seconds in outage), outage

        await asyncio.to_thread(private_postgres.ensure_postgres_running)
        assert await until_serves(api, network) == 201
        assert await read_back(api, answered) == []
    finally:
        await api.session.close()


async def _until(check: Any, what: str, load: Load, deadline_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while loop.time() < end:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; failures: {load.failures[:5]}")
