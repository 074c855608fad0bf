"""The /v1 routes read requests strictly: nothing a client sends is ignored or guessed.

- A query parameter the operation does not declare is refused (422, naming it): a typo
  such as `?nmae=x` would otherwise widen a search silently. So is a parameter given
  twice (`?name=A&name=B` read as one of the two) and a query string that is not UTF-8
  once percent-decoded (read with U+FFFD in place of its bytes, it found nothing).
- A body sent to an operation that takes none (a GET's) is 422: it was never read, so
  malformed JSON there was answered 200.
- A JSON body is UTF-8 (RFC 8259 section 8.1): anything else is 415, never decoded by
  guessing (json.loads alone reads UTF-16 and UTF-32 too).
- An object with the same name twice (`{"provider_id": A, "provider_id": B}`) is 422:
  RFC 8259 leaves its meaning to the reader, and taking the last one is a guess.

Every /v1 router uses StrictRoute (`APIRouter(route_class=StrictRoute)`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from src.config import get_settings

NAME_SHOWN = 64  # at most this much of an unknown parameter's name is repeated back


def public_base(request: Request) -> str:
    """The API's own address for absolute URLs (FHIR Bundles, the SMART token endpoint):
    PUBLIC_BASE_URL, or the request's scheme and Host (behind a proxy that changes them,
    set PUBLIC_BASE_URL). No trailing slash."""
    public = get_settings().public_base_url.strip().rstrip("/")
    return public or str(request.base_url).rstrip("/")


def query_is_utf8(raw: bytes) -> bool:
    """Whether a query string is UTF-8 once percent-decoded (RFC 3986 2.5: URIs carry
    UTF-8; Starlette would put U+FFFD in place of bytes that are not)."""
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def query_problems(request: Request, declared: frozenset[str]) -> list[dict[str, Any]]:
    """What is wrong with the request's query string: not UTF-8, parameters the
    operation does not declare, parameters given more than once."""
    if not query_is_utf8(request.scope["query_string"]):
        return [
            {
                "type": "query_not_utf8",
                "loc": ("query",),
                "msg": "is not UTF-8 once percent-decoded",
            }
        ]
    counts = Counter(name for name, _ in request.query_params.multi_items())
    unknown = [
        {
            "type": "unknown_query_parameter",
            "loc": ("query", name[:NAME_SHOWN]),
            "msg": "is not a parameter of this operation"
            + (f" (it takes: {', '.join(sorted(declared))})" if declared else ""),
        }
        for name in sorted(counts)
        if name not in declared
    ]
    repeated = [
        {
            "type": "repeated_query_parameter",
            "loc": ("query", name[:NAME_SHOWN]),
            "msg": f"is given {n} times: give it once",
        }
        for name, n in sorted(counts.items())
        if n > 1 and name in declared
    ]
    return unknown + repeated


class DuplicateName(json.JSONDecodeError):
    """A JSON object names a member twice (FastAPI answers a JSONDecodeError as 422)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            shown = name[:NAME_SHOWN]
            raise DuplicateName(f"the member {shown!r} is given twice", "", 0)
        members[name] = value
    return members


def parse_json(body: bytes) -> Any:
    """A request body as JSON: UTF-8 only (HTTPException 415), every object's names
    unique (DuplicateName)."""
    try:
        # No JSON text holds a NUL byte (RFC 8259 escapes control characters): one is
        # UTF-16 or UTF-32, even where its bytes happen to decode as UTF-8.
        if b"\x00" in body:
            raise UnicodeDecodeError("utf-8", body, body.index(b"\x00"), 1, "NUL")
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        # An HTTPException: FastAPI lets it through as it parses the body.
        raise HTTPException(415, "a JSON body must be UTF-8 (RFC 8259)") from None
    return json.loads(text, object_pairs_hook=_no_duplicates)


class StrictRequest(Request):
    """A request whose JSON body is parsed by parse_json (FastAPI calls `json()`)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


def _query_names(dependant: Dependant) -> list[str]:
    """The query parameters an operation declares, its dependencies' included."""
    names = [field.alias for field in dependant.query_params]
    for dependency in dependant.dependencies:
        names += _query_names(dependency)
    return names


def _has_body(request: Request) -> bool:
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class StrictRoute(APIRoute):
    """An APIRoute that refuses undeclared query parameters and reads JSON strictly."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        declared = frozenset(_query_names(self.dependant))
        reads_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            if request.scope["query_string"]:  # most requests have none: nothing to parse
                problems = query_problems(request, declared)
                if problems:
                    raise RequestValidationError(problems)
            if reads_body:
                request = StrictRequest(request.scope, request.receive)
            elif _has_body(request):
                raise RequestValidationError(
                    [
                        {
                            "type": "body_not_taken",
                            "loc": ("body",),
                            "msg": "this operation takes no body",
                        }
                    ]
                )
            return await handler(request)

        return strict_handler
