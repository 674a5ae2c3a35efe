"""Desired state long-poll, host status reports, fabric status, events, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web
from sqlalchemy import text

from controller.api_admin import load_host, require_host_access
from controller.auth import Principal
from controller.context import ctx
from controller.feed import REVISION_SEQUENCE, STREAM_END
from controller.models import ChangeEvent, HostStatusIn
from controller.problems import Problem
from controller.registry import EventStream, Query, dump_json, int_param, int_query, route

MAX_WAIT = 300
MAX_EVENT_ID = 2**62
CHANGES = EventStream("change", ChangeEvent)


@route(
    "GET",
    "/v1/hosts/{name}/desired-state",
    summary="The host's full desired state; long-polls until newer than `after`",
    query=(
        Query("after", "integer", "answer once the revision is newer than this"),
        Query("timeout", "number", "seconds to wait (default 30, max 300)"),
    ),
    errors=(400, 404),
    tag="hosts",
)
async def desired_state(request: web.Request, who: Principal) -> dict[str, Any]:
    name = request.match_info["name"]
    require_host_access(who, name)
    after = int_query(request, "after", -1, -1, 2**62)
    timeout = int_query(request, "timeout", 30, 0, MAX_WAIT)
    controller = ctx(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with controller.feed.watch_host(name) as changed:
        while True:
            changed.clear()
            force = loop.time() >= deadline or controller.feed.closing
            state = await controller.states.read(name, after, force=force)
            if state is not None:
                return state.to_json()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - loop.time()))


@route(
    "POST",
    "/v1/hosts/{name}/status",
    summary="A speaker reports what it applied",
    body=HostStatusIn,
    errors=(400, 404),
    tag="hosts",
)
async def post_host_status(
    request: web.Request, who: Principal, body: HostStatusIn
) -> dict[str, Any]:
    name = request.match_info["name"]
    require_host_access(who, name)
    doc = body.model_dump()
    encoded = json.dumps(doc, default=str)
    if len(encoded) > 256 * 1024:
        raise Problem(413, "the status report is larger than 256 KiB", kind="too-large")
    async with ctx(request).engine.begin() as conn:
        updated = await conn.scalar(
            text(
                "UPDATE hosts SET status = CAST(:s AS jsonb), status_at = now() WHERE name = :n "
                "RETURNING revision"
            ),
            {"s": encoded, "n": name},
        )
        if updated is None:
            await load_host(conn, name)  # raises 404
    return {"name": name, "revision": updated, "accepted": True}


@route(
    "GET", "/v1/status", summary="Fabric revision, object counts, borrowed addresses", tag="status"
)
async def status(request: web.Request, who: Principal) -> dict[str, Any]:
    scope = "" if who.is_admin else " WHERE n.tenant_id = :t"
    params: dict[str, Any] = {"t": who.tenant_id} if who.kind == "tenant" else {}
    if who.kind == "host":
        scope, params = " WHERE false", {}
    async with ctx(request).engine.connect() as conn:
        revision = await conn.scalar(
            text(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {REVISION_SEQUENCE}")
        )
        counts = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM pools) AS pools, "
                    "(SELECT count(*) FROM tenants) AS tenants, "
                    "(SELECT count(*) FROM racks) AS racks, (SELECT count(*) FROM hosts) AS hosts, "
                    f"(SELECT count(*) FROM networks n{scope}) AS networks, "
                    "(SELECT count(*) FROM subnets s JOIN networks n ON n.id = s.network_id"
                    f"{scope}) AS subnets, "
                    "(SELECT count(*) FROM blocks b JOIN subnets s ON s.id = b.subnet_id JOIN "
                    f"networks n ON n.id = s.network_id{scope}) AS blocks, "
                    "(SELECT count(*) FROM endpoints e JOIN networks n ON n.id = e.network_id"
                    f"{scope}) AS endpoints, "
                    "(SELECT count(*) FROM rules r JOIN networks n ON n.id = r.network_id"
                    f"{scope}) AS rules"
                ),
                params,
            )
        ).one()
        borrowed = (
            await conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE a.family = 4) AS v4, "
                    "count(*) FILTER (WHERE a.family = 6) AS v6 FROM addresses a "
                    f"JOIN subnets s ON s.id = a.subnet_id JOIN networks n ON n.id = s.network_id"
                    f"{scope}{' AND' if scope else ' WHERE'} a.block_id IS NULL"
                ),
                params,
            )
        ).one()
        lagging = (
            await conn.scalar(
                text(
                    "SELECT count(*) FROM hosts WHERE status_at IS NOT NULL AND "
                    "coalesce((status->>'applied_revision')::bigint, -1) < revision"
                )
            )
            if (who.is_admin)
            else None
        )
    doc: dict[str, Any] = {
        "revision": revision,
        "counts": dict(counts._mapping),
        "borrowed_addresses": {
            "ipv4": borrowed.v4,
            "ipv6": borrowed.v6,
            "total": borrowed.v4 + borrowed.v6,
        },
    }
    if not who.is_admin:
        for key in ("pools", "tenants", "racks", "hosts"):
            doc["counts"].pop(key)
    else:
        doc["hosts_lagging"] = lagging
    return doc


@route(
    "GET",
    "/v1/events",
    summary="Recent events (a tenant sees its own)",
    query=(Query("after", "integer"), Query("limit", "integer")),
    tag="status",
)
async def list_events(request: web.Request, who: Principal) -> list[dict[str, Any]]:
    after = int_query(request, "after", 0, 0, MAX_EVENT_ID)
    limit = int_query(request, "limit", 100, 1, 1000)
    return await read_events(request, who, after, limit)


async def read_events(
    request: web.Request, who: Principal, after: int, limit: int
) -> list[dict[str, Any]]:
    scope = ""
    params: dict[str, Any] = {"after": after, "limit": limit}
    if not who.is_admin:
        scope = " AND tenant_id = :t"
        params["t"] = who.tenant_id
    async with ctx(request).engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, at, kind, action, object_id, tenant_id::text, revision, summary "
                f"FROM events WHERE id > :after{scope} ORDER BY id DESC LIMIT :limit"
            ),
            params,
        )
        return [dict(r._mapping) for r in rows][::-1]


@route(
    "GET",
    "/healthz",
    summary="Liveness and database reachability",
    auth="none",
    errors=(503,),
    tag="status",
)
async def healthz(request: web.Request) -> dict[str, Any]:
    try:
        async with ctx(request).engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), 3)
    except Exception as exc:
        raise Problem(
            503, f"the database is unreachable: {type(exc).__name__}", kind="unavailable"
        ) from None
    return {"status": "ok", "database": "ok", "feed": ctx(request).feed.connected.is_set()}


@route(
    "GET",
    "/metrics",
    summary="Prometheus metrics",
    auth="none",
    raw=True,
    content_type="text/plain",
    tag="status",
)
async def metrics(request: web.Request) -> web.Response:
    controller = ctx(request)
    pool: Any = controller.engine.pool
    gauges: list[tuple[str, str, float]] = [
        ("terrace_db_pool_checked_out", "database connections in use", pool.checkedout()),
        ("terrace_db_pool_size", "database pool size", pool.size()),
        (
            "terrace_longpoll_waiters",
            "desired-state long-polls waiting",
            controller.feed.waiting_hosts,
        ),
    ]
    try:
        async with controller.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM addresses WHERE block_id IS NULL)"
                        " AS borrowed, "
                        "(SELECT count(*) FROM addresses) AS addresses, "
                        "(SELECT count(*) FROM blocks) AS blocks"
                    )
                )
            ).one()
        gauges += [
            ("terrace_borrowed_addresses", "addresses borrowed outside blocks", row.borrowed),
            ("terrace_addresses", "addresses allocated", row.addresses),
            ("terrace_blocks", "host blocks", row.blocks),
        ]
    except Exception:  # metrics must answer even when the database does not
        gauges.append(("terrace_db_up", "database reachable", 0))
    return web.Response(text=controller.metrics.render(gauges), content_type="text/plain")


@route(
    "GET",
    "/v1/events/stream",
    summary="Server-sent events: every change as it commits (a tenant sees its own)",
    raw=True,
    content_type="text/event-stream",
    events=CHANGES,
    query=(Query("after", "integer", "send the events after this id (default: from now on)"),),
    tag="status",
)
async def event_stream(request: web.Request, who: Principal) -> web.StreamResponse:
    """SSE, resumable with `Last-Event-ID` or `after`; a comment line every 15 s keeps
    proxies from closing an idle stream. A bad resume point is a 400 before the stream
    starts: once the 200 is sent, an error can only cut the stream."""
    resume = request.headers.get("Last-Event-ID")
    if resume:
        after = int_param(resume, "header Last-Event-ID", -1, 0, MAX_EVENT_ID)
    else:
        after = int_query(request, "after", -1, 0, MAX_EVENT_ID)
    if after < 0:
        after = await _latest_event(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError), ctx(request).feed.subscribe_events() as queue:
        while True:
            for event in await read_events(request, who, after, 500):
                after = event["id"]
                frame = f"id: {after}\nevent: {CHANGES.name}\ndata: {dump_json(event)}\n\n"
                await response.write(frame.encode())
            try:
                signal = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            while signal != STREAM_END and not queue.empty():
                signal = queue.get_nowait()
            if signal == STREAM_END:
                break
    return response


async def _latest_event(request: web.Request) -> int:
    async with ctx(request).engine.connect() as conn:
        return int(await conn.scalar(text("SELECT coalesce(max(id), 0) FROM events")) or 0)
