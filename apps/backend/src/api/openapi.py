"""The OpenAPI document: FastAPI's, plus the shared schemas the models refer to.

- Every operation's `operationId` is its handler's name (`getCareTeam` style names are
  what client generators turn into methods, so they must not change with paths).
- `Problem` (RFC 9457) and the field rules of src/api/fields.py are components that
  operations and models refer to.
- The birth-date rule names today's date, so the document is rebuilt when the date
  (UTC) changes, and is cached until then.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from src.api import fields
from src.api.auth import needs_key
from src.api.errors import FieldProblem, Problem
from src.api.route_scopes import KNOWN_SCOPES, ROUTE_SCOPES


def operation_id(route: APIRoute) -> str:
    """The handler's name, in lowerCamelCase: stable whatever the path."""
    first, *rest = route.name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def install_openapi(app: FastAPI) -> None:
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        today = fields.today().isoformat()
        if cache.get("date") != today:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schemas["Problem"].pop("$defs", None)
            schemas["FieldProblem"] = FieldProblem.model_json_schema()
            schemas.update(fields.shared_schemas())
            _refer_to_shared(document)
            _require_keys(document)
            cache.update(date=today, document=document)
        document_today: dict[str, Any] = cache["document"]
        return document_today

    app.openapi = openapi  # type: ignore[method-assign]


BEARER = "HTTPBearer"


def _require_keys(document: dict[str, Any]) -> None:
    """Every operation that needs an API key (src/api/auth.py) says so, with the scope
    it needs (src/api/route_scopes.py; OpenAPI 3.1 lets a requirement of an http scheme
    list the roles it needs)."""
    document["components"]["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key: `Authorization: Bearer ctk_...`. Each operation lists the SMART "
                "v2 scope it needs; a key without it is answered 403 `insufficient_scope`. "
                f"Scopes: {', '.join(KNOWN_SCOPES)} (and system/<type>.<permissions> or "
                "system/*.<permissions> granting them)."
            ),
        }
    }
    for path, operations in document.get("paths", {}).items():
        if needs_key(path):
            for method, operation in operations.items():
                needed = ROUTE_SCOPES[(method.upper(), path)]
                operation["security"] = [{BEARER: [] if needed is None else [needed]}]


def _shared(value: Any) -> Any:
    """The $ref for a marked field schema; None for anything else."""
    if isinstance(value, dict) and fields.SHARED_SCHEMA_MARK in value:
        return {"$ref": f"#/components/schemas/{value[fields.SHARED_SCHEMA_MARK]}"}
    return None


def _refer_to_shared(node: Any) -> None:
    """Replace each field schema marked by fields.SHARED_SCHEMA_MARK with a $ref (in
    objects and in lists, such as an optional field's anyOf)."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for key, value in list(items):
        ref = _shared(value)
        if ref is not None:
            node[key] = ref
        else:
            _refer_to_shared(value)
