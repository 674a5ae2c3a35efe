"""Browser tier: Debian Chromium driven by Playwright against the real controller on a
real Postgres (the integration fixtures), with a seeded two-rack fabric."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from fabric.policy import compile_host_policy
from fabric.state import HostState
from tests.conftest import require
from tests.integration import conftest as integration
from tests.integration.conftest import Api

# The integration fixtures, reused as they are (a real Postgres, the real app).
database_url = integration.database_url
admin_token = integration.admin_token
server = integration.server
api = integration.api

CHROMIUM = os.environ.get("TERRACE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
DOC_IMAGES = ROOT / "docs" / "img"
TWO_RACK = (ROOT / "lab" / "topologies" / "two-rack.clab.yml").read_text()


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        require(False, "the playwright pip package is not installed")
        raise
    require(shutil.which(CHROMIUM) is not None, f"Chromium is not installed at {CHROMIUM}")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh tab (empty sessionStorage); any uncaught script error fails the test."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        await context.close()
    assert not errors, f"script errors in the dashboard: {errors}"


async def screenshot(page: Any, name: str) -> Path:
    """Save under test-output/screenshots/; with UPDATE_SCREENSHOTS=1 also refresh the
    copies in docs/img/ used by the README (not on every run: they would churn git)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / f"dashboard-{name}.png")
    return path


async def report_status(
    api: Api,
    host: str,
    sessions: dict[tuple[str, int], str],
    applied: int,
    counters: dict[str, int] | None = None,
) -> None:
    """What a speaker would post: its BGP session states and applied revision."""
    doc = {
        "applied_revision": applied,
        "last_error": None,
        "bgp": {
            "sessions": [
                {
                    "name": leaf,
                    "family": family,
                    "peer_address": f"peer-{leaf}-{family}",
                    "state": state,
                }
                for (leaf, family), state in sessions.items()
            ],
            "announced": 0,
            "desired": 0,
        },
        "firewall_counters": counters or {},
    }
    await api.ok("POST", f"/v1/hosts/{host}/status", doc, status=200)


# What the seeded hosts report: (leaf, family) → state; h4 never reports.
SESSIONS = {
    "h1": {("leaf1", 4): "up", ("leaf1", 6): "up"},
    "h2": {("leaf1", 4): "up", ("leaf1", 6): "idle"},
    "h3": {("leaf2", 4): "down", ("leaf2", 6): "down"},
}
EXPECTED_LINKS = {
    "leaf1~h1~4": "established",
    "leaf1~h1~6": "established",
    "leaf1~h2~4": "established",
    "leaf1~h2~6": "idle",
    "leaf2~h3~4": "down",
    "leaf2~h3~6": "down",
    "leaf2~h4~4": "unknown",
    "leaf2~h4~6": "unknown",
    "spine1~leaf1": "unknown",
    "spine2~leaf2": "unknown",
}


@pytest_asyncio.fixture
async def seeded(api: Api) -> dict[str, Any]:
    """The two-rack fabric, two tenants (acme: web, db; globex: ledger), an endpoint in
    each network, hosts reporting sessions (h2 lagging, h4 silent)."""
    code, report = await api.call(
        "PUT", "/v1/fabric", raw=TWO_RACK, headers={"Content-Type": "application/yaml"}
    )
    assert code == 200, report
    await api.ok("POST", "/v1/pools", {"cidr": "10.64.0.0/16"})
    await api.ok("POST", "/v1/pools", {"cidr": "2001:db8:100::/40"})
    s: dict[str, Any] = {"api": api}
    for tenant, networks in (("acme", ("web", "db")), ("globex", ("ledger",))):
        s[tenant] = await api.ok("POST", "/v1/tenants", {"name": tenant})
        for name in networks:
            net = await api.ok("POST", "/v1/networks", {"name": name}, token=s[tenant]["token"])
            for family, length in ((4, 26), (6, 64)):
                await api.ok(
                    "POST",
                    f"/v1/networks/{net['id']}/subnets",
                    {"family": family, "prefix_length": length},
                    token=s[tenant]["token"],
                )
            s[name] = net
    for name, host in (("web", "h1"), ("db", "h3"), ("ledger", "h2")):
        s[f"{name}-1"] = await api.ok(
            "POST",
            "/v1/endpoints",
            {"network_id": s[name]["id"], "host": host, "name": f"{name}-1"},
        )
    revision = (await api.ok("GET", "/v1/status", status=200))["revision"]
    counters = await drop_counters(api, "h1", s["web-1"]["id"], dropped=42, spoofed=3)
    for host, sessions in SESSIONS.items():
        applied = 0 if host == "h2" else revision
        await report_status(api, host, sessions, applied, counters if host == "h1" else None)
    return s


async def drop_counters(
    api: Api, host: str, endpoint_id: str, *, dropped: int, spoofed: int
) -> dict[str, int]:
    """Counters keyed by rule hash, as the speaker reads them from iptables-save -c."""
    state = HostState.from_json(
        await api.ok("GET", f"/v1/hosts/{host}/desired-state?timeout=0", status=200)
    )
    origins = compile_host_policy(state).origins()
    wanted = {f"default-drop:{endpoint_id}": dropped, f"spoofed-source:{endpoint_id}": spoofed}
    return {rule_hash: wanted[origin] for rule_hash, origin in origins.items() if origin in wanted}
