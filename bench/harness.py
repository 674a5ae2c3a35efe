"""Processes for the benchmarks that run a real controller (bench/fanout): a fresh
database on a Postgres server, `terrace controller` as a child process, its CPU time.

Imported by the bench scripts from their own directory. Everything it starts, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import asyncpg

SERVER = os.environ.get(
    "TERRACE_BENCH_DATABASE_URL", "postgresql:///postgres?host=/var/run/postgresql"
)


def with_db(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new, migrated database on SERVER; dropped afterwards. Yields its URL."""
    name = f"terrace_bench_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(SERVER)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_db(SERVER, name)
    try:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "terrace.cli", "db", "upgrade", "--database-url", url],
            check=True,
            capture_output=True,
        )
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def start_controller(url: str, token: str, port: int) -> subprocess.Popen[bytes]:
    """`terrace controller` on 127.0.0.1:port (py-spy around it when BENCH_PROFILE names
    an output file: `BENCH_PROFILE=/tmp/p.json bench/fanout`)."""
    env = {**os.environ, "TERRACE_ADMIN_TOKEN": token}
    profile = os.environ.get("BENCH_PROFILE")
    prefix = ["py-spy", "record", "-o", f"{profile}.{port}", "-f", "speedscope", "--"]
    args = [
        *(prefix if profile else []),
        sys.executable,
        "-m",
        "terrace.cli",
        "controller",
        "--database-url",
        url,
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        f"/tmp/terrace-bench-{port}",
    ]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"controller exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base + "/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("controller did not become healthy")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:13]) / ticks


def python_pid(proc: subprocess.Popen[bytes]) -> int:
    """The controller's own pid (under py-spy, the child of py-spy)."""
    if not os.environ.get("BENCH_PROFILE"):
        return proc.pid
    with contextlib.suppress(OSError):
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
    return proc.pid


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
