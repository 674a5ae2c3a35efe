"""Bearer tokens: who is calling (admin, a tenant, a host) and what they may see.

Tokens are random and shown once; only their SHA-256 is stored (they carry 256 bits of
entropy, so a fast hash is the right one). The admin token comes from
`TERRACE_ADMIN_TOKEN` or is generated into `<data-dir>/admin.token` (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from controller.problems import Problem

Kind = Literal["admin", "tenant", "host"]
TOKEN_PREFIX = {"admin": "tra_", "tenant": "trt_", "host": "trh_"}


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Kind
    tenant_id: str | None = None
    host_id: str | None = None
    host_name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


ADMIN = Principal("admin")


def new_token(kind: Kind) -> str:
    return TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_admin_token(data_dir: Path) -> tuple[str, Path | None]:
    """The admin token and, when it was read from or written to a file, that file."""
    env = os.environ.get("TERRACE_ADMIN_TOKEN")
    if env:
        return env.strip(), None
    path = data_dir / "admin.token"
    if path.exists():
        return path.read_text().strip(), path
    data_dir.mkdir(parents=True, exist_ok=True)
    token = new_token("admin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, path


class Authenticator:
    """Resolves a bearer token to a Principal. Token lookups are cached for
    `CACHE_SECONDS`; every controller process drops its cache when a tenant or host
    changes (deleted, token revoked), so a revocation takes effect at once everywhere."""

    CACHE_SECONDS = 30.0

    def __init__(self, engine: AsyncEngine, admin_token: str) -> None:
        self.engine = engine
        self._admin_hash = hash_token(admin_token)
        self._cache: dict[str, tuple[Principal, float]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def principal(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "missing bearer token: send `Authorization: Bearer <token>`",
                kind="unauthorized",
            )
        digest = hash_token(token.strip())
        if hmac.compare_digest(digest, self._admin_hash):
            return ADMIN
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal = await self._lookup(digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (principal, now + self.CACHE_SECONDS)
        return principal

    async def _lookup(self, digest: str) -> Principal:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT t.kind, t.tenant_id::text, t.host_id::text, h.name "
                        "FROM tokens t LEFT JOIN hosts h ON h.id = t.host_id "
                        "WHERE t.token_hash = :h"
                    ),
                    {"h": digest},
                )
            ).first()
        if row is None:
            raise Problem(401, "invalid or revoked token", kind="unauthorized")
        return Principal(row[0], tenant_id=row[1], host_id=row[2], host_name=row[3])


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Problem(403, "this operation needs the admin token", kind="forbidden")
