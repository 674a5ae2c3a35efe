"""Tenant resources: logical networks, their subnets, endpoints and ingress rules.

A tenant token sees only its own tenant's objects: anything else answers 404, for
reading and for writing (invariant 7). Every change bumps the revision of exactly the
hosts whose desired state it changes, in the same transaction.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from controller import feed, ipam
from controller.auth import Principal
from controller.context import ctx
from controller.models import EndpointIn, NetworkIn, RuleIn, SubnetIn
from controller.problems import Problem, bad_request, conflict, not_found
from controller.queries import (
    ENDPOINT_SQL,
    HOSTS_OF_NETWORK,
    HOSTS_REFERENCING_NETWORK,
    endpoint_doc,
)
from controller.registry import Query, check_id, route

ALLOCATION_ATTEMPTS = 8


async def visible_network(
    conn: AsyncConnection, who: Principal, network_id: str, *, lock: bool = False
) -> Any:
    network_id = check_id(network_id, "network")
    row = (
        await conn.execute(
            text(
                "SELECT n.id::text, n.name, n.tenant_id::text, n.auto_grow, t.name AS tenant "
                "FROM networks n JOIN tenants t ON t.id = n.tenant_id WHERE n.id = :n"
                + (" FOR UPDATE OF n" if lock else "")
            ),
            {"n": network_id},
        )
    ).first()
    if row is None or (who.kind == "tenant" and row.tenant_id != who.tenant_id):
        raise not_found("network", network_id)
    return row


def _owner_only(who: Principal, network: Any) -> None:
    if who.kind == "host":
        raise not_found("network", network.id)


async def _subnets_of(conn: AsyncConnection, network_ids: list[str]) -> dict[str, list[Any]]:
    rows = await conn.execute(
        text(
            "SELECT id::text, network_id::text, cidr, family, block_prefix_length, "
            "rack_prefix_length, auto FROM subnets WHERE network_id = ANY(CAST(:ids AS uuid[])) "
            "ORDER BY family, cidr"
        ),
        {"ids": network_ids},
    )
    out: dict[str, list[Any]] = {n: [] for n in network_ids}
    for r in rows:
        out[r.network_id].append(subnet_doc(r))
    return out


def subnet_doc(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "cidr": str(row.cidr),
        "family": row.family,
        "network_id": row.network_id,
        "block_prefix_length": row.block_prefix_length,
        "rack_prefix_length": row.rack_prefix_length,
        "auto": row.auto,
    }


def network_doc(row: Any, subnets: list[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "tenant_id": row.tenant_id,
        "tenant": row.tenant,
        "auto_grow": row.auto_grow,
        "subnets": subnets,
    }


@route(
    "POST",
    "/v1/networks",
    summary="Create a logical network",
    body=NetworkIn,
    status=201,
    errors=(400, 403, 404, 409),
    tag="networks",
)
async def create_network(request: web.Request, who: Principal, body: NetworkIn) -> dict[str, Any]:
    if who.kind == "host":
        raise Problem(403, "a host token cannot create networks", kind="forbidden")
    if who.is_admin:
        if body.tenant_id is None:
            raise bad_request("tenant_id: the admin must name the tenant that owns the network")
        tenant_id = check_id(body.tenant_id, "tenant")
    else:
        if body.tenant_id is not None and body.tenant_id != who.tenant_id:
            raise not_found("tenant", body.tenant_id)
        tenant_id = str(who.tenant_id)
    async with ctx(request).engine.begin() as conn:
        tenant = await conn.scalar(text("SELECT name FROM tenants WHERE id = :t"), {"t": tenant_id})
        if tenant is None:
            raise not_found("tenant", tenant_id)
        if await conn.scalar(
            text("SELECT 1 FROM networks WHERE tenant_id = :t AND name = :n"),
            {"t": tenant_id, "n": body.name},
        ):
            raise conflict(
                f"tenant {tenant} already has a network named {body.name!r}", kind="duplicate"
            )
        row = (
            await conn.execute(
                text(
                    "INSERT INTO networks (tenant_id, name, auto_grow) VALUES (:t, :n, :a) "
                    "RETURNING id::text, name, tenant_id::text, auto_grow"
                ),
                {"t": tenant_id, "n": body.name, "a": body.auto_grow},
            )
        ).one()
        await feed.record(
            conn,
            kind="network",
            action="created",
            object_id=row.id,
            tenant_id=tenant_id,
            summary=f"network {tenant}/{body.name} created",
        )
    return {
        "id": row.id,
        "name": row.name,
        "tenant_id": row.tenant_id,
        "tenant": tenant,
        "auto_grow": row.auto_grow,
        "subnets": [],
    }


@route(
    "GET",
    "/v1/networks",
    summary="List networks (a tenant sees its own)",
    query=(Query("tenant_id", id_of="tenant"),),
    tag="networks",
)
async def list_networks(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    sql = (
        "SELECT n.id::text, n.name, n.tenant_id::text, n.auto_grow, t.name AS tenant, "
        "(SELECT count(*) FROM endpoints e WHERE e.network_id = n.id) AS endpoints "
        "FROM networks n JOIN tenants t ON t.id = n.tenant_id WHERE true"
    )
    params: dict[str, Any] = {}
    if who.kind == "tenant":
        sql += " AND n.tenant_id = :t"
        params["t"] = who.tenant_id
    elif who.kind == "host":
        return []
    if request.query.get("tenant_id"):
        sql += " AND n.tenant_id = :q"
        params["q"] = check_id(request.query["tenant_id"], "tenant")
    async with ctx(request).engine.connect() as conn:
        rows = (await conn.execute(text(sql + " ORDER BY t.name, n.name"), params)).all()
        subnets = await _subnets_of(conn, [r.id for r in rows])
    return [{**network_doc(r, subnets[r.id]), "endpoints": r.endpoints} for r in rows]


@route(
    "GET",
    "/v1/networks/{id}",
    summary="Show a network with its subnets and usage",
    errors=(404,),
    tag="networks",
)
async def get_network(request: web.Request, who: Principal) -> dict[str, Any]:
    async with ctx(request).engine.connect() as conn:
        row = await visible_network(conn, who, request.match_info["id"])
        _owner_only(who, row)
        subnets = (await _subnets_of(conn, [row.id]))[row.id]
        usage = await _usage(conn, row.id)
    for subnet in subnets:
        subnet.update(usage.get(subnet["id"], {"used": 0, "blocks": 0, "borrowed": 0}))
        subnet["size"] = ipaddress.ip_network(subnet["cidr"]).num_addresses
    return network_doc(row, subnets)


async def _usage(conn: AsyncConnection, network_id: str) -> dict[str, dict[str, int]]:
    rows = await conn.execute(
        text(
            "SELECT s.id::text AS id, "
            "(SELECT count(*) FROM addresses a WHERE a.subnet_id = s.id) AS used, "
            "(SELECT count(*) FROM blocks b WHERE b.subnet_id = s.id) AS blocks, "
            "(SELECT count(*) FROM addresses a WHERE a.subnet_id = s.id AND a.block_id IS NULL)"
            " AS borrowed FROM subnets s WHERE s.network_id = :n"
        ),
        {"n": network_id},
    )
    return {r.id: {"used": r.used, "blocks": r.blocks, "borrowed": r.borrowed} for r in rows}


@route(
    "DELETE",
    "/v1/networks/{id}",
    summary="Delete a network with no endpoints",
    errors=(404, 409),
    tag="networks",
)
async def delete_network(request: web.Request, who: Principal) -> dict[str, Any]:
    async with ctx(request).engine.begin() as conn:
        row = await visible_network(conn, who, request.match_info["id"], lock=True)
        _owner_only(who, row)
        count = await conn.scalar(
            text("SELECT count(*) FROM endpoints WHERE network_id = :n"), {"n": row.id}
        )
        if count:
            raise conflict(
                f"network {row.name} still has {count} endpoint(s); delete them first",
                kind="in-use",
            )
        hosts = await feed.bump_hosts(conn, HOSTS_REFERENCING_NETWORK, {"n": row.id})
        await conn.execute(
            text("DELETE FROM rules WHERE network_id = :n OR from_network = :n"), {"n": row.id}
        )
        await conn.execute(text("DELETE FROM subnets WHERE network_id = :n"), {"n": row.id})
        await conn.execute(text("DELETE FROM networks WHERE id = :n"), {"n": row.id})
        await feed.record(
            conn,
            kind="network",
            action="deleted",
            object_id=row.id,
            tenant_id=row.tenant_id,
            hosts=hosts,
            summary=f"network {row.tenant}/{row.name} deleted",
        )
    return {"id": row.id, "deleted": True}


@route(
    "POST",
    "/v1/networks/{id}/subnets",
    summary="Add a subnet carved from the pools",
    body=SubnetIn,
    status=201,
    errors=(400, 404, 409),
    tag="networks",
)
async def create_subnet(request: web.Request, who: Principal, body: SubnetIn) -> dict[str, Any]:
    async with ctx(request).engine.begin() as conn:
        network = await visible_network(conn, who, request.match_info["id"], lock=True)
        _owner_only(who, network)
        cidr, pool_id = await _choose_subnet(conn, who, body)
        block = body.block_prefix_length
        if block is None:
            block = ipam.default_block_prefix(cidr.version, cidr.prefixlen)
        _check_lengths(cidr, block, body.rack_prefix_length)
        doc = await ipam.insert_subnet(
            conn,
            network_id=network.id,
            pool_id=pool_id,
            cidr=cidr,
            block_prefix_length=block,
            rack_prefix_length=body.rack_prefix_length,
        )
        hosts = await feed.bump_hosts(conn, HOSTS_REFERENCING_NETWORK, {"n": network.id})
        await feed.record(
            conn,
            kind="subnet",
            action="created",
            object_id=doc["id"],
            tenant_id=network.tenant_id,
            hosts=hosts,
            summary=f"subnet {cidr} added to {network.tenant}/{network.name}",
        )
    return doc


async def _choose_subnet(conn: AsyncConnection, who: Principal, body: SubnetIn) -> tuple[Any, str]:
    if body.cidr is not None:
        if not who.is_admin:
            raise Problem(
                403,
                "only the admin may name an exact CIDR; ask for {family, prefix_length} instead",
                kind="forbidden",
            )
        if body.family is not None or body.prefix_length is not None:
            raise bad_request("give either cidr or {family, prefix_length}, not both")
        cidr = ipaddress.ip_network(body.cidr)
        pool_id = await ipam.pool_containing(conn, cidr)
        if pool_id is None:
            raise conflict(
                f"{cidr} lies in no pool; add a pool that contains it first", kind="outside-pools"
            )
        return cidr, pool_id
    if body.family is None or body.prefix_length is None:
        raise bad_request("give {family: 4|6, prefix_length} (or, as admin, an exact cidr)")
    top = 32 if body.family == 4 else 128
    if body.prefix_length > top:
        raise bad_request(
            f"prefix_length /{body.prefix_length} is out of range for IPv{body.family} (0..{top})"
        )
    carved = await ipam.carve_subnet_from_pools(conn, body.family, body.prefix_length)
    if carved is None:
        raise conflict(
            f"no IPv{body.family} pool has room for a /{body.prefix_length}", kind="exhausted"
        )
    pool_id, cidr = carved
    return cidr, pool_id


def _check_lengths(cidr: Any, block: int, rack: int | None) -> None:
    if not cidr.prefixlen <= block <= cidr.max_prefixlen:
        raise bad_request(
            f"block_prefix_length /{block} must lie between the subnet's "
            f"/{cidr.prefixlen} and /{cidr.max_prefixlen}"
        )
    if rack is not None and not cidr.prefixlen <= rack <= block:
        raise bad_request(
            f"rack_prefix_length /{rack} must lie between the subnet's "
            f"/{cidr.prefixlen} and the block's /{block}"
        )


@route(
    "DELETE",
    "/v1/subnets/{id}",
    summary="Delete a subnet with no addresses in use",
    errors=(404, 409),
    tag="networks",
)
async def delete_subnet(request: web.Request, who: Principal) -> dict[str, Any]:
    subnet_id = check_id(request.match_info["id"], "subnet")
    async with ctx(request).engine.begin() as conn:
        row = (
            await conn.execute(
                text("SELECT network_id::text, cidr FROM subnets WHERE id = :s FOR UPDATE"),
                {"s": subnet_id},
            )
        ).first()
        if row is None:
            raise not_found("subnet", subnet_id)
        network = await visible_network(conn, who, row.network_id)
        _owner_only(who, network)
        used = await conn.scalar(
            text("SELECT count(*) FROM addresses WHERE subnet_id = :s"), {"s": subnet_id}
        )
        if used:
            raise conflict(
                f"subnet {row.cidr} has {used} address(es) in use; delete those endpoints first",
                kind="in-use",
            )
        await conn.execute(text("DELETE FROM blocks WHERE subnet_id = :s"), {"s": subnet_id})
        await conn.execute(text("DELETE FROM subnets WHERE id = :s"), {"s": subnet_id})
        hosts = await feed.bump_hosts(conn, HOSTS_REFERENCING_NETWORK, {"n": network.id})
        await feed.record(
            conn,
            kind="subnet",
            action="deleted",
            object_id=subnet_id,
            tenant_id=network.tenant_id,
            hosts=hosts,
            summary=f"subnet {row.cidr} removed from {network.name}",
        )
    return {"id": subnet_id, "deleted": True}


@route(
    "POST",
    "/v1/endpoints",
    summary="Create an endpoint: allocate its addresses",
    body=EndpointIn,
    status=201,
    errors=(400, 404, 409),
    tag="endpoints",
)
async def create_endpoint(request: web.Request, who: Principal, body: EndpointIn) -> dict[str, Any]:
    if who.kind == "host" and who.host_name != body.host:
        raise not_found("host", repr(body.host))
    body.network_id = check_id(body.network_id, "network")
    return await ctx(request).allocator.create(who, body)


def _endpoint_scope(who: Principal) -> tuple[str, dict[str, Any]]:
    if who.kind == "tenant":
        return " AND n.tenant_id = :scope", {"scope": who.tenant_id}
    if who.kind == "host":
        return " AND e.host_id = :scope", {"scope": who.host_id}
    return "", {}


@route(
    "GET",
    "/v1/endpoints",
    summary="List endpoints",
    query=(Query("network_id", id_of="network"), Query("host")),
    tag="endpoints",
)
async def list_endpoints(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    where, params = _endpoint_scope(who)
    if request.query.get("network_id"):
        where += " AND e.network_id = :net"
        params["net"] = check_id(request.query["network_id"], "network")
    if request.query.get("host"):
        where += " AND h.name = :hn"
        params["hn"] = request.query["host"]
    async with ctx(request).engine.connect() as conn:
        rows = await conn.execute(
            text(ENDPOINT_SQL + " WHERE true" + where + " ORDER BY e.created_at, e.name"), params
        )
        return [endpoint_doc(r) for r in rows]


async def _visible_endpoint(conn: AsyncConnection, who: Principal, raw_id: str) -> Any:
    endpoint_id = check_id(raw_id, "endpoint")
    where, params = _endpoint_scope(who)
    row = (
        await conn.execute(
            text(ENDPOINT_SQL + " WHERE e.id = :e" + where), {"e": endpoint_id, **params}
        )
    ).first()
    if row is None:
        raise not_found("endpoint", endpoint_id)
    return row


@route("GET", "/v1/endpoints/{id}", summary="Show an endpoint", errors=(404,), tag="endpoints")
async def get_endpoint(request: web.Request, who: Principal) -> dict[str, Any]:
    async with ctx(request).engine.connect() as conn:
        return endpoint_doc(await _visible_endpoint(conn, who, request.match_info["id"]))


@route(
    "DELETE",
    "/v1/endpoints/{id}",
    summary="Delete an endpoint and free its addresses",
    errors=(404,),
    tag="endpoints",
)
async def delete_endpoint(request: web.Request, who: Principal) -> dict[str, Any]:
    async with ctx(request).engine.begin() as conn:
        row = await _visible_endpoint(conn, who, request.match_info["id"])
        host_id = await conn.scalar(
            text("SELECT host_id::text FROM endpoints WHERE id = :e"), {"e": row.id}
        )
        freed = [
            r[0]
            for r in await conn.execute(
                text("DELETE FROM addresses WHERE endpoint_id = :e RETURNING block_id::text"),
                {"e": row.id},
            )
        ]
        await conn.execute(text("DELETE FROM endpoints WHERE id = :e"), {"e": row.id})
        released = await ipam.release_empty_blocks(conn, [b for b in freed if b])
        hosts = await feed.bump_hosts(conn, "h.id = :h", {"h": host_id})
        if None in freed:  # a borrowed address: the block owner's hole closes
            hosts += await feed.bump_hosts(
                conn,
                (
                    "h.id IN (SELECT b.host_id FROM blocks b WHERE "
                    "b.cidr >>= ANY(CAST(:addrs AS inet[])))"
                ),
                {"addrs": [a for a in (row.ipv4, row.ipv6) if a]},
            )
        note = f" (released block {', '.join(released)})" if released else ""
        await feed.record(
            conn,
            kind="endpoint",
            action="deleted",
            object_id=row.id,
            tenant_id=row.tenant_id,
            hosts=hosts,
            summary=f"endpoint {row.name} on {row.host} deleted{note}",
        )
    return {"id": row.id, "deleted": True, "released_blocks": released}


def rule_doc(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "network_id": row.network_id,
        "from_network": row.from_network,
        "from_cidr": None if row.from_cidr is None else str(row.from_cidr),
        "protocol": row.protocol,
        "ports": row.ports,
        "created_at": row.created_at,
    }


RULE_SQL = (
    "SELECT id::text, network_id::text, from_network::text, from_cidr, protocol, "
    "ports, created_at FROM rules"
)


@route(
    "POST",
    "/v1/networks/{id}/rules",
    summary="Allow ingress into this network",
    body=RuleIn,
    status=201,
    errors=(400, 404),
    tag="rules",
)
async def create_rule(request: web.Request, who: Principal, body: RuleIn) -> dict[str, Any]:
    if (body.from_network is None) == (body.from_cidr is None):
        raise bad_request("give exactly one of from_network or from_cidr")
    if body.ports and body.protocol not in ("tcp", "udp"):
        raise bad_request(f"ports need protocol tcp or udp, not {body.protocol}")
    async with ctx(request).engine.begin() as conn:
        network = await visible_network(conn, who, request.match_info["id"])
        _owner_only(who, network)
        source = body.from_cidr
        if body.from_network is not None:
            from_id = check_id(body.from_network, "network")
            source = await conn.scalar(
                text(
                    "SELECT t.name || '/' || n.name FROM networks n JOIN tenants t "
                    "ON t.id = n.tenant_id WHERE n.id = :n"
                ),
                {"n": from_id},
            )
            if source is None:
                raise not_found("network", from_id)
            body.from_network = from_id
        row = (
            await conn.execute(
                text(
                    "INSERT INTO rules (network_id, from_network, from_cidr, protocol, ports) "
                    "VALUES (:n, :fn, :fc, :p, CAST(:ports AS jsonb)) RETURNING id::text, "
                    "network_id::text, from_network::text, from_cidr, protocol, ports, created_at"
                ),
                {
                    "n": network.id,
                    "fn": body.from_network,
                    "fc": body.from_cidr,
                    "p": body.protocol,
                    "ports": _json(body.ports),
                },
            )
        ).one()
        hosts = await feed.bump_hosts(conn, HOSTS_OF_NETWORK, {"n": network.id})
        ports = f" ports {','.join(map(str, body.ports))}" if body.ports else ""
        await feed.record(
            conn,
            kind="rule",
            action="created",
            object_id=row.id,
            tenant_id=network.tenant_id,
            hosts=hosts,
            summary=f"rule: {source} → {network.name} {body.protocol}{ports}",
        )
    return rule_doc(row)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


@route(
    "GET",
    "/v1/networks/{id}/rules",
    summary="List the rules into a network",
    errors=(404,),
    tag="rules",
)
async def list_rules(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    async with ctx(request).engine.connect() as conn:
        network = await visible_network(conn, who, request.match_info["id"])
        _owner_only(who, network)
        rows = await conn.execute(
            text(RULE_SQL + " WHERE network_id = :n ORDER BY created_at"), {"n": network.id}
        )
        return [rule_doc(r) for r in rows]


@route("DELETE", "/v1/rules/{id}", summary="Delete a rule", errors=(404,), tag="rules")
async def delete_rule(request: web.Request, who: Principal) -> dict[str, Any]:
    rule_id = check_id(request.match_info["id"], "rule")
    async with ctx(request).engine.begin() as conn:
        row = (
            await conn.execute(text(RULE_SQL + " WHERE id = :r FOR UPDATE"), {"r": rule_id})
        ).first()
        if row is None:
            raise not_found("rule", rule_id)
        try:
            network = await visible_network(conn, who, row.network_id)
        except Problem:
            raise not_found("rule", rule_id) from None
        _owner_only(who, network)
        await conn.execute(text("DELETE FROM rules WHERE id = :r"), {"r": rule_id})
        hosts = await feed.bump_hosts(conn, HOSTS_OF_NETWORK, {"n": network.id})
        await feed.record(
            conn,
            kind="rule",
            action="deleted",
            object_id=rule_id,
            tenant_id=network.tenant_id,
            hosts=hosts,
            summary=f"rule {rule_id[:8]} into {network.name} deleted",
        )
    return {"id": rule_id, "deleted": True}
