"""Read-only views for the ops dashboard: one request per dashboard view.

Owns the shapes the dashboard draws: the fabric picture (plan, prefix counts, hosts with
their blocks, borrowed addresses, lag and BGP sessions), networks with per-subnet usage
and blocks per host, and the network-by-network policy matrix with drop counters.
It must never write: every route here is a GET that reads what the other modules wrote.
A tenant token sees only its own tenant's networks (invariant 7); host tokens see none.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from controller.api_admin import HOST_COLUMNS, host_doc
from controller.api_fabric import allocations_by_host, current_plan, plan_document, rack_slices
from controller.auth import Principal
from controller.context import ctx
from controller.desired import host_state
from controller.registry import route
from fabric.policy import compile_host_policy, counters_by_origin
from fabric.routes import aggregates_for, route_counts

NETWORKS_SQL = (
    "SELECT n.id::text, n.name, n.tenant_id::text, n.auto_grow, t.name AS tenant, "
    "(SELECT count(*) FROM endpoints e WHERE e.network_id = n.id) AS endpoints "
    "FROM networks n JOIN tenants t ON t.id = n.tenant_id"
)


def _network_scope(who: Principal) -> tuple[str, dict[str, Any]]:
    """SQL condition on `n` (networks) for what the caller may see."""
    if who.is_admin:
        return "true", {}
    if who.kind == "tenant":
        return "n.tenant_id = :scope", {"scope": who.tenant_id}
    return "false", {}


async def _visible_networks(conn: AsyncConnection, who: Principal) -> list[Any]:
    where, params = _network_scope(who)
    sql = f"{NETWORKS_SQL} WHERE {where} ORDER BY t.name, n.name"
    return list((await conn.execute(text(sql), params)).all())


# ------------------------------------------------------------------------- fabric


@route(
    "GET",
    "/v1/views/fabric",
    summary="Dashboard: the applied fabric, prefixes per router, hosts with sessions and lag",
    auth="admin",
    tag="views",
)
async def fabric_view(request: web.Request, who: Principal) -> dict[str, Any]:
    """`fabric` and `routes` are null when no topology has been applied."""
    async with ctx(request).engine.connect() as conn:
        plan = await current_plan(conn)
        hosts = await _hosts_with_usage(conn)
        routes = None
        if plan is not None:
            allocations = await allocations_by_host(conn)
            aggregates = aggregates_for(plan, await rack_slices(conn))
            counts = route_counts(plan, allocations, aggregates)
            routes = {name: dataclasses.asdict(count) for name, count in counts.items()}
    return {
        "fabric": None if plan is None else plan_document(plan),
        "routes": routes,
        "hosts": hosts,
    }


async def _hosts_with_usage(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"SELECT {HOST_COLUMNS}, "
            "(SELECT count(*) FROM endpoints e WHERE e.host_id = h.id) AS endpoints, "
            "(SELECT count(*) FROM blocks b WHERE b.host_id = h.id) AS blocks, "
            "(SELECT count(*) FROM addresses a JOIN endpoints e ON e.id = a.endpoint_id "
            " WHERE e.host_id = h.id AND a.block_id IS NULL AND a.family = 4) AS borrowed4, "
            "(SELECT count(*) FROM addresses a JOIN endpoints e ON e.id = a.endpoint_id "
            " WHERE e.host_id = h.id AND a.block_id IS NULL AND a.family = 6) AS borrowed6 "
            "FROM hosts h JOIN racks r ON r.id = h.rack_id ORDER BY h.name"
        )
    )
    return [_host_view(r) for r in rows]


def _host_view(row: Any) -> dict[str, Any]:
    status = dict(row.status or {})
    status.pop("firewall_counters", None)  # large, and read by the policy view instead
    applied = status.get("applied_revision")
    doc = host_doc(row)
    doc.update(
        status=status,
        endpoints=row.endpoints,
        blocks=row.blocks,
        borrowed={"ipv4": row.borrowed4, "ipv6": row.borrowed6},
        reported=row.status_at is not None,
        applied_revision=applied,
        lagging=row.status_at is not None
        and (applied if isinstance(applied, int) else -1) < row.revision,
        sessions=(status.get("bgp") or {}).get("sessions") or [],
    )
    return doc


# ----------------------------------------------------------------------- networks


@route(
    "GET",
    "/v1/views/networks",
    summary="Dashboard: networks with per-subnet usage and blocks per host (a tenant sees its own)",
    tag="views",
)
async def networks_view(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    async with ctx(request).engine.connect() as conn:
        networks = await _visible_networks(conn, who)
        ids = [n.id for n in networks]
        subnets = await _subnets_with_usage(conn, ids)
    return [
        {
            "id": n.id,
            "name": n.name,
            "tenant_id": n.tenant_id,
            "tenant": n.tenant,
            "auto_grow": n.auto_grow,
            "endpoints": n.endpoints,
            "subnets": subnets.get(n.id, []),
        }
        for n in networks
    ]


async def _subnets_with_usage(
    conn: AsyncConnection, network_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    ids = {"ids": network_ids}
    per_host: dict[str, dict[str, int]] = defaultdict(dict)
    for subnet_id, host, blocks in await conn.execute(
        text(
            "SELECT b.subnet_id::text, h.name, count(*) FROM blocks b "
            "JOIN hosts h ON h.id = b.host_id JOIN subnets s ON s.id = b.subnet_id "
            "WHERE s.network_id = ANY(CAST(:ids AS uuid[])) GROUP BY 1, 2 ORDER BY 2"
        ),
        ids,
    ):
        per_host[subnet_id][host] = blocks
    rows = await conn.execute(
        text(
            "SELECT s.id::text, s.network_id::text, s.cidr, s.family, s.auto, "
            "s.block_prefix_length, "
            "(SELECT count(*) FROM addresses a WHERE a.subnet_id = s.id) AS used, "
            "(SELECT count(*) FROM addresses a WHERE a.subnet_id = s.id AND a.block_id IS NULL)"
            " AS borrowed FROM subnets s WHERE s.network_id = ANY(CAST(:ids AS uuid[])) "
            "ORDER BY s.family, s.cidr"
        ),
        ids,
    )
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        hosts = per_host.get(r.id, {})
        out[r.network_id].append(
            {
                "id": r.id,
                "cidr": str(r.cidr),
                "family": r.family,
                "auto": r.auto,
                "block_prefix_length": r.block_prefix_length,
                "size": ipaddress.ip_network(str(r.cidr)).num_addresses,
                "used": r.used,
                "borrowed": r.borrowed,
                "blocks": sum(hosts.values()),
                "blocks_per_host": hosts,
            }
        )
    return out


# ------------------------------------------------------------------------- policy


@route(
    "GET",
    "/v1/views/policy",
    summary="Dashboard: network-by-network policy matrix and drops per network "
    "(a tenant sees its own)",
    tag="views",
)
async def policy_view(request: web.Request, who: Principal) -> dict[str, Any]:
    async with ctx(request).engine.connect() as conn:
        networks = await _visible_networks(conn, who)
        ids = [n.id for n in networks]
        rules = (
            await conn.execute(
                text(
                    "SELECT id::text, network_id::text, from_network::text, from_cidr, "
                    "protocol, ports FROM rules WHERE network_id = ANY(CAST(:ids AS uuid[])) "
                    "ORDER BY created_at, id"
                ),
                {"ids": ids},
            )
        ).all()
        reported, drops = await _drops_by_network(conn, set(ids))
    visible = set(ids)
    return {
        "networks": [
            {"id": n.id, "name": n.name, "tenant": n.tenant, "tenant_id": n.tenant_id}
            for n in networks
        ],
        "cells": policy_cells(ids, rules),
        "cidr_rules": [_rule_doc(r) for r in rules if r.from_cidr is not None],
        # rules from networks the caller may not see: counted, never named
        "rules_from_elsewhere": sum(
            1 for r in rules if r.from_network is not None and r.from_network not in visible
        ),
        "drops": {"reported_hosts": reported, "networks": drops},
    }


def _rule_doc(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "network_id": row.network_id,
        "from_network": row.from_network,
        "from_cidr": None if row.from_cidr is None else str(row.from_cidr),
        "protocol": row.protocol,
        "ports": row.ports or [],
    }


def policy_cells(network_ids: list[str], rules: Sequence[Any]) -> list[dict[str, Any]]:
    """One cell per (source, destination): `membership` on the diagonal, `rule` when a
    rule of the destination allows the source network (any protocol or port), else
    `denied`."""
    allowing: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rule in rules:
        if rule.from_network is not None:
            allowing[(rule.from_network, rule.network_id)].append(_rule_doc(rule))
    cells = []
    for dst in network_ids:
        for src in network_ids:
            found = allowing.get((src, dst), [])
            verdict = "membership" if src == dst else ("rule" if found else "denied")
            cells.append({"src": src, "dst": dst, "verdict": verdict, "rules": found})
    return cells


DROP_ORIGINS = {"default-drop": "dropped", "spoofed-source": "spoofed"}


async def _drops_by_network(
    conn: AsyncConnection, visible: set[str]
) -> tuple[int, dict[str, dict[str, int]]]:
    """Packets dropped into (and spoofed from) each visible network, from the counters
    hosts report. Counters are keyed by rule hash; the host's current rule set maps each
    hash to its intent, so counters of rules changed since the report are not counted."""
    rows = (
        await conn.execute(
            text(
                f"SELECT {HOST_COLUMNS} FROM hosts h JOIN racks r ON r.id = h.rack_id "
                "WHERE jsonb_typeof(h.status->'firewall_counters') = 'object'"
            )
        )
    ).all()
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        state = await host_state(conn, row)
        network_of = {e.id: e.network_id for e in state.endpoints}
        counters = {str(k): int(v) for k, v in row.status["firewall_counters"].items()}
        for origin, packets in counters_by_origin(counters, compile_host_policy(state)).items():
            kind, _, endpoint_id = origin.partition(":")
            network = network_of.get(endpoint_id)
            if kind in DROP_ORIGINS and network in visible:
                entry = totals.setdefault(str(network), {"dropped": 0, "spoofed": 0})
                entry[DROP_ORIGINS[kind]] += packets
    return len(rows), totals
