"""IPAM in the database: subnets from pools, blocks for hosts, addresses for endpoints.

Every function runs inside the caller's transaction. Choices are made by the pure
arithmetic in `fabric.addressing`; correctness under concurrency comes from locks taken
here and, last, from the constraints (exclusion on pools/subnets/blocks, primary key on
addresses): a racing transaction fails on a constraint and is retried by the caller.

Locks, always in this order, each held until commit:
  1. `pg_advisory_xact_lock(HOST_LOCK, hash(host, network))` — one allocator per host
     and network, so a host's free addresses are not picked twice;
  2. the subnet row (`FOR UPDATE`) while carving a block from it;
  3. `pg_advisory_xact_lock(POOL_LOCK)` while carving a subnet from the pools.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from controller.db import driver_connection
from fabric.addressing import (
    DEFAULT_BLOCK_PREFIX,
    IPAddress,
    IPNetwork,
    PlacedBlock,
    borrowable_address,
    carve_block,
    first_fit,
    free_addresses,
    free_offsets,
)

POOL_LOCK = 0x7E4ACE01
HOST_LOCK = 0x7E4ACE02


def host_lock_sql(host_id: str, network_id: str) -> str:
    """The SQL that takes lock 1 for the host and network named by two SQL expressions
    (text of their uuids): every allocator, in any process, must take this same lock."""
    return f"pg_advisory_xact_lock({HOST_LOCK & 0x7FFFFFFF}, hashtext({host_id} || {network_id}))"


class Exhausted(Exception):
    """No address, block or subnet can be had; the message says what ran out."""


@dataclass(frozen=True, slots=True)
class Allocation:
    address: IPAddress
    subnet_id: str
    block_id: str | None  # None: borrowed
    new_block: str | None = None  # CIDR of a block carved for this allocation
    new_subnet: str | None = None  # CIDR of a subnet added by auto-grow


def default_block_prefix(family: int, prefix_length: int) -> int:
    return max(DEFAULT_BLOCK_PREFIX[family], prefix_length)


async def carve_subnet_from_pools(
    conn: AsyncConnection, family: int, prefix_length: int
) -> tuple[str, IPNetwork] | None:
    """First fit of a /prefix_length in the pools of `family`: (pool id, cidr)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": POOL_LOCK})
    pools = (
        await conn.execute(
            text("SELECT id::text, cidr FROM pools WHERE family = :f ORDER BY cidr"),
            {"f": family},
        )
    ).all()
    for pool_id, pool_cidr in pools:
        pool = ipaddress.ip_network(str(pool_cidr))
        taken = [
            ipaddress.ip_network(str(r[0]))
            for r in await conn.execute(
                text("SELECT cidr FROM subnets WHERE cidr <<= :p"), {"p": str(pool)}
            )
        ]
        found = first_fit(pool, prefix_length, taken)
        if found is not None:
            return pool_id, found
    return None


async def pool_containing(conn: AsyncConnection, cidr: IPNetwork) -> str | None:
    value = await conn.scalar(
        text("SELECT id::text FROM pools WHERE cidr >>= :c LIMIT 1"), {"c": str(cidr)}
    )
    return str(value) if value is not None else None


async def insert_subnet(
    conn: AsyncConnection,
    *,
    network_id: str,
    pool_id: str,
    cidr: IPNetwork,
    block_prefix_length: int,
    rack_prefix_length: int | None,
    auto: bool = False,
) -> dict[str, Any]:
    row = (
        await conn.execute(
            text(
                "INSERT INTO subnets (network_id, pool_id, cidr, family, block_prefix_length,"
                " rack_prefix_length, auto) VALUES (:n, :p, :c, :f, :b, :r, :a)"
                " RETURNING id::text"
            ),
            {
                "n": network_id,
                "p": pool_id,
                "c": str(cidr),
                "f": cidr.version,
                "b": block_prefix_length,
                "r": rack_prefix_length,
                "a": auto,
            },
        )
    ).one()
    return {
        "id": row[0],
        "cidr": str(cidr),
        "family": cidr.version,
        "network_id": network_id,
        "pool_id": pool_id,
        "block_prefix_length": block_prefix_length,
        "rack_prefix_length": rack_prefix_length,
        "auto": auto,
    }


async def allocate_many(
    conn: AsyncConnection,
    *,
    network_id: str,
    host_id: str,
    rack: str | None,
    family: int,
    auto_grow: bool,
    count: int,
) -> list[Allocation]:
    """Up to `count` addresses of `family` in a network for endpoints on a host: from the
    host's blocks, else new blocks, else (auto-grow) a new subnet, else borrowed ones.
    Fewer than `count` only when the network is exhausted; none raises `Exhausted`."""
    await conn.execute(
        text("SELECT " + host_lock_sql("CAST(:h AS text)", "CAST(:n AS text)")),
        {"h": host_id, "n": network_id},
    )
    raw = await driver_connection(conn)
    found = (await from_host_blocks(raw, network_id, host_id, [family], count))[family]
    subnets: list[dict[str, Any]] | None = None
    while len(found) < count:
        if subnets is None:
            subnets = await _subnets(conn, network_id, family)
        more = await _from_new_blocks(conn, subnets, host_id, rack, count - len(found))
        if not more and auto_grow and subnets:
            grown = await _grow(conn, network_id, family, subnets[0])
            if grown is not None:
                subnets.append(grown)
                more = await _from_new_blocks(conn, [grown], host_id, rack, count - len(found))
                more = [replace(a, new_subnet=str(grown["cidr"])) for a in more[:1]] + more[1:]
        if not more:
            taken = {a.address for a in found}
            more = [b for b in [await _borrow(conn, s, taken) for s in subnets] if b][:1]
        if not more:
            break
        found += more
    if not found:
        raise Exhausted(_exhausted(network_id, family, has_subnets=bool(subnets)))
    return found


def _exhausted(network_id: str, family: int, *, has_subnets: bool) -> str:
    if not has_subnets:
        return (
            f"the network has no IPv{family} subnet; add one with "
            f"POST /v1/networks/{network_id}/subnets"
        )
    return (
        f"every IPv{family} address of network {network_id} is in use; add a subnet "
        "or enable auto_grow"
    )


# Used addresses come back as offsets into their block: no address parsing per row.
HOST_BLOCKS_SQL = (
    "SELECT b.id::text, b.cidr, b.subnet_id::text, s.family, "
    "array_remove(array_agg(a.address - b.cidr::inet), NULL) AS used "
    "FROM blocks b JOIN subnets s ON s.id = b.subnet_id "
    "LEFT JOIN addresses a ON a.address <<= b.cidr "
    "WHERE b.host_id = $1::uuid AND s.network_id = $2::uuid AND s.family = ANY($3::int[]) "
    "GROUP BY b.id, s.family ORDER BY s.family, b.cidr"
)


async def from_host_blocks(
    raw: asyncpg.Connection,
    network_id: str,
    host_id: str,
    families: Sequence[int],
    count: int,
) -> dict[int, list[Allocation]]:
    """Family → up to `count` free addresses in the host's blocks of the network, lowest
    first. Needs lock 1 taken by an earlier statement (this one reads after it)."""
    found: dict[int, list[Allocation]] = {f: [] for f in families}
    for block_id, cidr, subnet_id, family, used in await raw.fetch(
        HOST_BLOCKS_SQL, host_id, network_id, list(families)
    ):
        out = found[family]
        size = cidr.num_addresses
        if len(out) == count or len(used) >= size:
            continue
        base = cidr.network_address
        for offset in free_offsets(size, used, count - len(out)):
            out.append(Allocation(base + offset, subnet_id, block_id))
    return found


async def _from_new_blocks(
    conn: AsyncConnection,
    subnets: list[dict[str, Any]],
    host_id: str,
    rack: str | None,
    count: int,
) -> list[Allocation]:
    """Addresses from one new block carved for the host in the first subnet with room."""
    for subnet in subnets:
        carved = await _carve_block(conn, subnet, host_id, rack)
        if carved is None:
            continue
        block_id, cidr, used = carved
        note: str | None = str(cidr)
        found = []
        for address in free_addresses(cidr, used):
            found.append(Allocation(address, subnet["id"], block_id, new_block=note))
            note = None  # the block is reported once, with its first address
            if len(found) == count:
                break
        return found
    return []


async def _used_in(conn: AsyncConnection, cidr: IPNetwork) -> list[IPAddress]:
    rows = await conn.execute(
        text("SELECT address FROM addresses WHERE address <<= :c"), {"c": str(cidr)}
    )
    return [ipaddress.ip_address(str(r[0]).split("/")[0]) for r in rows]


async def _subnets(conn: AsyncConnection, network_id: str, family: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT id::text, cidr, block_prefix_length, rack_prefix_length FROM subnets "
            "WHERE network_id = :n AND family = :f ORDER BY created_at, cidr"
        ),
        {"n": network_id, "f": family},
    )
    return [
        {"id": r[0], "cidr": ipaddress.ip_network(str(r[1])), "block": r[2], "rack": r[3]}
        for r in rows
    ]


async def _carve_block(
    conn: AsyncConnection, subnet: dict[str, Any], host_id: str, rack: str | None
) -> tuple[str, IPNetwork, list[IPAddress]] | None:
    """A new block for the host in `subnet`: (id, cidr, addresses already used in it)."""
    await conn.execute(text("SELECT 1 FROM subnets WHERE id = :s FOR UPDATE"), {"s": subnet["id"]})
    rows = await conn.execute(
        text(
            "SELECT b.cidr, r.name FROM blocks b JOIN hosts h ON h.id = b.host_id "
            "JOIN racks r ON r.id = h.rack_id WHERE b.subnet_id = :s"
        ),
        {"s": subnet["id"]},
    )
    placed = [PlacedBlock(ipaddress.ip_network(str(r[0])), r[1]) for r in rows]
    cidr = carve_block(
        subnet["cidr"], subnet["block"], placed, rack=rack, rack_prefix_length=subnet["rack"]
    )
    if cidr is None:
        return None
    used = await _used_in(conn, cidr)
    if len(used) >= cidr.num_addresses:  # every address of the range is borrowed: leave it
        return None
    block_id = await conn.scalar(
        text(
            "INSERT INTO blocks (subnet_id, host_id, cidr) VALUES (:s, :h, :c) RETURNING id::text"
        ),
        {"s": subnet["id"], "h": host_id, "c": str(cidr)},
    )
    return str(block_id), cidr, used


async def _grow(
    conn: AsyncConnection, network_id: str, family: int, model: dict[str, Any]
) -> dict[str, Any] | None:
    prefix = model["cidr"].prefixlen
    carved = await carve_subnet_from_pools(conn, family, prefix)
    if carved is None:
        return None
    pool_id, cidr = carved
    row = await insert_subnet(
        conn,
        network_id=network_id,
        pool_id=pool_id,
        cidr=cidr,
        block_prefix_length=model["block"],
        rack_prefix_length=model["rack"],
        auto=True,
    )
    return {"id": row["id"], "cidr": cidr, "block": model["block"], "rack": model["rack"]}


async def _borrow(
    conn: AsyncConnection, subnet: dict[str, Any], taken: set[IPAddress]
) -> Allocation | None:
    """One address anywhere in the subnet, not in `taken` (chosen earlier, not yet
    written): announced alone as /32 or /128 by the borrowing host."""
    cidr: IPNetwork = subnet["cidr"]
    used = [*await _used_in(conn, cidr), *taken]
    block_rows = await conn.execute(
        text("SELECT cidr FROM blocks WHERE subnet_id = :s"), {"s": subnet["id"]}
    )
    blocks = [ipaddress.ip_network(str(r[0])) for r in block_rows]
    address = borrowable_address(cidr, used, blocks)
    if address is None:
        return None
    return Allocation(address, subnet["id"], None)


async def release_empty_blocks(conn: AsyncConnection, block_ids: list[str]) -> list[str]:
    """Give blocks with no address left back to their subnet; their CIDRs."""
    if not block_ids:
        return []
    rows = await conn.execute(
        text(
            "DELETE FROM blocks b WHERE b.id = ANY(CAST(:ids AS uuid[])) AND NOT EXISTS "
            "(SELECT 1 FROM addresses a WHERE a.block_id = b.id) RETURNING b.cidr"
        ),
        {"ids": block_ids},
    )
    return [str(r[0]) for r in rows]
