"""The change feed: revisions, events and the LISTEN/NOTIFY that wakes long-polls.

Every write that changes what a host must do bumps that host's revision (from one
Postgres sequence) and records an event, in the same transaction as the change. At
commit, Postgres delivers a NOTIFY to every controller process; each wakes the
long-polls of the hosts named and pushes the event to dashboard streams. Level-
triggered: a woken waiter re-reads the full state, so a lost NOTIFY costs latency
(the poll times out and re-reads), never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from controller.db import driver_connection

log = logging.getLogger(__name__)

REVISION_SEQUENCE = "terrace_revision"  # created by migration 0001
CHANGES_CHANNEL = "terrace_changes"
ALL_HOSTS = "*"
STREAM_END = -1  # put in event queues when the server shuts down
MAX_NAMED_HOSTS = 200  # beyond this the NOTIFY payload says "*" (payload limit 8000 bytes)


async def bump_hosts(conn: AsyncConnection, where_sql: str, params: dict[str, Any]) -> list[str]:
    """Give every host matching `where_sql` (over `hosts h`) a new revision; their names."""
    rows = await conn.execute(
        text(
            f"UPDATE hosts h SET revision = nextval('{REVISION_SEQUENCE}') "
            f"WHERE {where_sql} RETURNING h.name"
        ),
        params,
    )
    return sorted(r[0] for r in rows)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    action: str
    object_id: str | None
    summary: str
    tenant_id: str | None = None


async def record(
    conn: AsyncConnection,
    *,
    kind: str,
    action: str,
    object_id: str | None,
    summary: str,
    tenant_id: str | None = None,
    hosts: Iterable[str] = (),
) -> None:
    """Record an event and notify every controller at commit."""
    await record_many(conn, [Event(kind, action, object_id, summary, tenant_id)], hosts=hosts)


def events_insert_sql(first: int) -> str:
    """The INSERT of events from five arrays, parameters `$first`..`$first+4` (kinds,
    actions, object ids, tenant ids, summaries; see `event_columns`), returning their
    ids: for use alone or in a WITH of a bigger statement."""
    k, a, o, t, s = (f"${first + i}" for i in range(5))
    return (
        "INSERT INTO events (kind, action, object_id, tenant_id, revision, summary) "
        f"SELECT k, a, o, t::uuid, nextval('{REVISION_SEQUENCE}'), s FROM unnest("
        f"{k}::text[], {a}::text[], {o}::text[], {t}::text[], {s}::text[]) AS e(k, a, o, t, s)"
        " RETURNING id"
    )


def event_columns(events: Sequence[Event]) -> list[list[str | None]]:
    return [
        [e.kind for e in events],
        [e.action for e in events],
        [e.object_id for e in events],
        [e.tenant_id for e in events],
        [e.summary for e in events],
    ]


RECORD_SQL = f"WITH e AS ({events_insert_sql(1)}) SELECT max(id) FROM e"
NOTIFY_SQL = (
    f"WITH bumped AS (UPDATE hosts h SET revision = nextval('{REVISION_SEQUENCE}') "
    "WHERE h.id = ANY($3::uuid[]) RETURNING 1) "
    "SELECT pg_notify($1, $2), (SELECT count(*) FROM bumped)"
)


async def record_many(
    conn: AsyncConnection, events: Sequence[Event], *, hosts: Iterable[str] = ()
) -> None:
    """Record events and send one NOTIFY naming the hosts to wake."""
    raw = await driver_connection(conn)
    last_event = await raw.fetchval(RECORD_SQL, *event_columns(events))
    await notify(raw, last_event, {e.kind for e in events}, hosts)


async def notify(
    raw: asyncpg.Connection,
    last_event: int,
    kinds: Iterable[str],
    hosts: Iterable[str],
    *,
    bump: Sequence[str] = (),
) -> None:
    """The NOTIFY for events up to `last_event` that changes `hosts`; first give the
    hosts with the ids in `bump` a new revision (the same statement)."""
    host_list = sorted(set(hosts))
    named: list[str] | str = host_list if len(host_list) <= MAX_NAMED_HOSTS else ALL_HOSTS
    payload = json.dumps({"event": last_event, "hosts": named, "kinds": sorted(set(kinds))})
    await raw.fetch(NOTIFY_SQL, CHANGES_CHANNEL, payload, list(bump))


class ChangeFeed:
    """Listens on the changes channel and wakes waiters; one per controller process."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._host_waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._event_queues: set[asyncio.Queue[int]] = set()
        self._kind_listeners: list[Callable[[set[str]], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.closing = False
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("change feed: cannot connect (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            try:
                await conn.add_listener(CHANGES_CHANNEL, self._on_notify)
                self.connected.set()
                # Anything may have changed while we were not listening.
                self._wake_all()
                while not conn.is_closed():
                    await asyncio.sleep(1.0)
                    await conn.execute("SELECT 1")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("change feed: connection lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            self._wake_all()
            return
        kinds = set(doc.get("kinds") or ())
        for listener in self._kind_listeners:
            listener(kinds)
        hosts = doc.get("hosts", ALL_HOSTS)
        if hosts == ALL_HOSTS:
            self._wake_all()
        else:
            for name in hosts:
                for event in self._host_waiters.get(name, ()):
                    event.set()
        event_id = doc.get("event")
        if isinstance(event_id, int):
            for queue in self._event_queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(event_id)

    def on_kinds(self, listener: Callable[[set[str]], None]) -> None:
        """Call `listener(kinds)` with the event kinds of every committed change."""
        self._kind_listeners.append(listener)

    def _wake_all(self) -> None:
        for waiters in self._host_waiters.values():
            for event in waiters:
                event.set()

    @contextlib.contextmanager
    def watch_host(self, name: str) -> Any:
        """An Event set when `name` may have a new revision (register before reading)."""
        event = asyncio.Event()
        self._host_waiters[name].add(event)
        try:
            yield event
        finally:
            waiters = self._host_waiters.get(name)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._host_waiters[name]

    @contextlib.contextmanager
    def subscribe_events(self) -> Any:
        """A queue of event ids, for the dashboard's server-sent events."""
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1000)
        self._event_queues.add(queue)
        try:
            yield queue
        finally:
            self._event_queues.discard(queue)

    def close_streams(self) -> None:
        """The server is shutting down: end every event stream and long-poll now."""
        self.closing = True
        self._wake_all()
        for queue in self._event_queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(STREAM_END)

    @property
    def waiting_hosts(self) -> int:
        return sum(len(w) for w in self._host_waiters.values())
