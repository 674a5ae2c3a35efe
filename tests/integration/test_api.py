"""The REST API contract of issue [core], against a real Postgres and the real app."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Any

import asyncpg

from tests.integration.conftest import Api, seed


async def count(database_url: str, table: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def test_pools_create_list_overlap_delete(api: Api) -> None:
    pool = await api.ok("POST", "/v1/pools", {"cidr": "10.64.0.0/10"})
    assert pool["family"] == 4 and pool["cidr"] == "10.64.0.0/10"
    status, problem = await api.post("/v1/pools", {"cidr": "10.65.0.0/16"})
    assert status == 409 and problem["type"].endswith("overlap")
    status, problem = await api.post("/v1/pools", {"cidr": "10.0.0.1/8"})
    assert status == 400 and "did you mean 10.0.0.0/8" in problem["detail"]
    listed = await api.ok("GET", "/v1/pools")
    assert [p["cidr"] for p in listed] == ["10.64.0.0/10"]
    await api.ok("DELETE", f"/v1/pools/{pool['id']}")
    assert await api.ok("GET", "/v1/pools") == []


async def test_pool_in_use_cannot_be_deleted(api: Api) -> None:
    s = await seed(api)
    pools = await api.ok("GET", "/v1/pools")
    status, problem = await api.delete(f"/v1/pools/{pools[0]['id']}")
    assert status == 409 and "subnet" in problem["detail"]
    assert s


async def test_tenants(api: Api) -> None:
    t = await api.ok("POST", "/v1/tenants", {"name": "acme"})
    assert t["token"].startswith("trt_")
    status, _ = await api.post("/v1/tenants", {"name": "acme"})
    assert status == 409
    # a tenant sees itself, and only itself
    other = await api.ok("POST", "/v1/tenants", {"name": "globex"})
    mine = await api.ok("GET", "/v1/tenants", token=t["token"])
    assert [x["name"] for x in mine] == ["acme"]
    assert (await api.get(f"/v1/tenants/{other['id']}", token=t["token"]))[0] == 404
    assert (await api.ok("GET", f"/v1/tenants/{t['id']}", token=t["token"]))["name"] == "acme"
    # a tenant calling an admin-only route gets 403
    assert (await api.post("/v1/tenants", {"name": "x"}, token=t["token"]))[0] == 403
    await api.ok("DELETE", f"/v1/tenants/{other['id']}")


async def test_tenant_with_networks_cannot_be_deleted(api: Api) -> None:
    s = await seed(api)
    status, problem = await api.delete(f"/v1/tenants/{s['acme']['id']}")
    assert status == 409 and "network" in problem["detail"]


async def test_racks_and_hosts(api: Api) -> None:
    rack = await api.ok("POST", "/v1/racks", {"name": "r1", "asn": 65001})
    assert rack["asn"] == 65001
    assert (await api.post("/v1/racks", {"name": "r1"}))[0] == 409
    host = await api.ok(
        "POST",
        "/v1/hosts",
        {"name": "h1", "rack": "r1", "address": "172.30.0.1", "address6": "fd00:30::1"},
    )
    assert host["asn"] >= 4200000000 and host["token"].startswith("trh_")
    assert (await api.post("/v1/hosts", {"name": "h2", "rack": "nope", "address": "172.30.0.3"}))[
        0
    ] == 404
    assert (await api.post("/v1/hosts", {"name": "h1", "rack": "r1", "address": "172.30.0.5"}))[
        0
    ] == 409
    assert (await api.post("/v1/hosts", {"name": "h3", "rack": "r1", "address": "300.1.1.1"}))[
        0
    ] == 400
    shown = await api.ok("GET", "/v1/hosts/h1")
    assert shown["address6"] == "fd00:30::1" and shown["rack"] == "r1"
    assert [h["name"] for h in await api.ok("GET", "/v1/hosts")] == ["h1"]
    # a host token sees itself only
    assert (await api.get("/v1/hosts/h1", token=host["token"]))[0] == 200
    assert (await api.get("/v1/hosts", token=host["token"]))[0] == 403
    await api.ok("DELETE", "/v1/hosts/h1")
    assert (await api.get("/v1/hosts/h1"))[0] == 404


async def test_host_with_endpoints_cannot_be_deleted(api: Api) -> None:
    s = await seed(api)
    await api.ok(
        "POST", "/v1/endpoints", {"network_id": s["acme_net"]["id"], "host": "h1", "name": "c1"}
    )
    status, problem = await api.delete("/v1/hosts/h1")
    assert status == 409 and "endpoint" in problem["detail"]


async def test_network_subnets_endpoints_lifecycle(api: Api, database_url: str) -> None:
    s = await seed(api)
    tok = s["acme"]["token"]
    net = s["acme_net"]
    shown = await api.ok("GET", f"/v1/networks/{net['id']}", token=tok)
    families = sorted(x["family"] for x in shown["subnets"])
    assert families == [4, 6]
    ep = await api.ok(
        "POST",
        "/v1/endpoints",
        {"network_id": net["id"], "host": "h1", "name": "c1", "netns": "c1ns"},
        token=tok,
    )
    assert ep["ipv4"] and ep["ipv6"] and ep["host"] == "h1"
    subnet4 = next(x for x in shown["subnets"] if x["family"] == 4)
    assert ipaddress.ip_address(ep["ipv4"]) in ipaddress.ip_network(subnet4["cidr"])
    listed = await api.ok("GET", f"/v1/endpoints?network_id={net['id']}", token=tok)
    assert [e["id"] for e in listed] == [ep["id"]]
    assert (await api.ok("GET", f"/v1/endpoints/{ep['id']}", token=tok))["name"] == "c1"
    # delete with endpoints → 409; subnet in use → 409
    assert (await api.delete(f"/v1/networks/{net['id']}", token=tok))[0] == 409
    assert (await api.delete(f"/v1/subnets/{subnet4['id']}", token=tok))[0] == 409
    deleted = await api.ok("DELETE", f"/v1/endpoints/{ep['id']}", token=tok)
    assert len(deleted["released_blocks"]) == 2  # the emptied blocks go back
    assert await count(database_url, "blocks WHERE true") == 0
    await api.ok("DELETE", f"/v1/subnets/{subnet4['id']}", token=tok)
    await api.ok("DELETE", f"/v1/networks/{net['id']}", token=tok)
    assert (await api.get(f"/v1/networks/{net['id']}", token=tok))[0] == 404


async def test_addresses_come_from_host_blocks(api: Api) -> None:
    s = await seed(api, v6=False)
    net = s["acme_net"]["id"]
    eps = [
        await api.ok("POST", "/v1/endpoints", {"network_id": net, "host": "h1", "name": f"c{i}"})
        for i in range(20)
    ]
    blocks = {ipaddress.ip_network(f"{e['ipv4']}/28", strict=False) for e in eps}
    assert len(blocks) == 2  # 20 addresses on one host → two /28 blocks, not 20 routes
    other = await api.ok("POST", "/v1/endpoints", {"network_id": net, "host": "h2", "name": "c0"})
    assert ipaddress.ip_network(f"{other['ipv4']}/28", strict=False) not in blocks


async def test_borrowing_when_no_block_can_be_carved(api: Api) -> None:
    s = await seed(api, v6=False)
    tok = s["globex"]["token"]
    net = await api.ok("POST", "/v1/networks", {"name": "tiny"}, token=tok)
    # a /28 subnet with /28 blocks: one block only, the second host must borrow
    await api.ok(
        "POST",
        f"/v1/networks/{net['id']}/subnets",
        {"family": 4, "prefix_length": 28, "block_prefix_length": 28},
        token=tok,
    )
    await api.ok(
        "POST", "/v1/endpoints", {"network_id": net["id"], "host": "h1", "name": "a"}, token=tok
    )
    borrowed = await api.ok(
        "POST", "/v1/endpoints", {"network_id": net["id"], "host": "h2", "name": "b"}, token=tok
    )
    status = await api.ok("GET", "/v1/status")
    assert status["borrowed_addresses"]["ipv4"] == 1
    h2 = await api.ok("GET", "/v1/hosts/h2/desired-state?after=-1&timeout=0")
    assert h2["borrowed"] == [{"address": borrowed["ipv4"], "network_id": net["id"]}]
    h1 = await api.ok("GET", "/v1/hosts/h1/desired-state?after=-1&timeout=0")
    block = next(b for b in h1["blocks"] if b["network_id"] == net["id"])
    assert block["holes"] == [borrowed["ipv4"]]
    # exhaustion: 16 addresses in all
    for i in range(14):
        await api.ok(
            "POST",
            "/v1/endpoints",
            {"network_id": net["id"], "host": "h1", "name": f"x{i}"},
            token=tok,
        )
    status_code, problem = await api.post(
        "/v1/endpoints", {"network_id": net["id"], "host": "h1", "name": "full"}, token=tok
    )
    assert status_code == 409 and "auto_grow" in problem["detail"]


async def test_auto_grow_adds_a_subnet(api: Api) -> None:
    s = await seed(api, v6=False)
    tok = s["acme"]["token"]
    net = await api.ok("POST", "/v1/networks", {"name": "grow", "auto_grow": True}, token=tok)
    await api.ok(
        "POST", f"/v1/networks/{net['id']}/subnets", {"family": 4, "prefix_length": 29}, token=tok
    )
    for i in range(9):
        await api.ok(
            "POST",
            "/v1/endpoints",
            {"network_id": net["id"], "host": "h1", "name": f"c{i}"},
            token=tok,
        )
    shown = await api.ok("GET", f"/v1/networks/{net['id']}", token=tok)
    assert len(shown["subnets"]) == 2
    assert all(x["cidr"].endswith("/29") for x in shown["subnets"])
    assert any(x["auto"] for x in shown["subnets"])


async def test_subnet_exhaustion_and_admin_cidr(api: Api) -> None:
    s = await seed(api)
    tok = s["acme"]["token"]
    net = s["acme_net"]["id"]
    status, problem = await api.post(
        f"/v1/networks/{net}/subnets", {"family": 4, "prefix_length": 8}, token=tok
    )
    assert status == 409 and problem["type"].endswith("exhausted")
    status, _ = await api.post(f"/v1/networks/{net}/subnets", {"cidr": "10.64.200.0/24"}, token=tok)
    assert status == 403  # only the admin names exact CIDRs
    made = await api.ok("POST", f"/v1/networks/{net}/subnets", {"cidr": "10.64.200.0/24"})
    assert made["cidr"] == "10.64.200.0/24"
    assert (await api.post(f"/v1/networks/{net}/subnets", {"cidr": "10.64.200.128/25"}))[0] == 409
    assert (await api.post(f"/v1/networks/{net}/subnets", {"cidr": "192.0.2.0/24"}))[0] == 409


async def test_rules(api: Api) -> None:
    s = await seed(api)
    acme, globex = s["acme"]["token"], s["globex"]["token"]
    dst, src = s["acme_net"]["id"], s["globex_net"]["id"]
    rule = await api.ok(
        "POST",
        f"/v1/networks/{dst}/rules",
        {"from_network": src, "protocol": "tcp", "ports": [443, "8000-8080"]},
        token=acme,
    )
    assert rule["ports"] == [443, "8000-8080"]
    # the source's owner cannot open the destination: 404, not 403
    status, _ = await api.post(f"/v1/networks/{dst}/rules", {"from_network": src}, token=globex)
    assert status == 404
    cidr = await api.ok(
        "POST",
        f"/v1/networks/{dst}/rules",
        {"from_cidr": "192.0.2.0/24", "protocol": "icmp"},
        token=acme,
    )
    assert {r["id"] for r in await api.ok("GET", f"/v1/networks/{dst}/rules", token=acme)} == {
        rule["id"],
        cidr["id"],
    }
    assert (await api.delete(f"/v1/rules/{rule['id']}", token=globex))[0] == 404
    await api.ok("DELETE", f"/v1/rules/{rule['id']}", token=acme)
    bad = [
        {"from_network": src, "from_cidr": "10.0.0.0/8"},
        {},
        {"from_cidr": "10.0.0.1/8"},
        {"from_cidr": "10.0.0.0/8", "protocol": "icmp", "ports": [80]},
        {"from_cidr": "10.0.0.0/8", "protocol": "tcp", "ports": [70000]},
        {"from_cidr": "10.0.0.0/8", "protocol": "tcp", "ports": ["90-80"]},
        {"from_cidr": "10.0.0.0/8", "protocol": "gre"},
    ]
    for body in bad:
        status, problem = await api.post(f"/v1/networks/{dst}/rules", body, token=acme)
        assert status == 400, (body, problem)
    assert len(await api.ok("GET", f"/v1/networks/{dst}/rules", token=acme)) == 1


async def test_tenant_isolation_both_ways(api: Api) -> None:
    s = await seed(api)
    acme, globex = s["acme"]["token"], s["globex"]["token"]
    ep = await api.ok(
        "POST",
        "/v1/endpoints",
        {"network_id": s["acme_net"]["id"], "host": "h1", "name": "a1"},
        token=acme,
    )
    foreign: list[tuple[str, str, Any]] = [
        ("GET", f"/v1/networks/{s['acme_net']['id']}", None),
        ("DELETE", f"/v1/networks/{s['acme_net']['id']}", None),
        ("POST", f"/v1/networks/{s['acme_net']['id']}/subnets", {"family": 4, "prefix_length": 28}),
        ("GET", f"/v1/networks/{s['acme_net']['id']}/rules", None),
        ("GET", f"/v1/endpoints/{ep['id']}", None),
        ("DELETE", f"/v1/endpoints/{ep['id']}", None),
        (
            "POST",
            "/v1/endpoints",
            {"network_id": s["acme_net"]["id"], "host": "h1", "name": "evil"},
        ),
        ("GET", f"/v1/tenants/{s['acme']['id']}", None),
    ]
    for method, path, body in foreign:
        status, _ = await api.call(method, path, body, token=globex)
        assert status == 404, (method, path, status)
    assert await api.ok("GET", "/v1/endpoints", token=globex) == []
    nets = await api.ok("GET", "/v1/networks", token=globex)
    assert [n["tenant"] for n in nets] == ["globex"]
    # and the other way round
    status, _ = await api.get(f"/v1/networks/{s['globex_net']['id']}", token=acme)
    assert status == 404
    # acme's objects are intact
    assert (await api.ok("GET", f"/v1/endpoints/{ep['id']}", token=acme))["name"] == "a1"


async def test_host_token_may_create_endpoints_only_for_itself(api: Api) -> None:
    s = await seed(api)
    host_tok = s["h1"]["token"]
    net = s["acme_net"]["id"]
    ep = await api.ok(
        "POST", "/v1/endpoints", {"network_id": net, "host": "h1", "name": "cni"}, token=host_tok
    )
    status, _ = await api.post(
        "/v1/endpoints", {"network_id": net, "host": "h2", "name": "x"}, token=host_tok
    )
    assert status == 404
    mine = await api.ok("GET", "/v1/endpoints", token=host_tok)
    assert [e["id"] for e in mine] == [ep["id"]]
    assert (await api.get("/v1/hosts/h2/desired-state?timeout=0", token=host_tok))[0] == 404


async def test_auth_errors(api: Api) -> None:
    assert (await api.get("/v1/status", token=""))[0] == 401
    assert (await api.get("/v1/status", token="trt_bogus"))[0] == 401
    status, problem = await api.get("/v1/pools", headers={"Authorization": "Basic x"}, token="")
    assert status == 401 and problem["status"] == 401


async def test_bad_inputs_are_400_and_write_nothing(api: Api, database_url: str) -> None:
    s = await seed(api)
    tok = s["acme"]["token"]
    net = s["acme_net"]["id"]
    before = {
        t: await count(database_url, t)
        for t in ("pools", "networks", "subnets", "endpoints", "addresses", "blocks")
    }
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", "/v1/pools", {"cidr": "10.0.0.0/33"}, 400),
        ("POST", "/v1/pools", {"cidr": 12}, 400),
        ("POST", "/v1/pools", {"cidr": "10.0.0.0/8", "extra": 1}, 400),
        ("POST", "/v1/pools", [1, 2], 400),
        ("POST", "/v1/networks", {"name": ""}, 400),
        ("POST", "/v1/networks", {"name": "x" * 65}, 400),
        ("POST", "/v1/networks", {"name": "ok", "auto_grow": "yes"}, 400),
        ("POST", f"/v1/networks/{net}/subnets", {"family": 5, "prefix_length": 24}, 400),
        ("POST", f"/v1/networks/{net}/subnets", {"family": 4, "prefix_length": 40}, 400),
        (
            "POST",
            f"/v1/networks/{net}/subnets",
            {"family": 4, "prefix_length": 28, "block_prefix_length": 20},
            400,
        ),
        ("POST", f"/v1/networks/{net}/subnets", {"family": 6, "prefix_length": 200}, 400),
        ("POST", "/v1/endpoints", {"network_id": net, "host": "h1"}, 400),
        ("POST", "/v1/endpoints", {"network_id": "nope", "host": "h1", "name": "a"}, 404),
        ("POST", "/v1/endpoints", {"network_id": net, "host": "nope", "name": "a"}, 404),
        (
            "POST",
            "/v1/endpoints",
            {"network_id": net, "host": "h1", "name": "a", "interface": "x" * 16},
            400,
        ),
        ("GET", "/v1/networks/not-a-uuid", None, 404),
        ("GET", "/v1/endpoints/00000000-0000-0000-0000-000000000000", None, 404),
        ("DELETE", "/v1/subnets/00000000-0000-0000-0000-000000000000", None, 404),
        ("GET", "/v1/hosts/h1/desired-state?after=abc", None, 400),
        ("GET", "/v1/hosts/h1/desired-state?timeout=9999", None, 400),
    ]
    for method, path, body, expected in cases:
        admin_only = "pools" in path or "desired-state" in path
        status, problem = await api.call(method, path, body, token=None if admin_only else tok)
        assert status == expected, (method, path, body, status, problem)
        assert problem["status"] == expected and problem["detail"]
    status, problem = await api.post("/v1/pools", raw="{not json")
    assert status == 400 and "JSON" in problem["detail"]
    after = {t: await count(database_url, t) for t in before}
    assert after == before


async def test_concurrent_allocations_never_duplicate(api: Api) -> None:
    s = await seed(api)
    net = s["acme_net"]["id"]

    async def make(i: int, host: str) -> dict[str, Any]:
        return await api.ok(
            "POST", "/v1/endpoints", {"network_id": net, "host": host, "name": f"{host}-c{i}"}
        )

    same_host = await asyncio.gather(*(make(i, "h1") for i in range(32)))
    across = await asyncio.gather(*(make(i, "h2" if i % 2 else "h1") for i in range(32, 64)))
    eps = same_host + across
    v4 = [e["ipv4"] for e in eps]
    v6 = [e["ipv6"] for e in eps]
    assert len(set(v4)) == 64 and len(set(v6)) == 64


async def test_status_and_counts(api: Api) -> None:
    s = await seed(api)
    st = await api.ok("GET", "/v1/status")
    assert st["counts"]["networks"] == 2 and st["revision"] > 0
    mine = await api.ok("GET", "/v1/status", token=s["acme"]["token"])
    assert mine["counts"]["networks"] == 1 and "hosts" not in mine["counts"]


async def test_healthz_metrics_openapi(api: Api) -> None:
    status, health = await api.get("/healthz", token="")
    assert status == 200 and health["database"] == "ok"
    await seed(api)
    status, text = await api.get("/metrics", token="")
    assert status == 200 and "terrace_http_requests_total" in text
    assert "terrace_db_pool_checked_out" in text and "terrace_borrowed_addresses" in text


async def test_desired_state_long_poll_wakes_on_change(api: Api) -> None:
    s = await seed(api)
    first = await api.ok("GET", "/v1/hosts/h1/desired-state?after=-1", token=s["h1"]["token"])
    assert first["host"]["name"] == "h1" and first["endpoints"] == []
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(
        api.get(
            f"/v1/hosts/h1/desired-state?after={first['revision']}&timeout=20",
            token=s["h1"]["token"],
        )
    )
    await asyncio.sleep(0.3)
    assert not poll.done()
    await api.ok(
        "POST", "/v1/endpoints", {"network_id": s["acme_net"]["id"], "host": "h1", "name": "c1"}
    )
    status, state = await asyncio.wait_for(poll, 10)
    assert status == 200 and state["revision"] > first["revision"]
    assert [e["name"] for e in state["endpoints"]] == ["c1"]
    assert loop.time() - started < 10
    # a change on another host does not change h1's revision
    await api.ok(
        "POST", "/v1/endpoints", {"network_id": s["acme_net"]["id"], "host": "h2", "name": "c2"}
    )
    again = await api.ok("GET", "/v1/hosts/h1/desired-state?timeout=0")
    assert again["revision"] == state["revision"]


async def test_desired_state_networks_include_rule_sources(api: Api) -> None:
    s = await seed(api)
    acme = s["acme"]["token"]
    await api.ok(
        "POST",
        "/v1/endpoints",
        {"network_id": s["acme_net"]["id"], "host": "h1", "name": "c1"},
        token=acme,
    )
    await api.ok(
        "POST",
        f"/v1/networks/{s['acme_net']['id']}/rules",
        {"from_network": s["globex_net"]["id"]},
        token=acme,
    )
    state = await api.ok("GET", "/v1/hosts/h1/desired-state?timeout=0")
    assert {n["id"] for n in state["networks"]} == {s["acme_net"]["id"], s["globex_net"]["id"]}
    assert len(state["rules"]) == 1
    # adding a subnet to the rule's source network bumps h1 (its ipset changes)
    before = state["revision"]
    await api.ok(
        "POST",
        f"/v1/networks/{s['globex_net']['id']}/subnets",
        {"family": 4, "prefix_length": 26},
        token=s["globex"]["token"],
    )
    after = await api.ok("GET", "/v1/hosts/h1/desired-state?timeout=0")
    assert after["revision"] > before
    src = next(n for n in after["networks"] if n["id"] == s["globex_net"]["id"])
    assert len(src["subnets"]) == 3


async def test_host_status_report(api: Api) -> None:
    s = await seed(api)
    await api.ok(
        "POST",
        "/v1/hosts/h1/status",
        {"applied_revision": 3, "bgp": {"up": 2}},
        token=s["h1"]["token"],
        status=200,
    )
    shown = await api.ok("GET", "/v1/hosts/h1")
    assert shown["status"]["applied_revision"] == 3 and shown["status"]["bgp"] == {"up": 2}
    assert (await api.post("/v1/hosts/h2/status", {}, token=s["h1"]["token"]))[0] == 404


async def test_event_stream_pushes_changes(api: Api) -> None:
    s = await seed(api)
    seen: list[dict[str, Any]] = []

    async def listen(token: str) -> None:
        async with api.session.get(
            api.base + "/v1/events/stream", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))
                    return

    task = asyncio.create_task(listen(s["acme"]["token"]))
    await asyncio.sleep(0.3)
    # globex's change is not shown to acme; acme's is
    await api.ok("POST", "/v1/networks", {"name": "hidden"}, token=s["globex"]["token"])
    await api.ok("POST", "/v1/networks", {"name": "db"}, token=s["acme"]["token"])
    await asyncio.wait_for(task, 5)
    assert seen[0]["kind"] == "network" and "acme/db" in seen[0]["summary"]


async def test_explain_same_network_rule_and_default_deny(api: Api) -> None:
    s = await seed(api)
    acme, globex = s["acme"]["token"], s["globex"]["token"]
    a1 = await api.ok(
        "POST",
        "/v1/endpoints",
        {"network_id": s["acme_net"]["id"], "host": "h1", "name": "a1"},
        token=acme,
    )
    a2 = await api.ok(
        "POST",
        "/v1/endpoints",
        {"network_id": s["acme_net"]["id"], "host": "h2", "name": "a2"},
        token=acme,
    )
    g1 = await api.ok(
        "POST",
        "/v1/endpoints",
        {"network_id": s["globex_net"]["id"], "host": "h2", "name": "g1"},
        token=globex,
    )
    same = await api.ok("GET", f"/v1/explain?src={a1['ipv4']}&dst=a2", token=acme)
    assert same["allowed"] and same["reason"] == "same-network"
    assert same["dst_endpoint"] == "a2" and a2["ipv4"] == same["dst"]
    denied = await api.ok(
        "GET", f"/v1/explain?src={g1['ipv4']}&dst={a1['ipv4']}&proto=tcp&port=443"
    )
    assert not denied["allowed"] and denied["reason"] == "default-deny"
    assert "web" in denied["message"]
    rule = await api.ok(
        "POST",
        f"/v1/networks/{s['acme_net']['id']}/rules",
        {"from_network": s["globex_net"]["id"], "protocol": "tcp", "ports": [443]},
        token=acme,
    )
    allowed = await api.ok(
        "GET", f"/v1/explain?src={g1['ipv4']}&dst={a1['ipv4']}&proto=tcp&port=443"
    )
    assert allowed["allowed"] and allowed["rule_id"] == rule["id"]
    ping = await api.ok("GET", f"/v1/explain?src={g1['ipv4']}&dst={a1['ipv4']}&proto=icmp")
    assert not ping["allowed"] and ping["reason"] == "default-deny"
    anything = await api.ok("GET", f"/v1/explain?src={g1['ipv4']}&dst={a1['ipv4']}")
    assert not anything["allowed"] and anything["partial_rules"] == [rule["id"]]
    # a third tenant cannot probe acme and globex
    other = await api.ok("POST", "/v1/tenants", {"name": "initech"})
    status, _ = await api.get(
        f"/v1/explain?src={g1['ipv4']}&dst={a1['ipv4']}", token=other["token"]
    )
    assert status == 404
    assert (await api.get("/v1/explain?src=a1", token=acme))[0] == 400
    assert (await api.get("/v1/explain?src=a1&dst=nobody", token=acme))[0] == 404


async def test_deleted_tenant_token_stops_working_at_once(api: Api) -> None:
    tenant = await api.ok("POST", "/v1/tenants", {"name": "shortlived"})
    assert (await api.get("/v1/status", token=tenant["token"]))[0] == 200  # now cached
    await api.ok("DELETE", f"/v1/tenants/{tenant['id']}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    status = 200
    while loop.time() < deadline:
        status, _ = await api.get("/v1/status", token=tenant["token"])
        if status == 401:
            break
        await asyncio.sleep(0.02)
    assert status == 401
