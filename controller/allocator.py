"""Endpoint creation, coalesced: concurrent `POST /v1/endpoints` for the same host and
network share one transaction (one lock, one read of the host's blocks, one insert of
all endpoints and addresses, one NOTIFY). A request alone is a batch of one.

Each request keeps its own answer: a name taken, a network another tenant owns or an
exhausted network fails that request only. If the batch transaction fails for any other
reason, its requests are replayed one by one, so one bad request cannot fail the others.
Races with other controller processes (a borrowed address taken meanwhile) are retried.

The common case is four statements: lock and context (through SQLAlchemy, which begins
the transaction); then, on the asyncpg connection under it, the host's free addresses,
one insert of endpoints, addresses and events, and the host's revision with the NOTIFY.
Carving a block, auto-grow and borrowing stay with `ipam.allocate_many`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controller import feed, ipam
from controller.auth import Principal
from controller.db import driver_connection
from controller.metrics import Metrics
from controller.models import EndpointIn
from controller.problems import Problem, conflict, database_cause, not_found
from controller.queries import HOSTS_REFERENCING_NETWORK, endpoint_doc

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


class Network(NamedTuple):
    id: str
    name: str
    tenant_id: str
    auto_grow: bool


class Host(NamedTuple):
    id: str
    name: str
    rack: str | None


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
                async with self.engine.connect() as conn:
                    try:
                        async with conn.begin():
                            return await self._transaction(conn, batch)
                    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                        # lost under the asyncpg calls, which SQLAlchemy does not see
                        await conn.invalidate()
                        raise
            except (DBAPIError, asyncpg.PostgresError) as exc:
                if not _is_race(exc) or attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _transaction(self, conn: AsyncConnection, batch: list[Pending]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        network, host, families, taken = await _context(conn, batch)
        _validate(batch, outcomes, network, host)
        _refuse_taken_names(batch, outcomes, host, taken)
        live = [i for i, o in enumerate(outcomes) if o is None]
        if not live:
            return [o for o in outcomes if o is not None]
        _require_subnets(network, families)
        raw = await driver_connection(conn)
        allocations = await ipam.from_host_blocks(raw, network.id, host.id, families, len(live))
        exhausted: str | None = None
        if any(len(a) < len(live) for a in allocations.values()):
            allocations, exhausted = await _allocate(conn, network, host, families, len(live))
        granted = min(len(a) for a in allocations.values())
        for i in live[granted:]:
            outcomes[i] = conflict(exhausted or "the network is exhausted", kind="exhausted")
        created = live[:granted]
        if created:
            docs = await _insert(
                conn,
                raw,
                [batch[i].body for i in created],
                network=network,
                host=host,
                allocations=allocations,
            )
            for i, doc in zip(created, docs, strict=True):
                outcomes[i] = doc
        return [o for o in outcomes if o is not None]


# Lock 1 (see `ipam`) and all the batch needs to know, in the statement that begins the
# transaction. A missing host or network makes the lock's argument NULL: no lock taken.
CONTEXT_SQL = text(
    "SELECT n.id::text AS network_id, n.name AS network, n.tenant_id::text AS tenant_id, "
    "n.auto_grow, h.id::text AS host_id, h.name AS host, r.name AS rack, "
    "ARRAY(SELECT DISTINCT s.family FROM subnets s WHERE s.network_id = n.id "
    "ORDER BY s.family) AS families, "
    "ARRAY(SELECT e.name FROM endpoints e WHERE e.host_id = h.id "
    "AND e.name = ANY(CAST(:names AS text[]))) AS taken, "
    + ipam.host_lock_sql("h.id::text", "n.id::text")
    + " AS locked FROM (SELECT CAST(:n AS uuid) AS network_id, CAST(:h AS text) AS host) q "
    "LEFT JOIN networks n ON n.id = q.network_id "
    "LEFT JOIN (hosts h JOIN racks r ON r.id = h.rack_id) ON h.name = q.host"
)


async def _context(
    conn: AsyncConnection, batch: list[Pending]
) -> tuple[Any, Any, list[int], set[str]]:
    """(network, host, the families of its subnets, the batch's names the host already
    has); network or host is None when it does not exist."""
    body = batch[0].body
    row = (
        await conn.execute(
            CONTEXT_SQL,
            {"n": body.network_id, "h": body.host, "names": [p.body.name for p in batch]},
        )
    ).one()
    network = None
    if row.network_id is not None:
        network = Network(row.network_id, row.network, row.tenant_id, row.auto_grow)
    host = Host(row.host_id, row.host, row.rack) if row.host_id is not None else None
    return network, host, list(row.families or ()), set(row.taken or ())


def _validate(
    batch: list[Pending], outcomes: list[Outcome | None], network: Any, host: Any
) -> None:
    for i, pending in enumerate(batch):
        who = pending.who
        if network is None or (who.kind == "tenant" and network.tenant_id != who.tenant_id):
            outcomes[i] = not_found("network", pending.body.network_id)
        elif host is None:
            outcomes[i] = not_found("host", repr(pending.body.host))


def _refuse_taken_names(
    batch: list[Pending], outcomes: list[Outcome | None], host: Any, taken: set[str]
) -> None:
    for i, pending in enumerate(batch):
        if outcomes[i] is not None:
            continue
        if pending.body.name in taken:
            outcomes[i] = conflict(
                f"host {host.name} already has an endpoint named {pending.body.name!r}",
                kind="duplicate",
            )
        taken.add(pending.body.name)


def _require_subnets(network: Any, families: list[int]) -> None:
    if not families:
        raise conflict(
            f"network {network.name} has no subnet; add one with "
            f"POST /v1/networks/{network.id}/subnets",
            kind="exhausted",
        )


async def _allocate(
    conn: AsyncConnection, network: Any, host: Any, families: list[int], count: int
) -> tuple[dict[int, list[ipam.Allocation]], str | None]:
    """Family → up to `count` allocations, new blocks and subnets included, and why there
    are fewer when the network is exhausted."""
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


# Endpoints, their addresses and their events in one statement; the ids are made here,
# so the three inserts need nothing from each other.
INSERT_SQL = f"""
WITH ep AS (
    INSERT INTO endpoints (id, network_id, host_id, name, netns, interface)
    SELECT id, $1::uuid, $2::uuid, name, netns, iface
    FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[]) AS e(id, name, netns, iface)
    RETURNING id, created_at
), ad AS (
    INSERT INTO addresses (address, family, endpoint_id, subnet_id, block_id)
    SELECT a, f, e, s, b
    FROM unnest($7::inet[], $8::int[], $9::uuid[], $10::uuid[], $11::uuid[]) AS x(a, f, e, s, b)
    RETURNING endpoint_id, family, host(address) AS host
), ev AS (
    {feed.events_insert_sql(12)}
)
SELECT ep.id::text, ep.created_at,
    (SELECT ad.host FROM ad WHERE ad.endpoint_id = ep.id AND ad.family = 4) AS ipv4,
    (SELECT ad.host FROM ad WHERE ad.endpoint_id = ep.id AND ad.family = 6) AS ipv6,
    (SELECT max(ev.id) FROM ev) AS last_event
FROM ep
"""


async def _insert(
    conn: AsyncConnection,
    raw: asyncpg.Connection,
    bodies: list[EndpointIn],
    *,
    network: Any,
    host: Any,
    allocations: dict[int, list[ipam.Allocation]],
) -> list[dict[str, Any]]:
    ids = [str(uuid.uuid4()) for _ in bodies]
    addresses = [
        (a.address, family, endpoint_id, a.subnet_id, a.block_id)
        for family, allocs in allocations.items()
        for endpoint_id, a in zip(ids, allocs, strict=False)
    ]
    notes = _notes(allocations, len(ids))
    events = [
        feed.Event(
            "endpoint",
            "created",
            endpoint_id,
            f"endpoint {b.name} on {host.name} in {network.name}"
            + (f" ({', '.join(n)})" if n else ""),
            network.tenant_id,
        )
        for endpoint_id, b, n in zip(ids, bodies, notes, strict=True)
    ]
    rows = await raw.fetch(
        INSERT_SQL,
        network.id,
        host.id,
        ids,
        [b.name for b in bodies],
        [b.netns for b in bodies],
        [b.interface for b in bodies],
        *(list(column) for column in zip(*addresses, strict=True)),
        *feed.event_columns(events),
    )
    last_event = max(r["last_event"] for r in rows)
    await _wake(conn, raw, network_id=network.id, host=host, notes=notes, last_event=last_event)
    by_id = {r["id"]: r for r in rows}
    return [
        endpoint_doc(
            SimpleNamespace(
                id=i,
                name=b.name,
                network_id=network.id,
                network=network.name,
                tenant_id=network.tenant_id,
                host=host.name,
                ipv4=by_id[i]["ipv4"],
                ipv6=by_id[i]["ipv6"],
                netns=b.netns,
                interface=b.interface,
                created_at=by_id[i]["created_at"],
            )
        )
        for i, b in zip(ids, bodies, strict=True)
    ]


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


async def _wake(
    conn: AsyncConnection,
    raw: asyncpg.Connection,
    *,
    network_id: str,
    host: Any,
    notes: list[list[str]],
    last_event: int,
) -> None:
    """New revisions and one NOTIFY: for the endpoints' host; for every host referencing
    the network when auto-grow added a subnet; for the owners of blocks an address was
    borrowed from (their holes change)."""
    flat = [n for ns in notes for n in ns]
    grew = any(n.startswith("auto-grew") for n in flat)
    borrowed = any(n.startswith("borrowed") for n in flat)
    if not grew and not borrowed:  # the common case, in one statement
        await feed.notify(raw, last_event, ["endpoint"], [host.name], bump=[host.id])
        return
    if grew:
        hosts = await feed.bump_hosts(conn, HOSTS_REFERENCING_NETWORK, {"n": network_id})
    else:
        hosts = await feed.bump_hosts(conn, "h.id = :h", {"h": host.id})
    if borrowed:
        hosts += await feed.bump_hosts(
            conn,
            (
                "h.id IN (SELECT b.host_id FROM blocks b JOIN addresses a ON a.address <<= b.cidr"
                " JOIN endpoints e ON e.id = a.endpoint_id WHERE e.host_id = :h AND"
                " a.block_id IS NULL AND b.host_id <> :h)"
            ),
            {"h": host.id},
        )
    await feed.notify(raw, last_event, ["endpoint"], hosts)


def _is_race(exc: DBAPIError | asyncpg.PostgresError) -> bool:
    cause = database_cause(exc)
    if isinstance(cause, asyncpg.UniqueViolationError):
        return getattr(cause, "constraint_name", "") == "addresses_pkey"
    return isinstance(
        cause,
        asyncpg.ExclusionViolationError
        | asyncpg.DeadlockDetectedError
        | asyncpg.SerializationError,
    )
