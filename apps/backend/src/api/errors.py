"""The one place where errors become HTTP responses.

Every error body is {"error": <code>, "detail": <message>}. Domain errors of the service
layer map by class; nothing a client sends can produce a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from src.services.errors import (
    CareTeamError,
    ConflictError,
    DatabaseError,
    DatabaseUnavailable,
    NotFoundError,
)

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    error: str
    detail: str


class Unauthorized(Exception):
    """Missing, malformed, unknown or revoked API key."""


STATUS_BY_ERROR: list[tuple[type[CareTeamError], int]] = [
    (NotFoundError, 404),
    (ConflictError, 409),
    (DatabaseUnavailable, 503),
    (DatabaseError, 500),
]

# For the OpenAPI schema of every /v1 route.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (401, 404, 409, 422, 503)
}


def error_response(status: int, error: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    """Where and what, never the submitted value (it may be a name or a birth date)."""
    parts = []
    for error in exc.errors()[:10]:
        where = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CareTeamError)
    async def domain_error(request: Request, exc: CareTeamError) -> JSONResponse:
        status = next((code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls)), 500)
        return error_response(status, exc.code, exc.message)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return error_response(
            401,
            "unauthorized",
            "missing, malformed or revoked API key",
            **{"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not parse the body (bad JSON, bad UTF-8)
            return error_response(422, "validation_error", f"malformed request body: {exc.detail}")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return error_response(
            500, "internal_error", "internal error; the request id is in the logs"
        )
