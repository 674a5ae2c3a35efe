"""Admin resources: pools, tenants, racks, hosts (and a tenant reading itself)."""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from controller import feed
from controller.auth import Principal, hash_token, new_token, require_admin
from controller.context import ctx
from controller.models import HostIn, PoolIn, RackIn, TenantIn
from controller.problems import conflict, not_found
from controller.registry import check_id, route

HOST_ASN_BASE = 4200000000


def _pool(row: Any) -> dict[str, Any]:
    return {"id": row.id, "cidr": str(row.cidr), "family": row.family, "created_at": row.created_at}


@route(
    "POST",
    "/v1/pools",
    summary="Add provider address space",
    auth="admin",
    body=PoolIn,
    status=201,
    errors=(400, 409),
    tag="pools",
)
async def create_pool(request: web.Request, who: Principal, body: PoolIn) -> dict[str, Any]:
    family = ipaddress.ip_network(body.cidr).version
    async with ctx(request).engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "INSERT INTO pools (cidr, family) VALUES (:c, :f) "
                    "RETURNING id::text, cidr, family, created_at"
                ),
                {"c": body.cidr, "f": family},
            )
        ).one()
        await feed.record(
            conn, kind="pool", action="created", object_id=row.id, summary=f"pool {body.cidr} added"
        )
    return _pool(row)


@route("GET", "/v1/pools", summary="List pools", auth="admin", tag="pools")
async def list_pools(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    async with ctx(request).engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT p.id::text, p.cidr, p.family, p.created_at, "
                "(SELECT count(*) FROM subnets s WHERE s.pool_id = p.id) AS subnets "
                "FROM pools p ORDER BY p.cidr"
            )
        )
        return [{**_pool(r), "subnets": r.subnets} for r in rows]


@route(
    "DELETE",
    "/v1/pools/{id}",
    summary="Remove an unused pool",
    auth="admin",
    status=200,
    errors=(404, 409),
    tag="pools",
)
async def delete_pool(request: web.Request, who: Principal) -> dict[str, Any]:
    pool_id = check_id(request.match_info["id"], "pool")
    async with ctx(request).engine.begin() as conn:
        used = await conn.scalar(
            text("SELECT count(*) FROM subnets WHERE pool_id = :p"), {"p": pool_id}
        )
        row = (
            await conn.execute(
                text("SELECT cidr FROM pools WHERE id = :p FOR UPDATE"), {"p": pool_id}
            )
        ).first()
        if row is None:
            raise not_found("pool", pool_id)
        if used:
            raise conflict(
                f"pool {row.cidr} still holds {used} subnet(s); delete them first", kind="in-use"
            )
        await conn.execute(text("DELETE FROM pools WHERE id = :p"), {"p": pool_id})
        await feed.record(
            conn,
            kind="pool",
            action="deleted",
            object_id=pool_id,
            summary=f"pool {row.cidr} removed",
        )
    return {"id": pool_id, "deleted": True}


def _tenant(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "created_at": row.created_at}


@route(
    "POST",
    "/v1/tenants",
    summary="Create a tenant (its token is shown once)",
    auth="admin",
    body=TenantIn,
    status=201,
    errors=(400, 409),
    tag="tenants",
)
async def create_tenant(request: web.Request, who: Principal, body: TenantIn) -> dict[str, Any]:
    token = new_token("tenant")
    async with ctx(request).engine.begin() as conn:
        exists = await conn.scalar(text("SELECT 1 FROM tenants WHERE name = :n"), {"n": body.name})
        if exists:
            raise conflict(f"a tenant named {body.name!r} already exists", kind="duplicate")
        row = (
            await conn.execute(
                text("INSERT INTO tenants (name) VALUES (:n) RETURNING id::text, name, created_at"),
                {"n": body.name},
            )
        ).one()
        await conn.execute(
            text("INSERT INTO tokens (token_hash, kind, tenant_id) VALUES (:h, 'tenant', :t)"),
            {"h": hash_token(token), "t": row.id},
        )
        await feed.record(
            conn,
            kind="tenant",
            action="created",
            object_id=row.id,
            tenant_id=row.id,
            summary=f"tenant {body.name} created",
        )
    return {**_tenant(row), "token": token}


@route("GET", "/v1/tenants", summary="List tenants (a tenant sees itself)", tag="tenants")
async def list_tenants(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    sql = "SELECT id::text, name, created_at FROM tenants"
    params: dict[str, Any] = {}
    if not who.is_admin:
        sql += " WHERE id = :t"
        params["t"] = who.tenant_id
    async with ctx(request).engine.connect() as conn:
        return [_tenant(r) for r in await conn.execute(text(sql + " ORDER BY name"), params)]


async def _visible_tenant(conn: AsyncConnection, who: Principal, tenant_id: str) -> Any:
    if not who.is_admin and who.tenant_id != tenant_id:
        raise not_found("tenant", tenant_id)
    row = (
        await conn.execute(
            text("SELECT id::text, name, created_at FROM tenants WHERE id = :t"), {"t": tenant_id}
        )
    ).first()
    if row is None:
        raise not_found("tenant", tenant_id)
    return row


@route("GET", "/v1/tenants/{id}", summary="Show a tenant", errors=(404,), tag="tenants")
async def get_tenant(request: web.Request, who: Principal) -> dict[str, Any]:
    tenant_id = check_id(request.match_info["id"], "tenant")
    async with ctx(request).engine.connect() as conn:
        row = await _visible_tenant(conn, who, tenant_id)
        count = await conn.scalar(
            text("SELECT count(*) FROM networks WHERE tenant_id = :t"), {"t": tenant_id}
        )
    return {**_tenant(row), "networks": count}


@route(
    "DELETE",
    "/v1/tenants/{id}",
    summary="Delete a tenant with no networks",
    errors=(404, 409),
    tag="tenants",
)
async def delete_tenant(request: web.Request, who: Principal) -> dict[str, Any]:
    tenant_id = check_id(request.match_info["id"], "tenant")
    async with ctx(request).engine.begin() as conn:
        row = await _visible_tenant(conn, who, tenant_id)
        require_admin(who)
        count = await conn.scalar(
            text("SELECT count(*) FROM networks WHERE tenant_id = :t"), {"t": tenant_id}
        )
        if count:
            raise conflict(
                f"tenant {row.name} still has {count} network(s); delete them first", kind="in-use"
            )
        await conn.execute(text("DELETE FROM tenants WHERE id = :t"), {"t": tenant_id})
        await feed.record(
            conn,
            kind="tenant",
            action="deleted",
            object_id=tenant_id,
            tenant_id=tenant_id,
            summary=f"tenant {row.name} deleted",
        )
    return {"id": tenant_id, "deleted": True}


@route(
    "POST",
    "/v1/racks",
    summary="Create a rack",
    auth="admin",
    body=RackIn,
    status=201,
    errors=(400, 409),
    tag="fabric",
)
async def create_rack(request: web.Request, who: Principal, body: RackIn) -> dict[str, Any]:
    async with ctx(request).engine.begin() as conn:
        if await conn.scalar(text("SELECT 1 FROM racks WHERE name = :n"), {"n": body.name}):
            raise conflict(f"a rack named {body.name!r} already exists", kind="duplicate")
        row = (
            await conn.execute(
                text("INSERT INTO racks (name, asn) VALUES (:n, :a) RETURNING id::text, name, asn"),
                {"n": body.name, "a": body.asn},
            )
        ).one()
        await feed.record(
            conn,
            kind="rack",
            action="created",
            object_id=row.id,
            summary=f"rack {body.name} created",
        )
    return {"id": row.id, "name": row.name, "asn": row.asn}


@route("GET", "/v1/racks", summary="List racks", auth="admin", tag="fabric")
async def list_racks(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    async with ctx(request).engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT r.id::text, r.name, r.asn, count(h.id) AS hosts FROM racks r "
                "LEFT JOIN hosts h ON h.rack_id = r.id GROUP BY r.id ORDER BY r.name"
            )
        )
        return [{"id": r.id, "name": r.name, "asn": r.asn, "hosts": r.hosts} for r in rows]


HOST_COLUMNS = (
    "h.id::text, h.name, r.name AS rack, h.asn, h.address, h.address6, h.revision, "
    "h.status, h.status_at, h.peers"
)


def host_doc(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "rack": row.rack,
        "asn": row.asn,
        "address": _addr(row.address),
        "address6": _addr(row.address6),
        "revision": row.revision,
        "status": row.status,
        "status_at": row.status_at,
        "peers": row.peers,
    }


def _addr(value: Any) -> str | None:
    return None if value is None else str(value).split("/")[0]


@route(
    "POST",
    "/v1/hosts",
    summary="Register a host (its token is shown once)",
    auth="admin",
    body=HostIn,
    status=201,
    errors=(400, 404, 409),
    tag="fabric",
)
async def create_host(request: web.Request, who: Principal, body: HostIn) -> dict[str, Any]:
    token = new_token("host")
    async with ctx(request).engine.begin() as conn:
        rack_id = await conn.scalar(
            text("SELECT id::text FROM racks WHERE name = :n"), {"n": body.rack}
        )
        if rack_id is None:
            raise not_found("rack", f"{body.rack!r} (create it with POST /v1/racks)")
        if await conn.scalar(text("SELECT 1 FROM hosts WHERE name = :n"), {"n": body.name}):
            raise conflict(f"a host named {body.name!r} already exists", kind="duplicate")
        asn = body.asn or await conn.scalar(
            text("SELECT GREATEST(COALESCE(MAX(asn) + 1, :b), :b) FROM hosts WHERE asn >= :b"),
            {"b": HOST_ASN_BASE},
        )
        if await conn.scalar(text("SELECT 1 FROM hosts WHERE asn = :a"), {"a": asn}):
            raise conflict(f"ASN {asn} is already used by another host", kind="duplicate")
        host_id = await conn.scalar(
            text(
                "INSERT INTO hosts (name, rack_id, asn, address, address6, revision) "
                "VALUES (:n, :r, :a, :ad, :ad6, nextval('terrace_revision')) RETURNING id::text"
            ),
            {"n": body.name, "r": rack_id, "a": asn, "ad": body.address, "ad6": body.address6},
        )
        await conn.execute(
            text("INSERT INTO tokens (token_hash, kind, host_id) VALUES (:h, 'host', :i)"),
            {"h": hash_token(token), "i": host_id},
        )
        await feed.record(
            conn,
            kind="host",
            action="created",
            object_id=host_id,
            summary=f"host {body.name} registered in rack {body.rack}",
            hosts=[body.name],
        )
    return {
        "id": host_id,
        "name": body.name,
        "rack": body.rack,
        "asn": asn,
        "address": body.address,
        "address6": body.address6,
        "token": token,
    }


@route(
    "GET", "/v1/hosts", summary="List hosts with their reported status", auth="admin", tag="fabric"
)
async def list_hosts(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    async with ctx(request).engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT {HOST_COLUMNS}, (SELECT count(*) FROM endpoints e WHERE e.host_id = h.id)"
                " AS endpoints FROM hosts h JOIN racks r ON r.id = h.rack_id ORDER BY h.name"
            )
        )
        return [{**host_doc(r), "endpoints": r.endpoints} for r in rows]


async def load_host(conn: AsyncConnection, name: str) -> Any:
    row = (
        await conn.execute(
            text(
                f"SELECT {HOST_COLUMNS} FROM hosts h JOIN racks r ON r.id = h.rack_id "
                "WHERE h.name = :n"
            ),
            {"n": name},
        )
    ).first()
    if row is None:
        raise not_found("host", repr(name))
    return row


def require_host_access(who: Principal, name: str) -> None:
    """Admin sees every host; a host token sees only itself; others get 404."""
    if who.is_admin or (who.kind == "host" and who.host_name == name):
        return
    raise not_found("host", repr(name))


@route(
    "GET",
    "/v1/hosts/{name}",
    summary="Show a host and its reported status",
    errors=(404,),
    tag="fabric",
)
async def get_host(request: web.Request, who: Principal) -> dict[str, Any]:
    name = request.match_info["name"]
    require_host_access(who, name)
    async with ctx(request).engine.connect() as conn:
        row = await load_host(conn, name)
        counts = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM endpoints WHERE host_id = :h) AS endpoints, "
                    "(SELECT count(*) FROM blocks WHERE host_id = :h) AS blocks, "
                    "(SELECT count(*) FROM addresses a JOIN endpoints e ON e.id = a.endpoint_id "
                    " WHERE e.host_id = :h AND a.block_id IS NULL) AS borrowed"
                ),
                {"h": row.id},
            )
        ).one()
    return {
        **host_doc(row),
        "endpoints": counts.endpoints,
        "blocks": counts.blocks,
        "borrowed": counts.borrowed,
    }


@route(
    "DELETE",
    "/v1/hosts/{name}",
    summary="Remove a host with no endpoints",
    auth="admin",
    errors=(404, 409),
    tag="fabric",
)
async def delete_host(request: web.Request, who: Principal) -> dict[str, Any]:
    name = request.match_info["name"]
    async with ctx(request).engine.begin() as conn:
        row = await load_host(conn, name)
        await delete_host_row(conn, row.id, name)
    return {"name": name, "deleted": True}


async def delete_host_row(conn: AsyncConnection, host_id: str, name: str) -> None:
    count = await conn.scalar(
        text("SELECT count(*) FROM endpoints WHERE host_id = :h"), {"h": host_id}
    )
    if count:
        raise conflict(
            f"host {name} still has {count} endpoint(s); delete them first", kind="in-use"
        )
    await conn.execute(text("DELETE FROM blocks WHERE host_id = :h"), {"h": host_id})
    await conn.execute(text("DELETE FROM hosts WHERE id = :h"), {"h": host_id})
    await feed.record(
        conn,
        kind="host",
        action="deleted",
        object_id=host_id,
        summary=f"host {name} removed",
        hosts=[name],
    )
