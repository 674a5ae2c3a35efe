"""The ops dashboard in a real browser (Debian Chromium via Playwright) against the real
controller on a real Postgres: sign-in, the fabric picture and its session colours, live
updates from the change feed, the policy matrix, tenant isolation, screenshots."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import EXPECTED_LINKS, screenshot
from tests.integration.conftest import Api, seed

pytestmark = pytest.mark.browser

ROUTERS = ("spine1", "spine2", "leaf1", "leaf2")
HOSTS = ("h1", "h2", "h3", "h4")
COLOURS = {  # the stroke of each session state (style.css)
    "established": "rgb(26, 127, 55)",
    "idle": "rgb(179, 92, 0)",
    "down": "rgb(207, 34, 46)",
    "unknown": "rgb(110, 119, 129)",
}
LIVE = 2000  # ms: a change made through the API shows without a reload within 2 s


async def sign_in(page: Any, api: Api, token: str) -> None:
    from playwright.async_api import expect

    await page.goto(api.base + "/")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#feed-state")).to_have_text("live")


async def open_tab(page: Any, name: str) -> None:
    from playwright.async_api import expect

    tab = page.get_by_role("tab", name=name)
    await tab.click()
    await expect(tab).to_have_attribute("aria-selected", "true")


async def test_fabric_shows_every_node_with_session_colours(
    page: Any, seeded: dict[str, Any]
) -> None:
    from playwright.async_api import expect

    api: Api = seeded["api"]
    await sign_in(page, api, api.token)
    for name in (*ROUTERS, *HOSTS):
        await expect(page.locator(f'svg [data-node="{name}"]')).to_have_count(1)
    for link, state in EXPECTED_LINKS.items():
        line = page.locator(f'svg line[data-link="{link}"]')
        await expect(line).to_have_attribute("data-state", state)
        stroke = await line.evaluate("el => getComputedStyle(el).stroke")
        assert stroke == COLOURS[state], (link, state, stroke)
    await expect(page.locator('[data-node="h2"]')).to_have_class("node host lagging")
    await expect(page.locator('[data-node="h4"]')).to_have_class("node host silent")
    await screenshot(page, "fabric")
    await page.locator('[data-node="h2"]').focus()
    await page.keyboard.press("Enter")
    details = page.locator("#details")
    await expect(details).to_contain_text("host h2")
    await expect(details.locator(".state.idle")).to_have_text("idle")
    await screenshot(page, "fabric-details")


async def test_endpoint_and_utilization_update_live(page: Any, seeded: dict[str, Any]) -> None:
    from playwright.async_api import expect

    api: Api = seeded["api"]
    await sign_in(page, api, api.token)
    await open_tab(page, "Tenants & networks")
    web_v4 = page.locator(f'[data-network="{seeded["web"]["id"]}"] .subnet').first
    await expect(web_v4).to_have_attribute("data-used", "1")
    await screenshot(page, "networks")
    await open_tab(page, "Endpoints")
    rows = page.locator("#endpoint-table tbody tr[data-endpoint]")
    await expect(rows).to_have_count(3)
    created = await api.ok(
        "POST", "/v1/endpoints", {"network_id": seeded["web"]["id"], "host": "h2", "name": "web-2"}
    )
    row = page.locator(f'tr[data-endpoint="{created["id"]}"]')
    await expect(row).to_contain_text(created["ipv4"], timeout=LIVE)
    await expect(row).to_contain_text("acme")
    await expect(web_v4).to_have_attribute("data-used", "2", timeout=LIVE)
    bar = web_v4.locator('[role="progressbar"]')
    await expect(bar).to_have_attribute("aria-valuetext", "2 of 64 addresses used")
    # search and sort work on the live rows
    await page.get_by_label("Search").fill("web")
    await expect(rows).to_have_count(2)
    await page.get_by_role("button", name="Name").click()  # sorted by name: now descending
    await expect(page.locator('th[data-key="name"]')).to_have_attribute("aria-sort", "descending")
    await expect(rows.first).to_contain_text("web-2")
    await screenshot(page, "endpoints")
    await row.get_by_role("button", name="Explain…").click()
    await expect(page.locator("#details")).to_contain_text("endpoint web-2")
    await page.get_by_label("Other side (endpoint or address)").fill(seeded["db-1"]["ipv4"])
    await page.locator("#details").get_by_role("button", name="Explain", exact=True).click()
    await expect(page.locator("#details .answer")).not_to_contain_text("Asking", timeout=5000)
    await screenshot(page, "endpoints-explain")
    await open_tab(page, "Events")
    await expect(page.locator("#event-list li").first).to_contain_text("web-2")
    await screenshot(page, "events")


async def test_rule_turns_its_matrix_cell_allowed(page: Any, seeded: dict[str, Any]) -> None:
    from playwright.async_api import expect

    api: Api = seeded["api"]
    web, db = seeded["web"]["id"], seeded["db"]["id"]
    await sign_in(page, api, api.token)
    await open_tab(page, "Policy")
    cell = page.locator(f'#policy-matrix td[data-src="{web}"][data-dst="{db}"]')
    await expect(cell).to_have_attribute("data-verdict", "denied")
    diagonal = page.locator(f'#policy-matrix td[data-src="{web}"][data-dst="{web}"]')
    await expect(diagonal).to_have_attribute("data-verdict", "membership")
    rule = await api.ok(
        "POST",
        f"/v1/networks/{db}/rules",
        {"from_network": web, "protocol": "tcp", "ports": [5432]},
        token=seeded["acme"]["token"],
    )
    await expect(cell).to_have_attribute("data-verdict", "rule", timeout=LIVE)
    await expect(cell).to_contain_text(f"rule {rule['id'][:8]}")
    reverse = page.locator(f'#policy-matrix td[data-src="{db}"][data-dst="{web}"]')
    await expect(reverse).to_have_attribute("data-verdict", "denied")
    drops = page.locator(f'#drops tr[data-network="{web}"]')
    await expect(drops).to_contain_text("acme/web42")  # web-1 on h1 reports 42 drops
    await expect(drops).to_contain_text("3")
    await screenshot(page, "policy")


async def test_tenant_sees_nothing_of_another_tenant(page: Any, seeded: dict[str, Any]) -> None:
    from playwright.async_api import expect

    api: Api = seeded["api"]
    ledger = seeded["ledger"]
    foreign = [
        "globex",
        "ledger",
        ledger["id"],
        seeded["ledger-1"]["id"],
        seeded["ledger-1"]["ipv4"],
        seeded["ledger-1"]["ipv6"],
    ]
    await sign_in(page, api, seeded["acme"]["token"])
    await expect(page.locator("#who")).to_have_text("tenant acme")
    # a change in the other tenant must not leak through the live feed either
    await api.ok(
        "POST", "/v1/endpoints", {"network_id": ledger["id"], "host": "h4", "name": "ledger-2"}
    )
    own = await api.ok(
        "POST",
        "/v1/endpoints",
        {"network_id": seeded["web"]["id"], "host": "h4", "name": "web-3"},
        token=seeded["acme"]["token"],
    )
    for tab, ready, own_text in (
        ("Fabric", "#panel-fabric .notice", "admin only"),
        ("Tenants & networks", f'[data-network="{seeded["web"]["id"]}"]', "2 endpoint(s)"),
        ("Endpoints", f'tr[data-endpoint="{own["id"]}"]', "web-3"),
        ("Policy", "#policy-matrix", "acme/db"),
        ("Events", "#event-list li", "web-3"),
    ):
        await open_tab(page, tab)
        await expect(page.locator(ready).first).to_be_visible(timeout=LIVE)
        await expect(page.locator('[role="tabpanel"]:not([hidden])')).to_contain_text(own_text)
        text = await page.locator("body").inner_text()
        html = await page.content()
        leaked = [item for item in foreign if item in text or item in html]
        assert not leaked, (tab, leaked)
        await screenshot(page, f"tenant-{tab.split()[-1].lower()}")


async def test_without_a_fabric_hosts_are_still_shown(page: Any, api: Api) -> None:
    from playwright.async_api import expect

    await seed(api)  # racks and hosts registered one by one, no topology applied
    await sign_in(page, api, api.token)
    await expect(page.locator("#panel-fabric .notice")).to_contain_text(
        "No fabric has been applied"
    )
    for name in ("h1", "h2"):
        await expect(page.locator(f'svg [data-node="{name}"]')).to_have_count(1)
    await expect(page.locator("svg [data-role=leaf], svg [data-role=spine]")).to_have_count(0)
    await screenshot(page, "fabric-empty")


async def test_sign_out_forgets_the_token(page: Any, api: Api) -> None:
    from playwright.async_api import expect

    await sign_in(page, api, api.token)
    await page.reload()  # the token survives a reload of this tab (sessionStorage)
    await expect(page.locator("#who")).to_have_text("admin")
    # the tabs work from the keyboard (arrow keys move between them)
    await page.get_by_role("tab", name="Fabric").focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Tenants & networks")).to_be_focused()
    await expect(page.locator("#panel-networks")).to_be_visible()
    await page.keyboard.press("End")
    await expect(page.get_by_role("tab", name="Events")).to_have_attribute("aria-selected", "true")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API token")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.get_by_label("API token").fill("tra_not_a_token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#signin-error")).to_have_text("That token is not valid.")


async def test_four_racks_fit_a_laptop_screen(page: Any, api: Api) -> None:
    from playwright.async_api import expect

    from tests.browser.conftest import ROOT

    topology = (ROOT / "lab" / "topologies" / "four-rack.clab.yml").read_text()
    code, report = await api.call("PUT", "/v1/fabric", raw=topology)
    assert code == 200, report
    await page.set_viewport_size({"width": 1366, "height": 768})
    await sign_in(page, api, api.token)
    nodes = page.locator("svg [data-node]")
    await expect(nodes).to_have_count(len(report["added"]["hosts"]) + 6)  # 2 spines, 4 leaves
    drawing = await page.locator(".drawing").evaluate("el => [el.scrollWidth, el.clientWidth]")
    assert drawing[0] <= drawing[1], f"the drawing scrolls sideways: {drawing}"
    await screenshot(page, "fabric-four-rack")
