"""The physical fabric: import a containerlab topology, serve its plan, render router
configs with per-host prefix filters from the current allocations, count routes.

The topology text is stored as given; the plan is recomputed from it (pure and
deterministic, `fabric.plan`). Applying a file registers racks and hosts idempotently
and fills each host's BGP `peers`; it never removes a host that still has endpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections import defaultdict
from dataclasses import asdict
from functools import lru_cache
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from controller import feed
from controller.api_admin import delete_host_row
from controller.auth import Principal, hash_token, new_token
from controller.context import ctx
from controller.problems import Problem, bad_request, conflict, not_found
from controller.registry import Query, route
from fabric.frr import RenderError, render_router_config
from fabric.plan import FabricPlan, PlanError, plan_fabric
from fabric.routes import aggregates_for, route_counts
from fabric.topology import TopologyError, load_topology

MAX_TOPOLOGY = 1 << 20


@lru_cache(maxsize=8)
def plan_of(topology_text: str) -> FabricPlan:
    return plan_fabric(load_topology(topology_text))


async def current_plan(conn: AsyncConnection) -> FabricPlan | None:
    topology = await conn.scalar(text("SELECT topology FROM fabric WHERE id = 1"))
    return None if topology is None else plan_of(topology)


async def require_plan(conn: AsyncConnection) -> FabricPlan:
    plan = await current_plan(conn)
    if plan is None:
        raise Problem(
            404, "no fabric has been applied yet; run `terrace fabric apply FILE`", kind="no-fabric"
        )
    return plan


def _parse_topology(raw: bytes) -> tuple[str, FabricPlan]:
    if len(raw) > MAX_TOPOLOGY:
        raise Problem(413, f"the topology is larger than {MAX_TOPOLOGY} bytes", kind="too-large")
    try:
        topology_text = raw.decode()
        return topology_text, plan_of(topology_text)
    except UnicodeDecodeError:
        raise bad_request("the topology must be UTF-8 text (YAML or JSON)") from None
    except (TopologyError, PlanError) as exc:
        raise bad_request(str(exc)) from None


@route(
    "PUT",
    "/v1/fabric",
    summary="Apply a containerlab topology (YAML or JSON body)",
    auth="admin",
    status=200,
    errors=(400, 409, 413),
    tag="fabric",
)
async def apply_fabric(request: web.Request, who: Principal) -> dict[str, Any]:
    topology_text, plan = _parse_topology(await request.read())
    async with ctx(request).engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x7E4ACE03})
        report = await _apply_plan(conn, plan)
        await conn.execute(
            text(
                "INSERT INTO fabric (id, topology, model) VALUES (1, :t, CAST(:m AS jsonb)) "
                "ON CONFLICT (id) DO UPDATE SET topology = :t, model = CAST(:m AS jsonb), "
                "updated_at = now()"
            ),
            {
                "t": topology_text,
                "m": json.dumps({"name": plan.topology.name, "hosts": sorted(plan.hosts)}),
            },
        )
        if report["changed"]:
            await feed.record(
                conn,
                kind="fabric",
                action="applied",
                object_id=plan.topology.name,
                hosts=report["hosts_changed"],
                summary=f"fabric {plan.topology.name} applied: " + _summary(report),
            )
    return report


def _summary(report: dict[str, Any]) -> str:
    parts = [f"{len(v)} {k}" for k, v in report["added"].items() if v]
    parts += [f"{len(v)} {k} removed" for k, v in report["removed"].items() if v]
    return ", ".join(parts) or "updated"


async def _apply_plan(conn: AsyncConnection, plan: FabricPlan) -> dict[str, Any]:
    added: dict[str, list[str]] = {"racks": [], "hosts": []}
    removed: dict[str, list[str]] = {"racks": [], "hosts": []}
    changed_hosts: list[str] = []
    tokens: dict[str, str] = {}
    await _remove_stale_hosts(conn, plan, removed, changed_hosts)
    rack_ids = await _upsert_racks(conn, plan, added)
    for host in plan.hosts.values():
        peers = json.dumps([asdict(p) for p in plan.peers_for_host(host.name)])
        row = (
            await conn.execute(
                text(
                    "SELECT h.id::text, h.asn, host(h.address) AS a, host(h.address6) AS a6, "
                    "h.peers, r.name AS rack FROM hosts h JOIN racks r ON r.id = h.rack_id "
                    "WHERE h.name = :n"
                ),
                {"n": host.name},
            )
        ).first()
        if row is None:
            tokens[host.name] = await _insert_host(conn, host, rack_ids, peers)
            added["hosts"].append(host.name)
            changed_hosts.append(host.name)
        elif (row.asn, row.a, row.a6, row.rack, row.peers) != (
            host.asn,
            host.address,
            host.address6,
            host.rack,
            json.loads(peers),
        ):
            await conn.execute(
                text(
                    "UPDATE hosts SET asn = :asn, address = :a, address6 = :a6, rack_id = :r, "
                    "peers = CAST(:p AS jsonb), revision = nextval('terrace_revision') "
                    "WHERE id = :id"
                ),
                {
                    "asn": host.asn,
                    "a": host.address,
                    "a6": host.address6,
                    "r": rack_ids[str(host.rack)],
                    "p": peers,
                    "id": row.id,
                },
            )
            changed_hosts.append(host.name)
    changed = any(added.values()) or any(removed.values()) or bool(changed_hosts)
    return {
        "name": plan.topology.name,
        "changed": changed,
        "added": added,
        "removed": removed,
        "hosts_changed": sorted(changed_hosts),
        "host_tokens": tokens,
    }


async def _upsert_racks(
    conn: AsyncConnection, plan: FabricPlan, added: dict[str, list[str]]
) -> dict[str, str]:
    ids: dict[str, str] = {}
    for rack in plan.topology.racks():
        leaves = plan.topology.leaves_in(rack)
        asn = plan.routers[leaves[0].name].asn if len(leaves) == 1 else None
        row = (
            await conn.execute(text("SELECT id::text, asn FROM racks WHERE name = :n"), {"n": rack})
        ).first()
        if row is None:
            ids[rack] = str(
                await conn.scalar(
                    text("INSERT INTO racks (name, asn) VALUES (:n, :a) RETURNING id::text"),
                    {"n": rack, "a": asn},
                )
            )
            added["racks"].append(rack)
            continue
        ids[rack] = row.id
        if row.asn != asn:
            await conn.execute(
                text("UPDATE racks SET asn = :a WHERE id = :i"), {"a": asn, "i": row.id}
            )
    return ids


async def _insert_host(
    conn: AsyncConnection, host: Any, rack_ids: dict[str, str], peers: str
) -> str:
    token = new_token("host")
    host_id = await conn.scalar(
        text(
            "INSERT INTO hosts (name, rack_id, asn, address, address6, peers, revision) "
            "VALUES (:n, :r, :asn, :a, :a6, CAST(:p AS jsonb), nextval('terrace_revision')) "
            "RETURNING id::text"
        ),
        {
            "n": host.name,
            "r": rack_ids[str(host.rack)],
            "asn": host.asn,
            "a": host.address,
            "a6": host.address6,
            "p": peers,
        },
    )
    await conn.execute(
        text("INSERT INTO tokens (token_hash, kind, host_id) VALUES (:h, 'host', :i)"),
        {"h": hash_token(token), "i": host_id},
    )
    return token


async def _remove_stale_hosts(
    conn: AsyncConnection, plan: FabricPlan, removed: dict[str, list[str]], changed: list[str]
) -> None:
    """Hosts the previous file had and this one does not: removed, unless in use."""
    model = await conn.scalar(text("SELECT model FROM fabric WHERE id = 1"))
    previous = set((model or {}).get("hosts", []))
    for name in sorted(previous - set(plan.hosts)):
        host_id = await conn.scalar(text("SELECT id::text FROM hosts WHERE name = :n"), {"n": name})
        if host_id is None:
            continue
        try:
            await delete_host_row(conn, host_id, name)
        except Problem as exc:
            raise conflict(
                f"the new file drops host {name}, but {exc.detail}", kind="in-use"
            ) from None
        removed["hosts"].append(name)
        changed.append(name)


@route(
    "GET",
    "/v1/fabric",
    summary="The applied topology and its numbering plan",
    auth="admin",
    errors=(404,),
    tag="fabric",
)
async def get_fabric(request: web.Request, who: Principal) -> dict[str, Any]:
    async with ctx(request).engine.connect() as conn:
        plan = await require_plan(conn)
    return plan_document(plan)


def plan_document(plan: FabricPlan) -> dict[str, Any]:
    topology = plan.topology
    return {
        "name": topology.name,
        "racks": list(topology.racks()),
        "routers": [asdict(r) for r in plan.routers.values()],
        "hosts": [asdict(h) for h in plan.hosts.values()],
        "links": [asdict(link) for link in plan.links],
        "nodes": {
            n.name: {"role": n.role, "rack": n.rack, "kind": n.kind, "image": n.image}
            for n in topology.nodes.values()
        },
    }


async def allocations_by_host(conn: AsyncConnection) -> dict[str, list[str]]:
    """Host name → the CIDRs it may announce: its blocks and borrowed /32 and /128."""
    rows = await conn.execute(
        text(
            "SELECT h.name, b.cidr::text AS cidr FROM blocks b JOIN hosts h ON h.id = b.host_id "
            "UNION ALL SELECT h.name, (a.address::cidr)::text FROM addresses a "
            "JOIN endpoints e ON e.id = a.endpoint_id JOIN hosts h ON h.id = e.host_id "
            "WHERE a.block_id IS NULL"
        )
    )
    out: dict[str, list[str]] = defaultdict(list)
    for name, cidr in rows:
        out[name].append(str(ipaddress.ip_network(cidr)))
    return dict(out)


async def rack_slices(conn: AsyncConnection) -> dict[str, list[str]]:
    """Rack → the slices of rack-aware subnets its blocks lie in."""
    rows = await conn.execute(
        text(
            "SELECT DISTINCT r.name, set_masklen(b.cidr, s.rack_prefix_length)::cidr::text "
            "FROM blocks b JOIN subnets s ON s.id = b.subnet_id "
            "JOIN hosts h ON h.id = b.host_id JOIN racks r ON r.id = h.rack_id "
            "WHERE s.rack_prefix_length IS NOT NULL"
        )
    )
    out: dict[str, list[str]] = defaultdict(list)
    for rack, cidr in rows:
        out[rack].append(cidr)
    return dict(out)


async def _pools(conn: AsyncConnection) -> list[str]:
    return [str(r[0]) for r in await conn.execute(text("SELECT cidr FROM pools ORDER BY cidr"))]


@route(
    "GET",
    "/v1/fabric/routers/{name}/frr.conf",
    summary="The router's FRR config, with per-host filters from current allocations",
    auth="admin",
    raw=True,
    content_type="text/plain",
    errors=(404,),
    tag="fabric",
)
async def router_frr_conf(request: web.Request, who: Principal) -> web.Response:
    name = request.match_info["name"]
    async with ctx(request).engine.connect() as conn:
        plan = await require_plan(conn)
        if name not in plan.routers:
            raise not_found("router", repr(name))
        allocations = await allocations_by_host(conn)
        aggregates = aggregates_for(plan, await rack_slices(conn))
        pools = await _pools(conn)
    try:
        config = render_router_config(plan, name, allocations, pools=pools, aggregates=aggregates)
    except RenderError as exc:
        raise conflict(str(exc), kind="render") from None
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    return web.Response(text=config, content_type="text/plain", headers={"ETag": digest})


@route(
    "GET",
    "/v1/fabric/routes",
    summary="Prefixes per spine and leaf, with and without rack aggregation",
    auth="admin",
    errors=(404,),
    query=(Query("router"),),
    tag="fabric",
)
async def fabric_routes(request: web.Request, who: Principal) -> dict[str, Any]:
    async with ctx(request).engine.connect() as conn:
        plan = await require_plan(conn)
        allocations = await allocations_by_host(conn)
        aggregates = aggregates_for(plan, await rack_slices(conn))
    counts = route_counts(plan, allocations, aggregates)
    return {
        "routers": [dataclasses.asdict(c) for c in counts.values()],
        "aggregates": {leaf: list(a) for leaf, a in aggregates.items()},
        "borrowed": {
            "ipv4": sum(1 for v in allocations.values() for c in v if c.endswith("/32")),
            "ipv6": sum(1 for v in allocations.values() for c in v if c.endswith("/128")),
        },
    }


@route(
    "POST",
    "/v1/hosts/{name}/token",
    summary="Issue a new token for a host",
    auth="admin",
    status=201,
    errors=(404,),
    query=(Query("revoke_others"),),
    tag="fabric",
)
async def issue_host_token(request: web.Request, who: Principal) -> dict[str, Any]:
    """For a speaker's token file; earlier tokens of the host stay valid unless revoked."""
    name = request.match_info["name"]
    token = new_token("host")
    revoke = request.query.get("revoke_others", "") in ("1", "true")
    async with ctx(request).engine.begin() as conn:
        host_id = await conn.scalar(text("SELECT id::text FROM hosts WHERE name = :n"), {"n": name})
        if host_id is None:
            raise not_found("host", repr(name))
        if revoke:
            await conn.execute(text("DELETE FROM tokens WHERE host_id = :h"), {"h": host_id})
            await feed.record(
                conn,
                kind="host",
                action="tokens-revoked",
                object_id=host_id,
                summary=f"host {name}: earlier tokens revoked",
            )
        await conn.execute(
            text("INSERT INTO tokens (token_hash, kind, host_id) VALUES (:h, 'host', :i)"),
            {"h": hash_token(token), "i": host_id},
        )
    return {"name": name, "token": token}
