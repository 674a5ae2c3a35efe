"""Compute one host's desired state (`fabric.state.HostState`) from the database.

Every query is keyed by the host (indexed: blocks.host_id, endpoints.host_id,
rules.network_id, subnets.network_id), so the cost grows with what the host holds, not
with the size of the fabric. Read in one REPEATABLE READ snapshot so the state is
consistent with the revision it carries.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from fabric.state import Block, Borrowed, Endpoint, HostInfo, HostState, Network, Peer, Rule


async def host_state(conn: AsyncConnection, host: Any) -> HostState:
    """`host` is a row with id, name, rack, asn, address, address6, revision, peers."""
    hid = {"h": host.id}
    blocks = await _blocks(conn, hid)
    borrowed = [
        Borrowed(r.address, r.network_id)
        for r in await conn.execute(
            text(
                "SELECT host(a.address) AS address, s.network_id::text FROM addresses a "
                "JOIN endpoints e ON e.id = a.endpoint_id JOIN subnets s ON s.id = a.subnet_id "
                "WHERE e.host_id = :h AND a.block_id IS NULL ORDER BY a.address"
            ),
            hid,
        )
    ]
    endpoints = [
        Endpoint(r.id, r.name, r.network_id, r.ipv4, r.ipv6, r.netns, r.interface)
        for r in await conn.execute(
            text(
                "SELECT e.id::text, e.name, e.network_id::text, e.netns, e.interface, "
                "max(host(a.address)) FILTER (WHERE a.family = 4) AS ipv4, "
                "max(host(a.address)) FILTER (WHERE a.family = 6) AS ipv6 "
                "FROM endpoints e LEFT JOIN addresses a ON a.endpoint_id = e.id "
                "WHERE e.host_id = :h GROUP BY e.id ORDER BY e.name, e.id"
            ),
            hid,
        )
    ]
    local_networks = sorted({e.network_id for e in endpoints})
    rules = await _rules(conn, local_networks)
    referenced = sorted(set(local_networks) | {r.from_network for r in rules if r.from_network})
    networks = await _networks(conn, referenced)
    return HostState(
        revision=int(host.revision),
        host=HostInfo(
            host.name,
            host.rack,
            int(host.asn),
            _plain(host.address),
            _plain(host.address6) if host.address6 is not None else None,
        ),
        peers=tuple(Peer(**p) for p in host.peers or ()),
        blocks=tuple(blocks),
        borrowed=tuple(borrowed),
        endpoints=tuple(endpoints),
        networks=tuple(networks),
        rules=tuple(rules),
    )


def _plain(value: Any) -> str:
    return str(value).split("/")[0]


async def _blocks(conn: AsyncConnection, hid: dict[str, str]) -> list[Block]:
    rows = await conn.execute(
        text(
            "SELECT b.cidr, s.network_id::text, "
            "coalesce(array_agg(host(a.address) ORDER BY a.address) "
            "  FILTER (WHERE a.address IS NOT NULL), '{}') AS holes "
            "FROM blocks b JOIN subnets s ON s.id = b.subnet_id "
            "LEFT JOIN addresses a ON a.address <<= b.cidr AND a.block_id IS NULL "
            "WHERE b.host_id = :h GROUP BY b.id, s.network_id ORDER BY b.cidr"
        ),
        hid,
    )
    return [Block(str(r.cidr), r.network_id, tuple(r.holes)) for r in rows]


async def _rules(conn: AsyncConnection, network_ids: list[str]) -> list[Rule]:
    if not network_ids:
        return []
    rows = await conn.execute(
        text(
            "SELECT id::text, network_id::text, from_network::text, from_cidr, protocol, ports "
            "FROM rules WHERE network_id = ANY(CAST(:ids AS uuid[])) ORDER BY network_id, id"
        ),
        {"ids": network_ids},
    )
    return [
        Rule(
            r.id,
            r.network_id,
            r.from_network,
            None if r.from_cidr is None else str(r.from_cidr),
            r.protocol,
            tuple(str(p) for p in r.ports),
        )
        for r in rows
    ]


async def _networks(conn: AsyncConnection, network_ids: list[str]) -> list[Network]:
    if not network_ids:
        return []
    rows = await conn.execute(
        text(
            "SELECT n.id::text, n.tenant_id::text, n.name, "
            "coalesce(array_agg(s.cidr::text ORDER BY s.family, s.cidr) "
            "  FILTER (WHERE s.id IS NOT NULL), '{}') AS subnets "
            "FROM networks n LEFT JOIN subnets s ON s.network_id = n.id "
            "WHERE n.id = ANY(CAST(:ids AS uuid[])) GROUP BY n.id ORDER BY n.id"
        ),
        {"ids": network_ids},
    )
    return [Network(r.id, r.tenant_id, tuple(r.subnets), r.name) for r in rows]
