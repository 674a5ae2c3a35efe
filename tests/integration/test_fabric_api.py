"""`PUT /v1/fabric` and friends: idempotent import, peers in the desired state, leaf
filters that follow allocations, route counts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import yaml

from fabric.plan import plan_fabric
from fabric.topology import load_topology
from tests.integration.conftest import Api

TOPOLOGIES = Path(__file__).resolve().parents[2] / "lab" / "topologies"
FOUR_RACK = (TOPOLOGIES / "four-rack.clab.yml").read_text()
TWO_RACK = (TOPOLOGIES / "two-rack.clab.yml").read_text()


async def apply(api: Api, text: str, status: int = 200) -> dict:
    code, report = await api.call(
        "PUT", "/v1/fabric", raw=text, headers={"Content-Type": "application/yaml"}
    )
    assert code == status, report
    return report


async def test_apply_is_idempotent_and_reports_changes(api: Api) -> None:
    first = await apply(api, FOUR_RACK)
    assert first["changed"] and len(first["added"]["hosts"]) == 12
    assert set(first["host_tokens"]) == set(first["added"]["hosts"])
    again = await apply(api, FOUR_RACK)
    assert not again["changed"] and again["added"] == {"racks": [], "hosts": []}
    # drop one host from the file: reported as removed
    doc = yaml.safe_load(FOUR_RACK)
    victim = next(
        n for n, v in doc["topology"]["nodes"].items() if v["labels"]["terrace.role"] == "host"
    )
    del doc["topology"]["nodes"][victim]
    doc["topology"]["links"] = [
        link
        for link in doc["topology"]["links"]
        if not any(e.startswith(victim + ":") for e in link["endpoints"])
    ]
    changed = await apply(api, yaml.safe_dump(doc))
    assert changed["removed"]["hosts"] == [victim]
    assert (await api.get(f"/v1/hosts/{victim}"))[0] == 404


async def test_host_with_endpoints_is_not_removed(api: Api) -> None:
    report = await apply(api, TWO_RACK)
    host = report["added"]["hosts"][0]
    await api.ok("POST", "/v1/pools", {"cidr": "10.64.0.0/16"})
    tenant = await api.ok("POST", "/v1/tenants", {"name": "acme"})
    net = await api.ok("POST", "/v1/networks", {"name": "web", "tenant_id": tenant["id"]})
    await api.ok("POST", f"/v1/networks/{net['id']}/subnets", {"family": 4, "prefix_length": 24})
    await api.ok("POST", "/v1/endpoints", {"network_id": net["id"], "host": host, "name": "c"})
    doc = yaml.safe_load(TWO_RACK)
    del doc["topology"]["nodes"][host]
    doc["topology"]["links"] = [
        link
        for link in doc["topology"]["links"]
        if not any(e.startswith(host + ":") for e in link["endpoints"])
    ]
    code, problem = await api.call("PUT", "/v1/fabric", raw=yaml.safe_dump(doc))
    assert code == 409 and host in problem["detail"]
    assert (await api.get(f"/v1/hosts/{host}"))[0] == 200


async def test_bad_topology_is_400_naming_the_fault(api: Api) -> None:
    doc = yaml.safe_load(TWO_RACK)
    doc["topology"]["links"].append({"endpoints": ["leaf1:eth9", "ghost:eth1"]})
    code, problem = await api.call("PUT", "/v1/fabric", raw=yaml.safe_dump(doc))
    assert code == 400 and "ghost" in problem["detail"]
    code, problem = await api.call("PUT", "/v1/fabric", raw="name: [unclosed")
    assert code == 400
    assert (await api.get("/v1/fabric"))[0] == 404


async def test_peers_match_the_plan(api: Api) -> None:
    await apply(api, FOUR_RACK)
    plan = plan_fabric(load_topology(FOUR_RACK))
    for name in list(plan.hosts)[:3]:
        state = await api.ok("GET", f"/v1/hosts/{name}/desired-state?timeout=0")
        expected = [
            {
                "name": p.name,
                "family": p.family,
                "peer_address": p.peer_address,
                "local_address": p.local_address,
                "peer_asn": p.peer_asn,
                "local_asn": p.local_asn,
                "hold_time": p.hold_time,
            }
            for p in plan.peers_for_host(name)
        ]
        assert state["peers"] == expected
        assert {p["family"] for p in state["peers"]} == {4, 6}
        assert state["host"]["asn"] == plan.hosts[name].asn
    shown = await api.ok("GET", "/v1/fabric")
    assert len(shown["routers"]) == 6 and len(shown["hosts"]) == 12


async def test_new_block_appears_in_its_leaf_filter(api: Api) -> None:
    await apply(api, TWO_RACK)
    plan = plan_fabric(load_topology(TWO_RACK))
    host = next(iter(plan.hosts.values()))
    leaf = host.leaves[0]
    await api.ok("POST", "/v1/pools", {"cidr": "10.64.0.0/16"})
    tenant = await api.ok("POST", "/v1/tenants", {"name": "acme"})
    net = await api.ok("POST", "/v1/networks", {"name": "web", "tenant_id": tenant["id"]})
    await api.ok("POST", f"/v1/networks/{net['id']}/subnets", {"family": 4, "prefix_length": 24})
    code, before = await api.get(f"/v1/fabric/routers/{leaf}/frr.conf")
    assert code == 200 and "router bgp" in before
    ep = await api.ok(
        "POST", "/v1/endpoints", {"network_id": net["id"], "host": host.name, "name": "c"}
    )
    code, after = await api.get(f"/v1/fabric/routers/{leaf}/frr.conf")
    block = ep["ipv4"].rsplit(".", 1)[0] + ".0/28"
    assert block not in before and f"permit {block}" in after
    routes = await api.ok("GET", "/v1/fabric/routes")
    assert {r["router"] for r in routes["routers"]} == set(plan.routers)
    assert all(r["without_aggregation"] == 1 for r in routes["routers"])


async def test_cli_fabric_apply_and_render(api: Api, tmp_path: Path) -> None:
    env_url = api.base
    topo = TOPOLOGIES / "four-rack.clab.yml"

    async def terrace(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "terrace.cli",
            *args,
            "--url",
            env_url,
            "--token",
            api.token,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await terrace("fabric", "apply", str(topo))
    assert code == 0, err
    assert "added 4 racks, 12 hosts" in out
    code, out, err = await terrace("fabric", "render", "leaf1")
    assert code == 0 and "router bgp" in out
    code, out, err = await terrace("fabric", "render", "nosuch")
    assert code == 1 and err.startswith("terrace: 404") and err.count("\n") == 1
