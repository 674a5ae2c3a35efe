"""Database plumbing: the async engine, migrations, the schema check, embedded Postgres.

Owns how the controller reaches Postgres. With no database URL it starts an embedded
Postgres (`pgserver`) in the data directory. It never decides what to store: that is
the store's job (`controller/store.py`, `controller/ipam.py`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class SchemaOutdated(RuntimeError):
    """The database schema is not at the version this controller needs."""


def normalize_url(url: str) -> str:
    """Accept `postgresql://…` and `postgres://…` and use the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"{url!r} is not a PostgreSQL URL (postgresql://user@host/db)")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        normalize_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        connect_args={"timeout": 5, "command_timeout": 30},
    )


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, for hot paths that cannot afford SQLAlchemy's
    cost per statement (compile, cache key, result objects). Its statements run in the
    transaction of `conn`, begun here when nothing has run through SQLAlchemy yet, so they
    commit or roll back with the rest."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert isinstance(raw, asyncpg.Connection)
    if not raw.is_in_transaction():
        await conn.execute(text("SELECT 1"))
    return raw


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _upgrade_sync(connection: Connection) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Migrate the database to the newest schema (`terrace db upgrade`)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_sync)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return None
        value = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return str(value) if value is not None else None


async def check_schema(engine: AsyncEngine) -> None:
    """Refuse to serve an unmigrated or outdated schema, with the command that fixes it."""
    current = await current_revision(engine)
    head = head_revision()
    if current is None:
        raise SchemaOutdated("the database has no Terrace schema; run `terrace db upgrade` first")
    if current != head:
        raise SchemaOutdated(
            f"the database schema is at {current}, this controller needs {head}; "
            "run `terrace db upgrade`"
        )


class EmbeddedPostgres:
    """A Postgres server private to one data directory, started with `pgserver`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        import pgserver  # only the embedded path needs it

        pgdata = self.data_dir / "pgdata"
        pgdata.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            str(pgdata), cleanup_mode="stop"
        )
        uri: str = self._server.get_uri()
        log.info("embedded Postgres in %s", pgdata)
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def wait_for_database(engine: AsyncEngine, *, attempts: int = 30) -> None:
    """Wait for Postgres to accept connections (it may still be starting)."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return
        except (OSError, ConnectionError) as exc:
            last = exc
        except Exception as exc:  # asyncpg raises its own "cannot connect now" types
            last = exc
        await asyncio.sleep(0.5)
    raise ConnectionError(f"database unreachable: {last}")
