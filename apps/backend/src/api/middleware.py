"""ASGI middleware: what every request goes through before and after its route.

- a request id (X-Request-ID, the client's when well-formed) on the response and on
  every log line of the request;
- the Host header checked against ALLOWED_HOSTS;
- bodies: at most MAX_BODY_BYTES (413), and JSON only (415);
- HEAD answered like GET, without the body, on every GET route;
- `Cache-Control: no-store` on every answer (they carry patient data);
- one access line and the request metrics (route template, never the raw path).
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
    problem_body,
)
from src.log_config import request_id_var
from src.metrics import HTTP_LATENCY, HTTP_REQUESTS
from src.services import request_key

logger = logging.getLogger("src.api.access")

MAX_BODY_BYTES = 64 * 1024
# Metric labels stay bounded whatever a client sends.
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# JSON, and only UTF-8 JSON (RFC 8259): a charset parameter, if any, must say so.
_JSON_TYPE = re.compile(
    r"^application/(?:[\w.+-]+\+)?json\s*(?:;\s*charset=\"?utf-8\"?\s*)?$", re.IGNORECASE
)
_WITH_BODY = {"POST", "PUT", "PATCH"}


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
        key_token = request_key.use(None)  # the key this request authenticates with, if any
        started = time.perf_counter()
        status = 500
        response_started = False
        head = scope["method"] == "HEAD"
        if head:  # answered as the GET it stands for; the body is dropped below
            scope = {**scope, "method": "GET"}

        refused_body = False  # answered 413 here while the app was reading the body

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            ours = message.pop("careteam_refusal", False)
            if refused_body and not ours:
                return  # the app's own answer to the body it could not read: dropped
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    (b"cache-control", b"no-store"),
                ]
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            """The body, until it grows past MAX_BODY_BYTES (a chunked body has no length
            to refuse it by up front): then the 413 is sent here, and the app is told
            the client went away, so it stops reading."""
            nonlocal received, refused_body
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES and not response_started:
                    await _send_problem(
                        send_with_id, scope, BODY_TOO_LARGE, _too_large(), refusal=True
                    )
                    refused_body = True
                    return {"type": "http.disconnect"}
            return message

        try:
            refusal = self.refusal(scope, headers)
            if refusal is not None:
                await _send_problem(send_with_id, scope, *refusal)
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            await _close_session(state)
            _record(scope, "HEAD" if head else scope["method"], status, started)
            request_key.reset(key_token)
            request_id_var.reset(token)

    def refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[ProblemKind, str] | None:
        """Why the request is refused before any route sees it, or None."""
        if not self.host_allowed(headers):
            return INVALID_HOST, "this server does not answer for that Host"
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return BODY_TOO_LARGE, _too_large()
        has_body = (declared.isdigit() and int(declared) > 0) or b"transfer-encoding" in headers
        if scope["method"] in _WITH_BODY and has_body:
            content_type = headers.get(b"content-type", b"").decode("latin-1").strip()
            if not _JSON_TYPE.match(content_type):
                return UNSUPPORTED_MEDIA_TYPE, "the body must be JSON (application/json)"
        return None


async def _close_session(state: dict[str, Any]) -> None:
    """Close the request's database session (src/api/deps.py), if it made one."""
    session: AsyncSession | None = state.pop(SESSION_STATE, None)
    if session is None:
        return
    try:
        await session.close()
    except Exception:  # its connection is gone; the pool replaces it
        logger.debug("closing the request's session failed", exc_info=True)


def _record(scope: Scope, method: str, status: int, started: float) -> None:
    """The request's metrics and its one access line (route template, ids only)."""
    route = getattr(scope.get("route"), "path", "(unmatched)")
    method = method if method in _METHODS else "OTHER"
    seconds = time.perf_counter() - started
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_LATENCY.labels(method=method, route=route).observe(seconds)
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


async def _send_problem(
    send: Send, scope: Scope, kind: ProblemKind, detail: str, *, refusal: bool = False
) -> None:
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
            "careteam_refusal": refusal,
        }
    )
    await send({"type": "http.response.body", "body": payload, "careteam_refusal": refusal})
