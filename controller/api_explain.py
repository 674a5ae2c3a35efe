"""`GET /v1/explain`: may SRC reach DST, and why, named in domain objects.

Gathers only what the question touches (the networks whose subnets hold SRC and DST,
the endpoints with those addresses, the rules into DST's network) and hands them to the
pure `fabric.explain`. When DST is an endpoint whose host reports firewall counters, the
answer carries that host's live numbers too.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from controller.auth import Principal
from controller.context import ctx
from controller.problems import bad_request, not_found
from controller.queries import ENDPOINT_SQL
from controller.registry import Query, check_id, int_query, route
from fabric.explain import ExplainError, explain
from fabric.state import Endpoint, Network, Rule


@route(
    "GET",
    "/v1/explain",
    summary="May SRC reach DST (proto, port), and why",
    query=(
        Query("src", description="address, endpoint id or endpoint name"),
        Query("dst", description="address, endpoint id or endpoint name"),
        Query("proto", description="tcp|udp|icmp|any"),
        Query("port", "integer"),
    ),
    errors=(400, 404),
    tag="policy",
)
async def get_explain(request: web.Request, who: Principal) -> dict[str, Any]:
    src_raw, dst_raw = request.query.get("src", ""), request.query.get("dst", "")
    if not src_raw or not dst_raw:
        raise bad_request("give src and dst: an address, an endpoint id or an endpoint name")
    proto = request.query.get("proto") or None
    port = int_query(request, "port", 0, 0, 65535) or None
    async with ctx(request).engine.connect() as conn:
        src = await _resolve(conn, who, src_raw, "src")
        dst = await _resolve(conn, who, dst_raw, "dst")
        networks = await _networks_holding(conn, [src, dst])
        _check_visible(who, networks, [src, dst])
        dst_net = next((n for n in networks if _holds(n, dst)), None)
        rules = await _rules_into(conn, dst_net.id if dst_net else None)
        endpoints = await _endpoints_at(conn, [src, dst])
        live = await _live(conn, dst)
    try:
        verdict = explain(
            src, dst, proto, port, networks=networks, rules=rules, endpoints=endpoints
        )
    except ExplainError as exc:
        raise bad_request(str(exc)) from None
    doc = verdict.to_json()
    if live:
        doc["destination_host"] = live
    return doc


async def _resolve(conn: AsyncConnection, who: Principal, raw: str, what: str) -> str:
    """An address as given, or the address of the endpoint named by id or name (its
    IPv4 when it has one, so `explain web1 web2` means the IPv4 path)."""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        pass
    scope, params = "", {"r": raw}
    if who.kind == "tenant":
        scope = " AND n.tenant_id = :t"
        params["t"] = str(who.tenant_id)
    by_id = " OR e.id::text = :r" if _is_uuid(raw) else ""
    rows = (
        await conn.execute(
            text(ENDPOINT_SQL + f" WHERE (e.name = :r{by_id}){scope} LIMIT 2"), params
        )
    ).all()
    if not rows:
        raise not_found(f"{what} endpoint", repr(raw))
    if len(rows) > 1:
        raise bad_request(f"{what} {raw!r} names several endpoints; use its id or address")
    address = rows[0].ipv4 or rows[0].ipv6
    if address is None:
        raise bad_request(f"{what} endpoint {raw!r} has no address")
    return str(address)


def _is_uuid(raw: str) -> bool:
    try:
        check_id(raw, "endpoint")
    except Exception:
        return False
    return True


async def _networks_holding(conn: AsyncConnection, addresses: list[str]) -> list[Network]:
    rows = await conn.execute(
        text(
            "SELECT n.id::text, n.tenant_id::text, n.name, array_agg(s.cidr::text) AS subnets "
            "FROM networks n JOIN subnets s ON s.network_id = n.id "
            "WHERE n.id IN (SELECT network_id FROM subnets WHERE cidr >>= ANY(CAST(:a AS inet[])))"
            " GROUP BY n.id"
        ),
        {"a": addresses},
    )
    return [Network(r.id, r.tenant_id, tuple(r.subnets), r.name) for r in rows]


def _holds(network: Network, address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(s) for s in network.subnets)


def _check_visible(who: Principal, networks: list[Network], addresses: list[str]) -> None:
    """A tenant may ask about traffic that touches one of its own networks."""
    if who.kind != "tenant":
        return
    if not any(n.tenant_id == who.tenant_id for n in networks):
        raise not_found("network holding", " or ".join(addresses))


async def _rules_into(conn: AsyncConnection, network_id: str | None) -> list[Rule]:
    if network_id is None:
        return []
    rows = await conn.execute(
        text(
            "SELECT id::text, network_id::text, from_network::text, from_cidr::text, protocol, "
            "ports FROM rules WHERE network_id = :n"
        ),
        {"n": network_id},
    )
    return [
        Rule(
            r.id,
            r.network_id,
            r.from_network,
            r.from_cidr,
            r.protocol,
            tuple(str(p) for p in r.ports),
        )
        for r in rows
    ]


async def _endpoints_at(conn: AsyncConnection, addresses: list[str]) -> list[Endpoint]:
    rows = await conn.execute(
        text(
            ENDPOINT_SQL + " WHERE e.id IN (SELECT endpoint_id FROM addresses "
            "WHERE address = ANY(CAST(:a AS inet[])))"
        ),
        {"a": addresses},
    )
    return [
        Endpoint(r.id, r.name, r.network_id, r.ipv4, r.ipv6, r.netns, r.interface) for r in rows
    ]


async def _live(conn: AsyncConnection, dst: str) -> dict[str, Any] | None:
    """The destination host's last report: applied revision and firewall counters."""
    row = (
        await conn.execute(
            text(
                "SELECT h.name, h.revision, h.status, h.status_at FROM addresses a "
                "JOIN endpoints e ON e.id = a.endpoint_id JOIN hosts h ON h.id = e.host_id "
                "WHERE a.address = CAST(:a AS inet)"
            ),
            {"a": dst},
        )
    ).first()
    if row is None or not row.status:
        return None
    status = row.status
    return {
        "host": row.name,
        "revision": row.revision,
        "applied_revision": status.get("applied_revision"),
        "in_sync": status.get("applied_revision") == row.revision,
        "reported_at": row.status_at,
        "firewall_counters": status.get("firewall_counters") or status.get("counters"),
    }
