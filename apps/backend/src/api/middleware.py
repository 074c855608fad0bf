"""ASGI middleware: what every request goes through before and after its route, in
this order (src/api/app.py stacks them):

1. RequestContextMiddleware, outermost:
   - a request id (X-Request-ID, the client's when well-formed) on the response and on
     every log line of the request;
   - the Host header checked against ALLOWED_HOSTS;
   - HEAD answered like GET, without the body, on every GET route;
   - `Cache-Control: no-store` on every answer (they carry patient data);
   - one access line and the request metrics (route template, never the raw path);
   - the request's database session closed once the answer is sent.
2. CORS (when CORS_ALLOWED_ORIGINS is set): preflights answered.
3. AccessLog (src/api/access_log.py): a request that reads or changes patient data has
   its access log entry written, and committed, before its answer leaves (503 if it
   cannot be).
4. Authentication (src/api/auth.py): the API key, before anything else answers.
5. BodyRules, innermost: a body of any method is JSON only (415), at most
   MAX_BODY_BYTES (413, refused as it arrives when it has no length). Under /fhir/ the
   FHIR router judges the media type itself (a POST search is form-encoded), and a body
   too large is refused as an OperationOutcome. So does the SMART token endpoint
   (FORM_PATHS: OAuth's requests are form-encoded; src/api/routers/smart.py).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.api.deps import SESSION_STATE
from src.api.errors import (
    BODY_TOO_LARGE,
    INVALID_HOST,
    UNSUPPORTED_MEDIA_TYPE,
    ProblemKind,
    operation_outcome,
    problem_body,
)
from src.log_config import request_id_var
from src.metrics import HTTP_LATENCY, HTTP_REQUESTS

logger = logging.getLogger("src.api.access")

MAX_BODY_BYTES = 64 * 1024
# Routes outside /fhir/ that read a form-encoded body themselves (src/api/routers/smart.py).
FORM_PATHS = frozenset({"/auth/token"})
# Metric labels stay bounded whatever a client sends.
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
HEAD_STATE = "head_request"  # the request was a HEAD, answered as its GET
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# JSON, and only UTF-8 JSON (RFC 8259): a charset parameter, if any, must say so.
_JSON_TYPE = re.compile(
    r"^application/(?:[\w.+-]+\+)?json\s*(?:;\s*charset=\"?utf-8\"?\s*)?$", re.IGNORECASE
)


class RequestContextMiddleware:
    """See the module docstring. `allowed_hosts`: host names (fnmatch patterns such as
    `*.example.org`); `*` allows any."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] = ("*",)) -> None:
        self.app = app
        self.allowed_hosts = [h.lower() for h in allowed_hosts]
        self.any_host = "*" in self.allowed_hosts

    def host_allowed(self, headers: dict[bytes, bytes]) -> bool:
        if self.any_host:
            return True
        host = headers.get(b"host", b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Per-request state (the route's session, the tenant for the access line), made
        # here so that the HEAD copy of the scope below shares it.
        state = scope.setdefault("state", {})
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        head = scope["method"] == "HEAD"
        if head:  # answered as the GET it stands for; the body is dropped below
            scope = {**scope, "method": "GET"}
            state[HEAD_STATE] = True  # a route whose GET starts something refuses it

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    (b"cache-control", b"no-store"),
                ]
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            if self.host_allowed(headers):
                await self.app(scope, receive, send_with_id)
            else:
                detail = "this server does not answer for that Host"
                await _send_problem(send_with_id, INVALID_HOST, detail)
        finally:
            await _close_session(state)
            _record(scope, "HEAD" if head else scope["method"], status, started)
            request_id_var.reset(token)


class BodyRules:
    """A request body, whatever the method, is JSON (415 otherwise) of at most
    MAX_BODY_BYTES (413): refused up front by its Content-Length, or as it arrives when
    it has none (chunked)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fhir = scope["path"].startswith("/fhir/")
        json_only = not fhir and scope["path"] not in FORM_PATHS
        refusal = self.refusal(dict(scope["headers"]), json_only=json_only)
        if refusal is not None:
            if fhir:
                kind, detail = refusal
                await operation_outcome(kind.status, "too-costly", detail)(scope, receive, send)
            else:
                await _send_problem(send, *refusal)
            return
        refused = False  # answered 413 here while the app was reading the body
        response_started = False
        received = 0

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the app's own answer to the body it could not read: dropped
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        async def limited_receive() -> Message:
            """The body, until it grows past MAX_BODY_BYTES: then the 413 is sent here,
            and the app is told the client went away, so it stops reading."""
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES and not response_started:
                    refused = True
                    await _send_problem(send, BODY_TOO_LARGE, _too_large())
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited_receive, guarded_send)

    @staticmethod
    def refusal(
        headers: dict[bytes, bytes], *, json_only: bool = True
    ) -> tuple[ProblemKind, str] | None:
        """Why the request's body is refused before any route sees it, or None."""
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return BODY_TOO_LARGE, _too_large()
        has_body = (declared.isdigit() and int(declared) > 0) or b"transfer-encoding" in headers
        if has_body and json_only:
            content_type = headers.get(b"content-type", b"").decode("latin-1").strip()
            if not _JSON_TYPE.match(content_type):
                return UNSUPPORTED_MEDIA_TYPE, "the body must be JSON (application/json)"
        return None


async def _close_session(state: dict[str, Any]) -> None:
    """Close the request's database session (src/api/deps.py), if it made one."""
    session: AsyncSession | None = state.pop(SESSION_STATE, None)
    if session is None or not session.in_transaction():
        return  # the service's statements hold no connection of the session
    try:
        await session.close()
    except Exception:  # its connection is gone; the pool replaces it
        logger.debug("closing the request's session failed", exc_info=True)


# The metrics' series of each (method, route, status) a request has had: looked up once
# (prometheus_client's labels() checks its arguments on every call). Bounded: methods and
# route templates are finite, and so are statuses.
_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    series = _SERIES.get((method, route, status))
    if series is None:
        series = (
            HTTP_REQUESTS.labels(method=method, route=route, status=str(status)),
            HTTP_LATENCY.labels(method=method, route=route),
        )
        _SERIES[(method, route, status)] = series
    return series


def _record(scope: Scope, method: str, status: int, started: float) -> None:
    """The request's metrics and its one access line (route template, ids only)."""
    route = getattr(scope.get("route"), "path", "(unmatched)")
    method = method if method in _METHODS else "OTHER"
    seconds = time.perf_counter() - started
    requests, latency = _series(method, route, status)
    requests.inc()
    latency.observe(seconds)
    organization_id = scope.get("state", {}).get("organization_id", "-")
    duration_ms = round(seconds * 1000, 1)
    # One line, readable in text logs, and its parts as fields in JSON logs.
    logger.info(
        "%s %s status=%d duration_ms=%.1f organization_id=%s",
        method,
        route,
        status,
        duration_ms,
        organization_id,
        extra={
            "event": "http_request",
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "organization_id": organization_id,
        },
    )


def _too_large() -> str:
    return f"request body too large (at most {MAX_BODY_BYTES} bytes)"


async def _send_problem(send: Send, kind: ProblemKind, detail: str) -> None:
    body = problem_body(kind.status, kind.code, kind.title, detail)
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": kind.status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
