"""The one place where errors become HTTP responses: RFC 9457 problem details.

Every error answer is `application/problem+json`:

    {"type": "urn:careteam:problem:<code>", "title": ..., "status": ..., "detail": ...,
     "instance": "urn:careteam:request:<request_id>", "error": <code>, "request_id": ...}

`error` is the stable machine-readable code (the extension member every earlier client
reads); 422 answers add `errors`, one entry per invalid field. Domain errors of the
service layer map by class; nothing a client sends can produce a stack trace, and no
answer echoes a submitted value (it may be a name or a birth date).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from src.log_config import request_id_var
from src.services.errors import (
    AccessLogUnavailable,
    ApiKeyNotLive,
    CareTeamError,
    ConflictError,
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidArgument,
    NotFoundError,
    OutcomeUnknown,
    PreconditionFailed,
)
from src.values import UUID_RULE

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
FHIR_JSON = "application/fhir+json"
TYPE_PREFIX = "urn:careteam:problem:"
INSTANCE_PREFIX = "urn:careteam:request:"


@dataclass(frozen=True)
class ProblemKind:
    """An error code the API itself answers (not a service error)."""

    code: str
    status: int
    title: str


UNAUTHORIZED = ProblemKind("unauthorized", 401, "Unauthorized")
INSUFFICIENT_SCOPE = ProblemKind("insufficient_scope", 403, "Insufficient scope")
VALIDATION_ERROR = ProblemKind("validation_error", 422, "Invalid request")
NOT_FOUND = ProblemKind("not_found", 404, "Not found")
METHOD_NOT_ALLOWED = ProblemKind("method_not_allowed", 405, "Method not allowed")
BODY_TOO_LARGE = ProblemKind("body_too_large", 413, "Request body too large")
UNSUPPORTED_MEDIA_TYPE = ProblemKind("unsupported_media_type", 415, "Unsupported media type")
HEADERS_TOO_LARGE = ProblemKind("headers_too_large", 431, "Request headers too large")
INVALID_HOST = ProblemKind("invalid_host", 400, "Invalid Host header")
INVALID_REQUEST = ProblemKind("invalid_request", 400, "Ambiguous credentials")
CORS_REFUSED = ProblemKind("cors_refused", 400, "Cross-origin request refused")
INTERNAL_ERROR = ProblemKind("internal_error", 500, "Internal error")


class ApiError(Exception):
    """An error of the HTTP layer itself (authentication, request shape)."""

    def __init__(self, kind: ProblemKind, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.headers = kind, detail, headers or {}


REFUSED_KEY = "missing, malformed or revoked credential: send an API key or a SMART access token"
REFUSED_TOKEN = "unknown, expired or revoked access token"
# Where Authentication (src/api/auth.py) keeps the request's credential.
CREDENTIAL_STATE = "credential"


def unauthorized(*, token: bool = False) -> ApiError:
    """401. For an access token that is no longer live (expired, its client revoked),
    RFC 6750 section 3.1's `invalid_token` (an API key keeps the plain challenge that
    clients of keys have always had)."""
    if token:
        return ApiError(
            UNAUTHORIZED, REFUSED_TOKEN, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    return ApiError(UNAUTHORIZED, REFUSED_KEY, {"WWW-Authenticate": "Bearer"})


def holds_token(scope: Mapping[str, Any]) -> bool:
    """Whether the request authenticated with a SMART access token (not an API key)."""
    credential = scope.get("state", {}).get(CREDENTIAL_STATE)
    return getattr(credential, "client_id", None) is not None


@dataclass(frozen=True)
class Answer:
    """How a service error is answered: its HTTP status (a problem on /v1, an
    OperationOutcome on /fhir/R4), and the OperationOutcome's issue type (FHIR R4
    IssueType)."""

    status: int
    fhir_issue: str


# The one table from service errors to answers, /v1 and FHIR alike: by base class, first
# match wins; any other CareTeamError is a 500.
ANSWERS: list[tuple[type[CareTeamError], Answer]] = [
    (ApiKeyNotLive, Answer(401, "login")),
    (InsufficientScope, Answer(403, "forbidden")),
    (NotFoundError, Answer(404, "not-found")),
    (InvalidArgument, Answer(422, "invalid")),
    (ConflictError, Answer(409, "conflict")),
    (PreconditionFailed, Answer(412, "conflict")),
    (DatabaseBusy, Answer(503, "transient")),
    (DatabaseUnavailable, Answer(503, "transient")),
    (DatabaseError, Answer(500, "exception")),
]
UNEXPECTED = Answer(500, "exception")


def answer_of(error: type[CareTeamError]) -> Answer:
    return next((answer for cls, answer in ANSWERS if issubclass(error, cls)), UNEXPECTED)


def status_of(error: type[CareTeamError]) -> int:
    return answer_of(error).status


# --- the body ----------------------------------------------------------------------------


class FieldProblem(BaseModel):
    """One invalid part of a request."""

    location: str = Field(description="body, path, query or header")
    field: str = Field(description="The field, dotted for nested ones (`body` for the whole)")
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details, with the `error` code as an extension member."""

    type: str = Field(description=f"{TYPE_PREFIX}<error>")
    title: str
    status: int
    detail: str
    instance: str = Field(
        description="This occurrence: urn:careteam:request:<request_id> (never the path, "
        "which could carry what a client put in it)"
    )
    error: str = Field(description="Stable machine-readable code")
    request_id: str = Field(description="Also in the X-Request-ID header and every log line")
    errors: list[FieldProblem] | None = Field(
        default=None, description="On 422: every invalid field"
    )


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: Sequence[dict[str, str]] | None = None,
) -> dict[str, Any]:
    request_id = request_id_var.get()
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": INSTANCE_PREFIX + request_id,
        "error": code,
        "request_id": request_id,
    }
    if errors is not None:
        body["errors"] = list(errors)
    return body


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: Sequence[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    payload = json.dumps(
        problem_body(status, code, title, detail, errors=errors),
        ensure_ascii=False,
    ).encode()
    return Response(payload, status_code=status, headers=headers, media_type=PROBLEM_JSON)


# A union's member names that pydantic puts in an error's loc ("list[IdentifierIn]",
# "function-after[...]", "bool", "none"): a PATCH field is `X | None`, and its errors are
# the client's field, not our type's members. They follow a field's name, never stand
# first (a parameter's or a body member's name, the client's own words, is kept
# whatever it is), and an unknown member's name, last in its loc, is the client's too.
_UNION_MEMBERS = re.compile(r"^(none|str|int|bool|float|date|datetime|uuid)$|[-\[]")


def _location_and_field(loc: Sequence[Any], kind: str) -> tuple[str, str]:
    if not loc:
        return "body", "body"
    where, names = str(loc[0]), list(loc[1:])
    last = len(names) - 1
    parts = [
        part
        for i, part in enumerate(names)
        if i == 0
        or (i == last and kind == "extra_forbidden")
        or not (isinstance(part, str) and _UNION_MEMBERS.search(part))
    ]
    rest = ".".join(str(part) for part in parts)
    return where, rest or where


# pydantic messages that would quote part of the submitted value, in our own words.
_MESSAGES = {
    "uuid_parsing": UUID_RULE,
    "uuid_type": UUID_RULE,
    "json_invalid": "malformed JSON",
}
# A pattern longer than this is not quoted: it says less than the field's description.
_PATTERN_QUOTED_UP_TO = 100


def _message(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    pattern = str((error.get("ctx") or {}).get("pattern", ""))
    if kind == "string_pattern_mismatch" and len(pattern) > _PATTERN_QUOTED_UP_TO:
        return "does not have the form this field's description in /openapi.json states"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def field_problems(exc: RequestValidationError) -> list[dict[str, str]]:
    """Where and what, never the submitted value. A PATCH field's `null` member adds its
    own "Input should be None" to the field's real error: that one is left out."""
    errors = exc.errors()
    real = [e for e in errors if e.get("type") != "none_required"] or errors
    problems = []
    for error in real[:20]:
        message = _message(error)
        if error.get("type") == "json_invalid":  # its loc is a character position
            where, field = "body", "body"
            reason = (error.get("ctx") or {}).get("error")
            message += f": {reason}" if reason else ""
        else:
            where, field = _location_and_field(error.get("loc", ()), str(error.get("type")))
        problems.append({"location": where, "field": field, "detail": message})
    return problems


# --- handlers ------------------------------------------------------------------------------


FHIR_PREFIX = "/fhir/"


def is_fhir(request: Request) -> bool:
    """Whether the request is FHIR's (answered with OperationOutcomes)."""
    return request.url.path.startswith(FHIR_PREFIX)


def _fhir_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Routing's refusals under /fhir/, as OperationOutcomes: a method without a route
    (PROPFIND, TRACE, ...), a path outside /fhir/R4 (/fhir/R5/...)."""
    if exc.status_code == 405:
        return operation_outcome(
            405,
            "not-supported",
            f"{request.method[:16]} is not supported: this FHIR server is read-only "
            "(GET, and POST to _search)",
            {"Allow": "GET, HEAD"},
        )
    if exc.status_code == 404:
        return operation_outcome(
            404, "not-found", "not a FHIR path this server serves: its FHIR base is /fhir/R4"
        )
    return operation_outcome(exc.status_code, "processing", str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CareTeamError)
    async def domain_error(request: Request, exc: CareTeamError) -> Response:
        answer = answer_of(type(exc))
        status = answer.status
        headers = {}
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        message = exc.message
        if isinstance(exc, ApiKeyNotLive):
            refusal = unauthorized(token=holds_token(request.scope))
            headers.update(refusal.headers)
            message = refusal.detail
        if isinstance(exc, InsufficientScope):  # as src/api/auth.py answers it
            headers["WWW-Authenticate"] = f'Bearer error="insufficient_scope", scope="{exc.scope}"'
        if is_fhir(request):
            return operation_outcome(status, answer.fhir_issue, message, headers)
        errors = None
        if isinstance(exc, InvalidArgument):
            errors = [{"location": exc.location, "field": exc.field, "detail": exc.message}]
        return problem_response(
            status,
            exc.code,
            exc.title,
            message,
            errors=errors,
            headers=headers,
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        kind = exc.kind
        return problem_response(
            kind.status,
            kind.code,
            kind.title,
            exc.detail,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        problems = field_problems(exc)
        detail = "; ".join(
            f"{p['location']}: {p['detail']}"
            if p["field"] == p["location"]
            else f"{p['location']}.{p['field']}: {p['detail']}"
            for p in problems
        )
        return problem_response(
            422,
            VALIDATION_ERROR.code,
            VALIDATION_ERROR.title,
            detail or "invalid request",
            errors=problems,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI could not parse the body (bad JSON, bad UTF-8)
            return problem_response(
                422,
                VALIDATION_ERROR.code,
                VALIDATION_ERROR.title,
                f"malformed request body: {exc.detail}",
                errors=[{"location": "body", "field": "body", "detail": "malformed JSON"}],
            )
        if is_fhir(request):
            return _fhir_http_error(request, exc)
        if exc.status_code == 405:
            allow = allowed_methods(request.app, request.scope)
            return problem_response(
                405,
                METHOD_NOT_ALLOWED.code,
                METHOD_NOT_ALLOWED.title,
                f"{request.method} is not allowed here; allowed: {allow}",
                headers={"Allow": allow},
            )
        if exc.status_code == 404:
            return problem_response(404, NOT_FOUND.code, NOT_FOUND.title, "no such path")
        if exc.status_code == UNSUPPORTED_MEDIA_TYPE.status:
            kind = UNSUPPORTED_MEDIA_TYPE
            return problem_response(kind.status, kind.code, kind.title, str(exc.detail))
        return problem_response(
            exc.status_code,
            "http_error",
            str(exc.detail),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.error("unhandled %s", type(exc).__name__, exc_info=exc)
        if is_fhir(request):
            return operation_outcome(
                500, "exception", "internal error; the request id is in the logs"
            )
        return problem_response(
            500,
            INTERNAL_ERROR.code,
            INTERNAL_ERROR.title,
            "internal error; the request id is in the logs",
        )


def operation_outcome(
    status: int, issue: str, diagnostics: str, headers: dict[str, str] | None = None
) -> Response:
    """A FHIR OperationOutcome with one error issue (`issue`: its IssueType code)."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue, "diagnostics": diagnostics}],
    }
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status_code=status, headers=headers, media_type=FHIR_JSON)


def allowed_methods(app: Any, scope: MutableMapping[str, Any]) -> str:
    """The methods of every route whose path matches (HEAD wherever GET is)."""
    path = scope["path"]
    methods: set[str] = set()
    for context in iter_route_contexts(app.router.routes):
        template = context.path
        if template is None or not context.methods:
            continue
        if compile_path(template)[0].match(path):
            methods |= set(context.methods)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


# --- the OpenAPI document ---------------------------------------------------------------------

_DESCRIPTIONS = {
    400: "The Host header is not one this server answers for (ALLOWED_HOSTS), or the "
    "request carries more than one Authorization header",
    401: "Missing, malformed or revoked credential (an API key or a SMART access token)",
    404: "Not found (or another organization's: the two are indistinguishable)",
    409: "Conflicts with the current state",
    412: "If-Match names a version that is no longer current: nothing changed",
    413: "Request body too large",
    415: "A body, whatever the method, must be JSON (Content-Type: application/json)",
    422: "Invalid request; `errors` lists every invalid field",
    431: "Request headers too large",
    503: "Retry after the number of seconds in Retry-After",
}


Answerable = type[CareTeamError] | ProblemKind


def _code_and_status(error: Answerable) -> tuple[str, int]:
    if isinstance(error, ProblemKind):
        return error.code, error.status
    return error.code, status_of(error)


# What any request can be answered, whatever its operation: a body over the limit is 413
# even on a GET, and a Host outside ALLOWED_HOSTS is 400.
# A body that is not JSON is 415 whatever the method.
EVERY_REQUEST: tuple[Answerable, ...] = (
    VALIDATION_ERROR,
    HEADERS_TOO_LARGE,
    BODY_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    INVALID_HOST,
)
AUTHENTICATED: tuple[Answerable, ...] = (
    UNAUTHORIZED,
    INSUFFICIENT_SCOPE,
    INVALID_REQUEST,
    DatabaseBusy,
    DatabaseUnavailable,
    AccessLogUnavailable,  # a route that touches patient data (src/api/access_log.py)
)
WRITES: tuple[Answerable, ...] = (OutcomeUnknown, IdempotencyKeyReused, IdempotencyKeyInProgress)


def problem_responses(
    *errors: Answerable, body: bool = False, authenticated: bool = True
) -> dict[int | str, Any]:
    """The `responses` of an operation: each status it can answer with a problem, and the
    error codes of that status as an enum."""
    answered: Iterable[Answerable] = (
        *EVERY_REQUEST,
        *(AUTHENTICATED if authenticated else ()),
        *errors,
    )
    if body:
        answered = (*answered, *WRITES)
    codes: dict[int, list[str]] = defaultdict(list)
    for error in answered:
        code, status = _code_and_status(error)
        if code not in codes[status]:
            codes[status].append(code)
    responses: dict[int | str, Any] = {}
    for status in sorted(codes):
        schema = {
            "allOf": [
                {"$ref": "#/components/schemas/Problem"},
                {"type": "object", "properties": {"error": {"enum": sorted(codes[status])}}},
            ]
        }
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        if status == 503:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}
            }
        if status == 403:
            response["headers"] = {
                "WWW-Authenticate": {
                    "schema": {"type": "string"},
                    "description": 'Bearer error="insufficient_scope", scope="<the scope needed>"',
                }
            }
        responses[status] = response
    return responses


# A 201's Location header, as the OpenAPI document states it.
CREATED_HEADERS = {
    "headers": {
        "Location": {
            "description": "The path of what was created (or, for a member, of the team)",
            "schema": {"type": "string"},
        },
        "ETag": {"schema": {"type": "string"}},
    }
}


def links(**targets: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI links from a response to the operations its ids feed (stateful clients and
    fuzzers follow them): `Name={"operationId": ..., "parameters": {...}}`."""
    return {"links": targets}


def link(operation_id: str, **parameters: str) -> dict[str, Any]:
    """A link to `operation_id` whose parameters come from this response's body
    (`patient_id="id"` passes the body's `id` as `patient_id`); a parameter named
    `body_<field>` goes into the target's request body."""
    definition: dict[str, Any] = {"operationId": operation_id}
    for name, field in parameters.items():
        expression = f"$response.body#/{field}"
        if name.startswith("body_"):
            definition.setdefault("requestBody", {})[name.removeprefix("body_")] = expression
        else:
            definition.setdefault("parameters", {})[name] = expression
    return definition
