"""`/openapi.json`, generated from the route registry and the pydantic models.

OpenAPI 3.2: the schemas pydantic writes are JSON Schema 2020-12 (`"type": "null"`),
which 3.0 does not have, and an event stream is described per event (`itemSchema`),
which only 3.2 has. Every answer a route can give is listed here, from what the
registry says about the route, never per path.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from controller.registry import ROUTES, EventStream, Query, RouteSpec

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
PATH_PARAM = re.compile(r"{(\w+)}")


def build_openapi(version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    for spec in ROUTES:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, components)
    return {
        "openapi": "3.2.0",
        "info": {
            "title": "Terrace API",
            "version": version,
            "description": "Routed container networks: pools, tenants, networks, "
            "endpoints, rules, hosts, fabric.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(spec: RouteSpec, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": spec.handler.__name__,
        "summary": spec.summary,
        "tags": [spec.tag],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in PATH_PARAM.findall(spec.path)
        ]
        + [_query_parameter(q) for q in spec.query],
        "responses": _responses(spec, components),
    }
    if spec.auth != "none":
        op["security"] = [{"bearer": []}]
    if spec.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _component(spec.body, components)}},
        }
    return op


def _query_parameter(q: Query) -> dict[str, Any]:
    description = q.description
    if q.id_of and not description:
        description = f"only those of this {q.id_of}, by id; a value that is no id answers 404"
    return {
        "name": q.name,
        "in": "query",
        "required": False,
        "schema": {"type": q.type},
        "description": description,
    }


def _component(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """Put a model's schema (and the ones it uses) in the components; return its $ref."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for def_name, definition in schema.pop("$defs", {}).items():
        components[def_name] = definition
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _event_schema(events: EventStream, components: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event as OpenAPI 3.2 models it: its fields, all strings, with the
    JSON document in `data` described by the payload model."""
    return {
        "type": "object",
        "required": ["event", "id", "data"],
        "properties": {
            "event": {"const": events.name},
            "id": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "send it back as Last-Event-ID to resume after this event",
            },
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": _component(events.data, components),
            },
        },
    }


def _success_content(spec: RouteSpec, components: dict[str, Any]) -> dict[str, Any]:
    if spec.events is not None:
        return {spec.content_type: {"itemSchema": _event_schema(spec.events, components)}}
    schema = {} if spec.content_type.endswith("json") else {"type": "string"}
    return {spec.content_type: {"schema": schema}}


def _error_statuses(spec: RouteSpec) -> set[int]:
    """The problems a route can answer beyond the ones it declares, from how it is built:
    auth, a body, numeric query parameters (`int_query`: not a number, out of range),
    query parameters that name an object by id (`check_id`)."""
    errors = set(spec.errors)
    if spec.auth != "none":
        errors |= {401, 503}
    if spec.auth == "admin":
        errors |= {403}
    if spec.body is not None:
        errors |= {400, 413}
    if any(q.type != "string" for q in spec.query):
        errors |= {400}
    if any(q.id_of for q in spec.query):
        errors |= {404}
    return errors


def _responses(spec: RouteSpec, components: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(spec.status): {"description": "success", "content": _success_content(spec, components)}
    }
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    errors = _error_statuses(spec)
    for status in sorted(errors):
        responses[str(status)] = {"description": "problem", "content": problem}
    return responses
