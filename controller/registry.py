"""The route registry: every API route is declared once, with its auth, body model and
documented answers. The aiohttp router and `/openapi.json` are both built from it, so a
route cannot be served undocumented or documented and not served.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from controller.auth import Principal, require_admin
from controller.problems import Problem, bad_request, not_found

Auth = Literal["none", "any", "admin"]
Handler = Callable[..., Awaitable[Any]]
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Query:
    name: str
    type: Literal["string", "integer", "number"] = "string"
    description: str = ""
    # the kind of object the parameter names by id ("tenant"); the handler checks it
    # with `check_id`, so a value that cannot be such an id answers 404
    id_of: str = ""


@dataclass(frozen=True)
class EventStream:
    """What a `text/event-stream` route sends: events named `name`, each with an id and
    one JSON document of `data` in its `data:` field."""

    name: str
    data: type[BaseModel]


@dataclass
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    body: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    query: tuple[Query, ...]
    tag: str
    raw: bool = False  # handler returns a web.StreamResponse itself
    content_type: str = "application/json"
    events: EventStream | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ROUTES: list[RouteSpec] = []


def route(
    method: str,
    path: str,
    *,
    summary: str,
    auth: Auth = "any",
    body: type[BaseModel] | None = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    query: tuple[Query, ...] = (),
    tag: str = "api",
    raw: bool = False,
    content_type: str = "application/json",
    events: EventStream | None = None,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append(
            RouteSpec(
                method,
                path,
                handler,
                summary,
                auth,
                body,
                status,
                errors,
                query,
                tag,
                raw,
                content_type,
                events,
            )
        )
        return handler

    return register


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def dump_json(data: Any) -> str:
    """The JSON of every answer and streamed event: times in ISO 8601, ids as strings."""
    return json.dumps(data, default=_json_default)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=dump_json(data), content_type="application/json")


async def parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Problem(413, f"the body is larger than {MAX_BODY} bytes", kind="too-large")
    raw = await request.read()
    if len(raw) > MAX_BODY:
        raise Problem(413, f"the body is larger than {MAX_BODY} bytes", kind="too-large")
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad_request(_validation_detail(exc), errors=_validation_errors(exc)) from None


def _validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": _message(e)}
        for e in exc.errors(include_url=False)
    ]


def _message(error: Any) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _validation_detail(exc: ValidationError) -> str:
    parts = [f"{e['field']}: {e['message']}" for e in _validation_errors(exc)]
    return "; ".join(parts[:5])


_UUID_RE = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def check_id(value: str, what: str) -> str:
    """A path or body id must be a UUID; anything else cannot name an object (404)."""
    if not _UUID_RE.match(value or ""):
        raise not_found(what, repr(value))
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise not_found(what, repr(value)) from None


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    return int_param(request.query.get(name), f"query parameter {name}", default, low, high)


def int_param(raw: str | None, what: str, default: int, low: int, high: int) -> int:
    """An integer from a query parameter or a header (`what` names it in the 400); a
    fraction is cut to its integer part."""
    if raw is None or raw == "":
        return default
    try:
        value = int(float(raw)) if "." in raw else int(raw)
    except (ValueError, OverflowError):  # OverflowError: "1.5e999" is an infinite float
        raise bad_request(f"{what}={raw!r} must be a number") from None
    if not low <= value <= high:
        raise bad_request(f"{what}={value} must be between {low} and {high}")
    return value


def make_view(
    spec: RouteSpec, authenticate: Callable[[web.Request], Awaitable[Principal]]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def view(request: web.Request) -> web.StreamResponse:
        args: list[Any] = [request]
        if spec.auth != "none":
            who = await authenticate(request)
            if spec.auth == "admin":
                require_admin(who)
            args.append(who)
        if spec.body is not None:
            args.append(await parse_body(request, spec.body))
        result = await spec.handler(*args)
        if spec.raw:
            assert isinstance(result, web.StreamResponse)
            return result
        return json_response(result, spec.status)

    view.__name__ = spec.handler.__name__
    return view
