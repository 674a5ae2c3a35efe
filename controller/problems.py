"""RFC 9457 problem details: the one way the API reports an error.

Handlers raise `Problem` (or one of its shorthands); the middleware here turns it, and
the database errors that user input can cause, into `application/problem+json`.
Anything else is a bug and answers 500 with no internals leaked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp import web
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://terrace.dev/problems/"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Problem(Exception):
    """An error the client can act on; `detail` names the object and the fix."""

    def __init__(self, status: int, detail: str, *, kind: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or TITLES.get(status, "error").lower().replace(" ", "-")
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.kind,
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


def bad_request(detail: str, **extra: Any) -> Problem:
    return Problem(400, detail, kind="invalid-input", **extra)


def not_found(what: str, ident: str) -> Problem:
    return Problem(404, f"{what} {ident} does not exist (or is not yours)", kind="not-found")


def conflict(detail: str, *, kind: str = "conflict") -> Problem:
    return Problem(409, detail, kind=kind)


def problem_response(problem: Problem, request: web.Request | None = None) -> web.Response:
    instance = request.path if request is not None else None
    return web.Response(
        status=problem.status,
        text=json.dumps(problem.body(instance)),
        content_type="application/problem+json",
    )


def database_cause(exc: BaseException) -> BaseException:
    """The asyncpg error under a SQLAlchemy one (or `exc` itself, raised by asyncpg)."""
    orig = getattr(exc, "orig", None)
    if orig is None:
        return exc
    cause: BaseException = getattr(orig, "__cause__", None) or orig
    return cause


def _from_database_error(exc: Exception) -> Problem | None:
    """Map what Postgres says about user input to a 409/400, outages to 503."""
    cause = database_cause(exc)
    if isinstance(cause, asyncpg.ExclusionViolationError):
        return conflict(f"overlaps an existing range ({_constraint(cause)})", kind="overlap")
    if isinstance(cause, asyncpg.UniqueViolationError):
        return conflict(f"already exists ({_constraint(cause)})", kind="duplicate")
    if isinstance(cause, asyncpg.ForeignKeyViolationError):
        return conflict(
            f"still in use or refers to a missing object ({_constraint(cause)})", kind="in-use"
        )
    if isinstance(cause, asyncpg.CheckViolationError):
        return bad_request(f"violates {_constraint(cause)}")
    if isinstance(cause, asyncpg.DataError | asyncpg.NumericValueOutOfRangeError):
        return bad_request(f"invalid value: {cause}")
    if isinstance(exc, OperationalError | InterfaceError) or isinstance(
        cause,
        OSError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.InterfaceError,
    ):
        return Problem(503, "the database is unavailable; retry shortly", kind="unavailable")
    return None


def _constraint(exc: Any) -> str:
    return str(getattr(exc, "constraint_name", None) or exc)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(problem, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status in (404, 405):  # raised by the router: no such route or method
            kind = "no-such-route" if exc.status == 404 else "method-not-allowed"
            detail = f"{request.method} {request.path} is not a route; see /openapi.json"
            return problem_response(Problem(exc.status, detail, kind=kind), request)
        detail = exc.text if exc.text and not exc.text.startswith("<") else exc.reason
        return problem_response(Problem(exc.status, detail or exc.reason), request)
    except (DBAPIError, PoolTimeout, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        mapped = _from_database_error(exc)
        if mapped is None and isinstance(exc, PoolTimeout | OSError):
            mapped = Problem(503, "the database is unavailable; retry shortly", kind="unavailable")
        if mapped is None:
            log.exception("database error on %s %s", request.method, request.path)
            mapped = Problem(500, "internal error; see the controller log", kind="internal")
        return problem_response(mapped, request)
