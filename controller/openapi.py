"""`/openapi.json`, generated from the route registry and the pydantic body models."""

from __future__ import annotations

import re
from typing import Any

from controller.registry import ROUTES, RouteSpec

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
        "openapi": "3.0.3",
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
        + [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "schema": {"type": q.type},
                "description": q.description,
            }
            for q in spec.query
        ],
        "responses": _responses(spec),
    }
    if spec.auth != "none":
        op["security"] = [{"bearer": []}]
    if spec.body is not None:
        name = spec.body.__name__
        schema = spec.body.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            components[def_name] = definition
        components[name] = schema
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    return op


def _responses(spec: RouteSpec) -> dict[str, Any]:
    ok_content = {
        spec.content_type: {
            "schema": {} if spec.content_type.endswith("json") else {"type": "string"}
        }
    }
    responses: dict[str, Any] = {
        str(spec.status): {"description": "success", "content": ok_content}
    }
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    errors = set(spec.errors)
    if spec.auth != "none":
        errors |= {401}
    if spec.auth == "admin":
        errors |= {403}
    if spec.body is not None:
        errors |= {400, 413}
    errors |= {503} if spec.auth != "none" else set()
    for status in sorted(errors):
        responses[str(status)] = {"description": "problem", "content": problem}
    return responses
