"""The dashboard's read-only views (`/v1/views/*`) and the dashboard's static files:
tenant scoping, the policy matrix, usage, drop counters, nothing served but the files."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from fabric.policy import compile_host_policy
from fabric.state import HostState
from tests.integration.conftest import Api, seed

DASHBOARD = Path(__file__).resolve().parents[2] / "controller" / "dashboard"


async def test_networks_view_is_scoped_and_counts_usage(api: Api) -> None:
    s = await seed(api)
    acme, globex = s["acme"]["token"], s["globex"]["token"]
    await api.ok(
        "POST", "/v1/endpoints", {"network_id": s["acme_net"]["id"], "host": "h1", "name": "a"}
    )
    mine = await api.ok("GET", "/v1/views/networks", status=200, token=acme)
    assert [n["id"] for n in mine] == [s["acme_net"]["id"]]
    v4 = next(sub for sub in mine[0]["subnets"] if sub["family"] == 4)
    assert (v4["used"], v4["size"], v4["blocks"], v4["blocks_per_host"]) == (1, 256, 1, {"h1": 1})
    theirs = await api.ok("GET", "/v1/views/networks", status=200, token=globex)
    assert [n["id"] for n in theirs] == [s["globex_net"]["id"]]
    assert theirs[0]["subnets"][0]["used"] == 0
    everything = await api.ok("GET", "/v1/views/networks", status=200)
    assert len(everything) == 2
    host = await api.ok("POST", "/v1/hosts/h1/token", status=201)
    assert await api.ok("GET", "/v1/views/networks", status=200, token=host["token"]) == []


async def test_policy_matrix_cells_and_scope(api: Api) -> None:
    s = await seed(api)
    acme = s["acme"]["token"]
    db = await api.ok("POST", "/v1/networks", {"name": "db"}, token=acme)
    web = s["acme_net"]["id"]
    rule = await api.ok(
        "POST",
        f"/v1/networks/{db['id']}/rules",
        {"from_network": web, "protocol": "tcp", "ports": [5432]},
        token=acme,
    )
    # globex opens its network to acme/web: acme must not learn about globex's network
    await api.ok(
        "POST",
        f"/v1/networks/{s['globex_net']['id']}/rules",
        {"from_network": web},
        token=s["globex"]["token"],
    )
    doc = await api.ok("GET", "/v1/views/policy", status=200, token=acme)
    assert {n["id"] for n in doc["networks"]} == {web, db["id"]}
    verdicts = {
        (c["src"], c["dst"]): (c["verdict"], [r["id"] for r in c["rules"]]) for c in doc["cells"]
    }
    assert verdicts[(web, db["id"])] == ("rule", [rule["id"]])
    assert verdicts[(db["id"], web)] == ("denied", [])
    assert verdicts[(web, web)] == ("membership", [])
    assert s["globex_net"]["id"] not in str(doc)
    admin = await api.ok("GET", "/v1/views/policy", status=200)
    assert admin["rules_from_elsewhere"] == 0 and len(admin["networks"]) == 3


async def test_fabric_view_is_admin_only_and_drops_follow_counters(api: Api) -> None:
    s = await seed(api)
    code, problem = await api.get("/v1/views/fabric", token=s["acme"]["token"])
    assert code == 403, problem
    endpoint = await api.ok(
        "POST", "/v1/endpoints", {"network_id": s["acme_net"]["id"], "host": "h1", "name": "a"}
    )
    view = await api.ok("GET", "/v1/views/fabric", status=200)
    assert view["fabric"] is None and view["routes"] is None
    h1 = next(h for h in view["hosts"] if h["name"] == "h1")
    assert (h1["endpoints"], h1["reported"], h1["lagging"], h1["sessions"]) == (1, False, False, [])
    state = HostState.from_json(
        await api.ok("GET", "/v1/hosts/h1/desired-state?timeout=0", status=200)
    )
    counters = {
        rule_hash: 5
        for rule_hash, origin in compile_host_policy(state).origins().items()
        if origin == f"default-drop:{endpoint['id']}"
    }
    assert counters
    status = {
        "applied_revision": 0,
        "bgp": {"sessions": [{"name": "leaf1", "family": 4, "state": "up"}]},
        "firewall_counters": counters,
    }
    await api.ok("POST", "/v1/hosts/h1/status", status, status=200)
    h1 = next(
        h
        for h in (await api.ok("GET", "/v1/views/fabric", status=200))["hosts"]
        if h["name"] == "h1"
    )
    assert h1["lagging"] and h1["sessions"][0]["state"] == "up"
    assert "firewall_counters" not in h1["status"]
    drops = (await api.ok("GET", "/v1/views/policy", status=200, token=s["acme"]["token"]))["drops"]
    assert drops == {
        "reported_hosts": 1,
        "networks": {s["acme_net"]["id"]: {"dropped": 5 * len(counters), "spoofed": 0}},
    }
    other = (await api.ok("GET", "/v1/views/policy", status=200, token=s["globex"]["token"]))[
        "drops"
    ]
    assert other["networks"] == {}


async def test_dashboard_serves_its_files_and_nothing_else(api: Api) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(api.base + "/") as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        modules = set(re.findall(r'src="/ui/([\w.]+)"', page))
        for name in sorted(DASHBOARD.glob("*.js")):
            modules |= set(re.findall(r'from "\./([\w.]+)"', name.read_text()))
        for name in sorted(modules | {"style.css"}):
            async with http.get(f"{api.base}/ui/{name}") as r:
                assert r.status == 200, name
                assert r.content_type in ("text/javascript", "text/css"), name
        for bad in ("__init__.py", "..%2Fapp.py", ".hidden.js", "missing.js"):
            async with http.get(f"{api.base}/ui/{bad}") as r:
                assert r.status == 404, bad
        # no file of the dashboard fetches anything from elsewhere
        for path in DASHBOARD.iterdir():
            if path.suffix in (".html", ".js", ".css"):
                assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", path.read_text()), path
