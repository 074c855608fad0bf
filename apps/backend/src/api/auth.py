"""Authentication, before anything else answers a request.

Every request to /v1 and to /fhir/R4 (but its CapabilityStatement, /fhir/R4/metadata, and
its SMART configuration) carries exactly one `Authorization: Bearer <api key>`, or a SMART
access token (src/services/smart_service.py), which is checked exactly as a key is. This
pure ASGI middleware checks it before routing, validation or any route answers, so an
unknown or revoked key gets 401 (RFC 6750) before any 400, 404 or 422, on every route:

- no header, another scheme, a key of the wrong shape, an unknown or revoked key: 401
  with `WWW-Authenticate: Bearer`; an access token that is unknown, expired or whose
  client was revoked: 401 with `WWW-Authenticate: Bearer error="invalid_token"`;
- two Authorization headers (an ambiguous credential, which RFC 6750 section 3.1 calls
  invalid_request): 400, and nothing is served as either key;
- a live key without the scope its route needs (src/api/route_scopes.py): 403
  `insufficient_scope`, with `WWW-Authenticate: Bearer error="insufficient_scope",
  scope="<needed>"` (RFC 6750 section 3.1), before validation or existence.

A key this process has seen before is taken from memory without a round trip
(src/services/credentials.py); the request's session then checks it in the first
statement of each transaction. A request whose answer is ready without any statement
having confirmed its key (a 422 from validation, a FHIR search refused for its
parameters) has it checked here before the answer leaves, so a revoked key is refused
on every request. Refusals are problems on /v1 and OperationOutcomes on FHIR.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.api.errors import (
    CREDENTIAL_STATE,
    FHIR_PREFIX,
    INSUFFICIENT_SCOPE,
    INVALID_REQUEST,
    UNAUTHORIZED,
    answer_of,
    operation_outcome,
    problem_response,
)
from src.api.errors import (
    unauthorized as refusal_of,
)
from src.api.route_scopes import required_scope
from src.services.credentials import Credential
from src.services.errors import CareTeamError
from src.services.organization_service import ACCESS_TOKEN_PREFIX, OrganizationService

FHIR_METADATA = "/fhir/R4/metadata"
FHIR_SMART_CONFIGURATION = "/fhir/R4/.well-known/smart-configuration"
# Under the FHIR base, what anyone may read: what the server is, and how to get a token.
FHIR_WITHOUT_KEY = frozenset({FHIR_METADATA, FHIR_SMART_CONFIGURATION})


def needs_key(path: str) -> bool:
    """Whether a request to `path` must carry an API key (or an access token)."""
    if path == "/v1" or path.startswith("/v1/"):
        return True
    return path.startswith(FHIR_PREFIX) and path not in FHIR_WITHOUT_KEY


def credential_of(scope: Scope) -> Credential:
    """The request's credential (set by Authentication before any route runs)."""
    credential: Credential = scope["state"][CREDENTIAL_STATE]
    return credential


def _bearer_challenge(error: str | None = None) -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer" if error is None else f'Bearer error="{error}"'}


def unauthorized(path: str, *, token: bool = False) -> Response:
    """401, as a problem or, on FHIR, an OperationOutcome; for an access token, with
    RFC 6750's error="invalid_token" (src/api/errors.py, unauthorized)."""
    refusal = refusal_of(token=token)
    if path.startswith(FHIR_PREFIX):
        return operation_outcome(401, "login", refusal.detail, refusal.headers)
    return problem_response(
        UNAUTHORIZED.status,
        UNAUTHORIZED.code,
        UNAUTHORIZED.title,
        refusal.detail,
        headers=refusal.headers,
    )


def insufficient_scope(path: str, needed: str, why: str = "this request") -> Response:
    """403: the key is live but its scopes do not grant `needed` (RFC 6750 section 3.1);
    `why`: what needs it, when that is more than the route (a FHIR search's _include)."""
    detail = f"this credential does not have the scope {why} needs: {needed}"
    headers = {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'}
    if path.startswith(FHIR_PREFIX):
        return operation_outcome(403, "forbidden", detail, headers)
    return problem_response(
        INSUFFICIENT_SCOPE.status,
        INSUFFICIENT_SCOPE.code,
        INSUFFICIENT_SCOPE.title,
        detail,
        headers=headers,
    )


def _ambiguous(path: str) -> Response:
    detail = "more than one Authorization header: send exactly one credential"
    headers = _bearer_challenge("invalid_request")
    if path.startswith(FHIR_PREFIX):
        return operation_outcome(400, "security", detail, headers)
    return problem_response(
        INVALID_REQUEST.status, INVALID_REQUEST.code, INVALID_REQUEST.title, detail, headers=headers
    )


def _service_error(path: str, error: CareTeamError) -> Response:
    """The key could not be checked (the database busy or away): as ANSWERS says."""
    answer = answer_of(type(error))
    retry_after = getattr(error, "retry_after_s", None)
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    if path.startswith(FHIR_PREFIX):
        return operation_outcome(answer.status, answer.fhir_issue, error.message, headers)
    return problem_response(answer.status, error.code, error.title, error.message, headers=headers)


class Authentication:
    """See the module docstring. The app's database (`app.state.database`) checks keys."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) > 1:
            await _ambiguous(path)(scope, receive, send)
            return
        try:
            credential = await self._authenticate(scope, given[0] if given else None)
        except CareTeamError as err:
            await _service_error(path, err)(scope, receive, send)
            return
        if credential is None:
            token = bool(given) and _bearer(given[0]).startswith(ACCESS_TOKEN_PREFIX)
            await unauthorized(path, token=token)(scope, receive, send)
            return
        state = scope["state"]
        state[CREDENTIAL_STATE] = credential
        state["organization_id"] = str(credential.organization_id)
        if not credential.confirmed:  # an answer waits for the key to be checked
            send = self._checking_send(scope, receive, send, credential)
        needed = required_scope(scope["method"], path)
        if needed is not None and not credential.grants.allows(needed):
            await insufficient_scope(path, needed)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, header: bytes | None) -> Credential | None:
        key = "" if header is None else _bearer(header)
        if not key:
            return None
        known = OrganizationService.recall(key)  # no round trip for a known key
        if known is not None:
            return known
        async with scope["app"].state.database.sessionmaker() as db:
            return await OrganizationService.authenticate(db=db, api_key=key)

    def _checking_send(
        self, scope: Scope, receive: Receive, send: Send, credential: Credential
    ) -> Send:
        """`send`, but an answer ready before any statement confirmed the key waits for
        the key to be checked, and is replaced by a 401 if the key is no longer live."""
        refused = False

        async def send_checked(message: Message) -> None:
            nonlocal refused
            if refused:
                return  # the route's answer, replaced by the refusal
            if message["type"] == "http.response.start" and not credential.confirmed:
                refusal = await self._refusal(scope, credential)
                if refusal is not None:
                    refused = True
                    await refusal(scope, _nothing, send)
                    return
            await send(message)

        return send_checked

    async def _refusal(self, scope: Scope, credential: Credential) -> Response | None:
        """None if the key is still live; else the answer instead of the route's: 401,
        or the database's error when it cannot say (refused rather than guessed)."""
        try:
            async with scope["app"].state.database.sessionmaker() as db:
                if await OrganizationService.confirm(db=db, credential=credential):
                    return None
        except CareTeamError as err:
            return _service_error(scope["path"], err)
        return unauthorized(scope["path"], token=credential.client_id is not None)


def _bearer(header: bytes) -> str:
    """The credential of an `Authorization: Bearer <credential>` header ("" for any
    other scheme)."""
    scheme, _, key = header.decode("latin-1").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


__all__: list[Any] = ["Authentication", "credential_of", "needs_key"]
