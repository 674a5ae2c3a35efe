"""Endpoint creation, coalesced: concurrent `POST /v1/endpoints` for the same host and
network share one transaction (one lock, one read of the host's blocks, one insert of
all endpoints and addresses, one NOTIFY). A request alone is a batch of one.

Each request keeps its own answer: a name taken, a network another tenant owns or an
exhausted network fails that request only. If the batch transaction fails for any other
reason, its requests are replayed one by one, so one bad request cannot fail the others.
Races with other controller processes (a borrowed address taken meanwhile) are retried.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller import feed, ipam
from controller.auth import Principal
from controller.metrics import Metrics
from controller.models import EndpointIn
from controller.problems import Problem, conflict, not_found
from controller.queries import ENDPOINT_SQL, HOSTS_REFERENCING_NETWORK, endpoint_doc

MAX_BATCH = 64
ATTEMPTS = 8
Outcome = dict[str, Any] | Problem


@dataclass
class Pending:
    who: Principal
    body: EndpointIn
    future: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EndpointAllocator:
    """One per controller process; `create` is what the handler awaits."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self._queues: dict[tuple[str, str], list[Pending]] = defaultdict(list)
        self._draining: set[tuple[str, str]] = set()

    async def create(self, who: Principal, body: EndpointIn) -> dict[str, Any]:
        key = (body.host, body.network_id)
        pending = Pending(who, body)
        self._queues[key].append(pending)
        if key not in self._draining:
            self._draining.add(key)
            asyncio.create_task(self._drain(key))  # noqa: RUF006  (awaited via futures)
        outcome = await pending.future
        if isinstance(outcome, Problem):
            raise outcome
        return outcome

    async def _drain(self, key: tuple[str, str]) -> None:
        queue = self._queues[key]
        try:
            while queue:
                batch = queue[:MAX_BATCH]
                del queue[:MAX_BATCH]
                await self._settle(batch)
        finally:
            self._draining.discard(key)
            if not queue:
                self._queues.pop(key, None)

    async def _settle(self, batch: list[Pending]) -> None:
        try:
            outcomes = await self._with_retries(batch)
        except Exception as exc:
            if len(batch) > 1:
                for pending in batch:
                    await self._settle([pending])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if not pending.future.done():
                pending.future.set_result(outcome)
        self.metrics.count(
            "terrace_allocations_total", sum(1 for o in outcomes if not isinstance(o, Problem))
        )
        self.metrics.count("terrace_allocation_batches_total")

    async def _with_retries(self, batch: list[Pending]) -> list[Outcome]:
        for attempt in range(ATTEMPTS):
            try:
                async with self.engine.begin() as conn:
                    return await self._transaction(conn, batch)
            except DBAPIError as exc:
                if not _is_race(exc) or attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _transaction(self, conn: AsyncConnection, batch: list[Pending]) -> list[Outcome]:
        body = batch[0].body
        outcomes: list[Outcome | None] = [None] * len(batch)
        network = await _network(conn, body.network_id)
        host = await _host(conn, body.host)
        _validate(batch, outcomes, network, host)
        await _refuse_taken_names(conn, batch, outcomes, host)
        live = [i for i, o in enumerate(outcomes) if o is None]
        if not live:
            return [o for o in outcomes if o is not None]
        allocations, exhausted = await _allocate(conn, network, host, len(live))
        granted = min(len(a) for a in allocations.values())
        for i in live[granted:]:
            outcomes[i] = conflict(exhausted or "the network is exhausted", kind="exhausted")
        created = live[:granted]
        if created:
            docs = await self._insert(
                conn,
                [batch[i].body for i in created],
                network=network,
                host=host,
                allocations=allocations,
            )
            for i, doc in zip(created, docs, strict=True):
                outcomes[i] = doc
        return [o for o in outcomes if o is not None]

    async def _insert(
        self,
        conn: AsyncConnection,
        bodies: list[EndpointIn],
        *,
        network: Any,
        host: Any,
        allocations: dict[int, list[ipam.Allocation]],
    ) -> list[dict[str, Any]]:
        ids = [
            r[0]
            for r in await conn.execute(
                text(
                    "INSERT INTO endpoints (network_id, host_id, name, netns, interface) "
                    "SELECT CAST(:n AS uuid), CAST(:h AS uuid), name, netns, iface FROM unnest("
                    "CAST(:names AS text[]), CAST(:netns AS text[]), CAST(:ifaces AS text[])) "
                    "WITH ORDINALITY AS e(name, netns, iface, i) ORDER BY i RETURNING id::text"
                ),
                {
                    "n": network.id,
                    "h": host.id,
                    "names": [b.name for b in bodies],
                    "netns": [b.netns for b in bodies],
                    "ifaces": [b.interface for b in bodies],
                },
            )
        ]
        await _insert_addresses(conn, ids, allocations)
        notes = _notes(allocations, len(ids))
        hosts = await _hosts_to_wake(conn, host.id, network.id, notes)
        await feed.record_many(
            conn,
            [
                feed.Event(
                    "endpoint",
                    "created",
                    endpoint_id,
                    f"endpoint {b.name} on {host.name} in {network.name}"
                    + (f" ({', '.join(n)})" if n else ""),
                    network.tenant_id,
                )
                for endpoint_id, b, n in zip(ids, bodies, notes, strict=True)
            ],
            hosts=hosts,
        )
        rows = await conn.execute(
            text(ENDPOINT_SQL + " WHERE e.id = ANY(CAST(:ids AS uuid[]))"), {"ids": ids}
        )
        by_id = {r.id: r for r in rows}
        return [endpoint_doc(by_id[i]) for i in ids]


async def _network(conn: AsyncConnection, network_id: str) -> Any:
    return (
        await conn.execute(
            text(
                "SELECT n.id::text, n.name, n.tenant_id::text, n.auto_grow FROM networks n "
                "WHERE n.id = CAST(:n AS uuid)"
            ),
            {"n": network_id},
        )
    ).first()


async def _host(conn: AsyncConnection, name: str) -> Any:
    return (
        await conn.execute(
            text(
                "SELECT h.id::text, h.name, r.name AS rack FROM hosts h JOIN racks r "
                "ON r.id = h.rack_id WHERE h.name = :n"
            ),
            {"n": name},
        )
    ).first()


def _validate(
    batch: list[Pending], outcomes: list[Outcome | None], network: Any, host: Any
) -> None:
    for i, pending in enumerate(batch):
        who = pending.who
        if network is None or (who.kind == "tenant" and network.tenant_id != who.tenant_id):
            outcomes[i] = not_found("network", pending.body.network_id)
        elif host is None:
            outcomes[i] = not_found("host", repr(pending.body.host))


async def _refuse_taken_names(
    conn: AsyncConnection, batch: list[Pending], outcomes: list[Outcome | None], host: Any
) -> None:
    if host is None:
        return
    names = [p.body.name for p in batch]
    taken = {
        r[0]
        for r in await conn.execute(
            text(
                "SELECT name FROM endpoints WHERE host_id = :h AND name = ANY(CAST(:n AS text[]))"
            ),
            {"h": host.id, "n": names},
        )
    }
    for i, pending in enumerate(batch):
        if outcomes[i] is not None:
            continue
        if pending.body.name in taken:
            outcomes[i] = conflict(
                f"host {host.name} already has an endpoint named {pending.body.name!r}",
                kind="duplicate",
            )
        taken.add(pending.body.name)


async def _allocate(
    conn: AsyncConnection, network: Any, host: Any, count: int
) -> tuple[dict[int, list[ipam.Allocation]], str | None]:
    """Family → up to `count` allocations, and why there are fewer when the network is
    exhausted; a 409 when the network has no subnet at all."""
    families = [
        r[0]
        for r in await conn.execute(
            text("SELECT DISTINCT family FROM subnets WHERE network_id = :n ORDER BY family"),
            {"n": network.id},
        )
    ]
    if not families:
        raise conflict(
            f"network {network.name} has no subnet; add one with "
            f"POST /v1/networks/{network.id}/subnets",
            kind="exhausted",
        )
    out: dict[int, list[ipam.Allocation]] = {}
    exhausted: str | None = None
    for family in families:
        try:
            out[family] = await ipam.allocate_many(
                conn,
                network_id=network.id,
                host_id=host.id,
                rack=host.rack,
                family=family,
                auto_grow=network.auto_grow,
                count=count,
            )
        except ipam.Exhausted as exc:
            out[family] = []
            exhausted = str(exc)
        if len(out[family]) < count and exhausted is None:
            exhausted = (
                f"every IPv{family} address of network {network.name} is in use; "
                "add a subnet or enable auto_grow"
            )
    return out, exhausted


async def _insert_addresses(
    conn: AsyncConnection, ids: list[str], allocations: dict[int, list[ipam.Allocation]]
) -> None:
    rows = [
        (str(a.address), family, endpoint_id, a.subnet_id, a.block_id)
        for family, allocs in allocations.items()
        for endpoint_id, a in zip(ids, allocs, strict=False)
    ]
    await conn.execute(
        text(
            "INSERT INTO addresses (address, family, endpoint_id, subnet_id, block_id) "
            "SELECT CAST(a AS inet), f, CAST(e AS uuid), CAST(s AS uuid), CAST(b AS uuid) "
            "FROM unnest(CAST(:a AS text[]), CAST(:f AS int[]), CAST(:e AS text[]), "
            "CAST(:s AS text[]), CAST(:b AS text[])) AS x(a, f, e, s, b)"
        ),
        {
            "a": [r[0] for r in rows],
            "f": [r[1] for r in rows],
            "e": [r[2] for r in rows],
            "s": [r[3] for r in rows],
            "b": [r[4] for r in rows],
        },
    )


def _notes(allocations: dict[int, list[ipam.Allocation]], count: int) -> list[list[str]]:
    notes: list[list[str]] = [[] for _ in range(count)]
    for allocs in allocations.values():
        for i, alloc in enumerate(allocs[:count]):
            if alloc.new_subnet:
                notes[i].append(f"auto-grew subnet {alloc.new_subnet}")
            if alloc.new_block:
                notes[i].append(f"new block {alloc.new_block}")
            if alloc.block_id is None:
                notes[i].append(f"borrowed {alloc.address}")
    return notes


async def _hosts_to_wake(
    conn: AsyncConnection, host_id: str, network_id: str, notes: list[list[str]]
) -> list[str]:
    """The endpoints' host; every host referencing the network when auto-grow added a
    subnet; the owners of blocks an address was borrowed from (their holes change)."""
    flat = [n for ns in notes for n in ns]
    if any(n.startswith("auto-grew") for n in flat):
        hosts = await feed.bump_hosts(conn, HOSTS_REFERENCING_NETWORK, {"n": network_id})
    else:
        hosts = await feed.bump_hosts(conn, "h.id = :h", {"h": host_id})
    if any(n.startswith("borrowed") for n in flat):
        hosts += await feed.bump_hosts(
            conn,
            (
                "h.id IN (SELECT b.host_id FROM blocks b JOIN addresses a ON a.address <<= b.cidr"
                " JOIN endpoints e ON e.id = a.endpoint_id WHERE e.host_id = :h AND"
                " a.block_id IS NULL AND b.host_id <> :h)"
            ),
            {"h": host_id},
        )
    return hosts


def _is_race(exc: DBAPIError) -> bool:
    cause = getattr(exc.orig, "__cause__", None) or exc.orig
    if isinstance(cause, asyncpg.UniqueViolationError):
        return getattr(cause, "constraint_name", "") == "addresses_pkey"
    return isinstance(
        cause,
        asyncpg.ExclusionViolationError
        | asyncpg.DeadlockDetectedError
        | asyncpg.SerializationError,
    )
