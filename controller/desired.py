"""Compute hosts' desired state (`fabric.state.HostState`) from the database.

Set-based: one query per kind of object for any number of hosts (keyed by indexed
columns: blocks.host_id, endpoints.host_id, rules.network_id, subnets.network_id), so
waking 1,000 long-polls with one change costs five queries, not five thousand, and the
cost of each grows with what the hosts hold, not with the size of the fabric. The
caller reads in one REPEATABLE READ snapshot so every state is consistent with the
revision it carries.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller.problems import not_found
from fabric.state import Block, Borrowed, Endpoint, HostInfo, HostState, Network, Peer, Rule


async def host_state(conn: AsyncConnection, host: Any) -> HostState:
    """`host` is a row with id, name, rack, asn, address, address6, revision, peers."""
    return (await host_states(conn, [host]))[host.id]


async def host_states(conn: AsyncConnection, hosts: Sequence[Any]) -> dict[str, HostState]:
    """Host id -> its state, for rows like those `host_state` takes."""
    ids = {"h": [h.id for h in hosts]}
    if not hosts:
        return {}
    blocks = await _blocks(conn, ids)
    borrowed = await _borrowed(conn, ids)
    endpoints = await _endpoints(conn, ids)
    local = {h: sorted({e.network_id for e in eps}) for h, eps in endpoints.items()}
    rules = await _rules(conn, sorted({n for nets in local.values() for n in nets}))
    host_rules = {h: [r for n in nets for r in rules.get(n, ())] for h, nets in local.items()}
    referenced = {
        h: sorted(set(local[h]) | {r.from_network for r in host_rules[h] if r.from_network})
        for h in local
    }
    networks = await _networks(conn, sorted({n for nets in referenced.values() for n in nets}))
    return {
        h.id: HostState(
            revision=int(h.revision),
            host=HostInfo(
                h.name,
                h.rack,
                int(h.asn),
                _plain(h.address),
                _plain(h.address6) if h.address6 is not None else None,
            ),
            peers=tuple(Peer(**p) for p in h.peers or ()),
            blocks=tuple(blocks.get(h.id, ())),
            borrowed=tuple(borrowed.get(h.id, ())),
            endpoints=tuple(endpoints.get(h.id, ())),
            networks=tuple(networks[n] for n in referenced.get(h.id, ()) if n in networks),
            rules=tuple(host_rules.get(h.id, ())),
        )
        for h in hosts
    }


def _plain(value: Any) -> str:
    return str(value).split("/")[0]


async def _blocks(conn: AsyncConnection, ids: dict[str, list[str]]) -> dict[str, list[Block]]:
    rows = await conn.execute(
        text(
            "SELECT b.host_id::text AS host_id, b.cidr, s.network_id::text, "
            "coalesce(array_agg(host(a.address) ORDER BY a.address) "
            "  FILTER (WHERE a.address IS NOT NULL), '{}') AS holes "
            "FROM blocks b JOIN subnets s ON s.id = b.subnet_id "
            "LEFT JOIN addresses a ON a.address <<= b.cidr AND a.block_id IS NULL "
            "WHERE b.host_id = ANY(CAST(:h AS uuid[])) "
            "GROUP BY b.id, s.network_id ORDER BY b.cidr"
        ),
        ids,
    )
    out: dict[str, list[Block]] = defaultdict(list)
    for r in rows:
        out[r.host_id].append(Block(str(r.cidr), r.network_id, tuple(r.holes)))
    return out


async def _borrowed(conn: AsyncConnection, ids: dict[str, list[str]]) -> dict[str, list[Borrowed]]:
    rows = await conn.execute(
        text(
            "SELECT e.host_id::text AS host_id, host(a.address) AS address, "
            "s.network_id::text FROM addresses a "
            "JOIN endpoints e ON e.id = a.endpoint_id JOIN subnets s ON s.id = a.subnet_id "
            "WHERE e.host_id = ANY(CAST(:h AS uuid[])) AND a.block_id IS NULL "
            "ORDER BY a.address"
        ),
        ids,
    )
    out: dict[str, list[Borrowed]] = defaultdict(list)
    for r in rows:
        out[r.host_id].append(Borrowed(r.address, r.network_id))
    return out


async def _endpoints(conn: AsyncConnection, ids: dict[str, list[str]]) -> dict[str, list[Endpoint]]:
    rows = await conn.execute(
        text(
            "SELECT e.host_id::text AS host_id, e.id::text, e.name, e.network_id::text, "
            "e.netns, e.interface, "
            "max(host(a.address)) FILTER (WHERE a.family = 4) AS ipv4, "
            "max(host(a.address)) FILTER (WHERE a.family = 6) AS ipv6 "
            "FROM endpoints e LEFT JOIN addresses a ON a.endpoint_id = e.id "
            "WHERE e.host_id = ANY(CAST(:h AS uuid[])) GROUP BY e.id ORDER BY e.name, e.id"
        ),
        ids,
    )
    out: dict[str, list[Endpoint]] = defaultdict(list)
    for r in rows:
        out[r.host_id].append(
            Endpoint(r.id, r.name, r.network_id, r.ipv4, r.ipv6, r.netns, r.interface)
        )
    return out


async def _rules(conn: AsyncConnection, network_ids: list[str]) -> dict[str, list[Rule]]:
    if not network_ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT id::text, network_id::text, from_network::text, from_cidr, protocol, ports "
            "FROM rules WHERE network_id = ANY(CAST(:ids AS uuid[])) ORDER BY network_id, id"
        ),
        {"ids": network_ids},
    )
    out: dict[str, list[Rule]] = defaultdict(list)
    for r in rows:
        out[r.network_id].append(
            Rule(
                r.id,
                r.network_id,
                r.from_network,
                None if r.from_cidr is None else str(r.from_cidr),
                r.protocol,
                tuple(str(p) for p in r.ports),
            )
        )
    return out


async def _networks(conn: AsyncConnection, network_ids: list[str]) -> dict[str, Network]:
    if not network_ids:
        return {}
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
    return {r.id: Network(r.id, r.tenant_id, tuple(r.subnets), r.name) for r in rows}


_HOST_ROWS = (
    "SELECT h.id::text, h.name, r.name AS rack, h.asn, h.address, h.address6, h.revision, "
    "h.peers FROM hosts h JOIN racks r ON r.id = h.rack_id WHERE h.name = ANY(CAST(:n AS text[]))"
)


@dataclass(frozen=True, slots=True)
class _Read:
    name: str
    after: int
    force: bool
    answer: asyncio.Future[HostState | None]

    def due(self, revision: int) -> bool:
        return self.force or revision > self.after


class DesiredStates:
    """Reads of desired state that arrive together share one snapshot and one set of
    queries: one change wakes every long-poll it concerns at the same moment, and they
    are answered as one batch (group commit, for reads). A read asked while a batch is
    running joins the next one."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: list[_Read] = []
        self._drainer: asyncio.Task[None] | None = None

    async def read(self, name: str, after: int, *, force: bool = False) -> HostState | None:
        """The host's state when its revision is newer than `after` (or `force`), else
        None. Raises a 404 Problem for an unknown host, database errors as they come."""
        read = _Read(name, after, force, asyncio.get_running_loop().create_future())
        self._pending.append(read)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="desired-state-batches")
        return await read.answer

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # the other polls woken by the same change join in
            batch, self._pending = self._pending, []
            await self._answer(batch)

    async def _answer(self, batch: list[_Read]) -> None:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
                names = sorted({r.name for r in batch})
                rows = {row.name: row for row in await conn.execute(text(_HOST_ROWS), {"n": names})}
                due = {
                    rows[r.name].id: rows[r.name]
                    for r in batch
                    if r.name in rows and r.due(rows[r.name].revision)
                }
                states = await host_states(conn, list(due.values()))
        except Exception as exc:
            for r in batch:
                if not r.answer.done():
                    r.answer.set_exception(exc)
            return
        for r in batch:
            row = rows.get(r.name)
            if r.answer.done():  # the client went away
                continue
            if row is None:
                r.answer.set_exception(not_found("host", repr(r.name)))
            else:
                r.answer.set_result(states[row.id] if r.due(row.revision) else None)
