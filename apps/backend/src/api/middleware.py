"""ASGI middleware: request ids, one access line per request, a body size limit."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.log_config import request_id_var
from src.metrics import HTTP_LATENCY, HTTP_REQUESTS

logger = logging.getLogger("src.api.access")

MAX_BODY_BYTES = 64 * 1024
# Metric labels stay bounded whatever a client sends.
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Gives each request an id (X-Request-ID, taken from the client when well-formed),
    puts it on every log line and on the response, logs one access line (route template,
    not the raw path; ids only), and refuses bodies over MAX_BODY_BYTES with 422."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise BodyTooLarge
            return message

        try:
            declared = headers.get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                raise BodyTooLarge
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            if not response_started:
                await _send_json(
                    send_with_id,
                    422,
                    {
                        "error": "validation_error",
                        "detail": f"request body too large (at most {MAX_BODY_BYTES} bytes)",
                    },
                )
        finally:
            route = getattr(scope.get("route"), "path", "(unmatched)")
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            seconds = time.perf_counter() - started
            HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            HTTP_LATENCY.labels(method=method, route=route).observe(seconds)
            logger.info(
                "%s %s status=%d duration_ms=%.1f organization_id=%s",
                scope["method"],
                route,
                status,
                seconds * 1000,
                scope.get("state", {}).get("organization_id", "-"),
            )
            request_id_var.reset(token)


async def _send_json(send: Send, status: int, body: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
