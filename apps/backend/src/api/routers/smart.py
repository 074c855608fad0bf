"""SMART Backend Services over HTTP: the discovery document and the token endpoint.

- `GET /.well-known/smart-configuration` and `GET /fhir/R4/.well-known/smart-configuration`
  (the same document, no credential): what SMART App Launch 2.x asks a server to state,
  with `token_endpoint` an absolute URL built like the FHIR Bundles' (PUBLIC_BASE_URL, or
  the request's scheme and Host).
- `POST /auth/token`: the client_credentials grant with a signed client assertion
  (src/services/smart_service.py decides). Form-encoded (the one body of this API that
  is not JSON: src/api/middleware.py lets it through, 64 KiB at most), parameters in the
  body only. It answers as OAuth 2.0 does, never as a problem: 200 `{access_token,
  token_type: "bearer", expires_in, scope}`, or `{error, error_description}` (RFC 6749
  section 5.2) with 401 for `invalid_client` and 400 for the others. Every answer carries
  `Cache-Control: no-store` (as all of this API's) and `Pragma: no-cache`.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from src.api.deps import database_of
from src.api.middleware import FORM_PATHS
from src.api.routing import public_base
from src.scopes import ADMIN, ALL_TYPES, RESOURCE_TYPES
from src.services.errors import CareTeamError, TokenRefused
from src.services.smart_keys import ALGORITHMS
from src.services.smart_service import (
    CLIENT_ASSERTION_TYPE,
    GRANT_TYPE,
    INVALID_CLIENT,
    INVALID_REQUEST,
    SmartService,
)

TOKEN_PATH = "/auth/token"
assert TOKEN_PATH in FORM_PATHS  # BodyRules lets its form-encoded body through
SMART_CONFIGURATION = "/.well-known/smart-configuration"
FHIR_SMART_CONFIGURATION = "/fhir/R4/.well-known/smart-configuration"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 20
# What a client may ask for: every type, or one, read and search or everything; and the
# administrative scope (a client is granted what its registration allows of it).
SCOPES_SUPPORTED = [
    *(f"system/{t}.{p}" for t in (ALL_TYPES, *RESOURCE_TYPES) for p in ("cruds", "rs")),
    ADMIN,
]

router = APIRouter(tags=["SMART Backend Services"])


class SmartConfiguration(BaseModel):
    """SMART App Launch 2.x discovery (`.well-known/smart-configuration`)."""

    token_endpoint: str = Field(description="The token endpoint's absolute URL.")
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    token_endpoint_auth_signing_alg_values_supported: list[str]
    scopes_supported: list[str]
    capabilities: list[str]


class AccessToken(BaseModel):
    """A granted access token (RFC 6749 section 5.1)."""

    access_token: str = Field(description="Opaque; send it as `Authorization: Bearer ...`.")
    token_type: Literal["bearer"]
    expires_in: int = Field(description="Seconds it lives (at most 300).")
    scope: str = Field(description="The scopes granted, SMART v2, space-separated.")


class OAuthError(BaseModel):
    """A refused token request (RFC 6749 section 5.2)."""

    error: Literal["invalid_request", "invalid_client", "unsupported_grant_type", "invalid_scope"]
    error_description: str


def configuration(request: Request) -> SmartConfiguration:
    return SmartConfiguration(
        token_endpoint=public_base(request) + TOKEN_PATH,
        grant_types_supported=[GRANT_TYPE],
        token_endpoint_auth_methods_supported=["private_key_jwt"],
        token_endpoint_auth_signing_alg_values_supported=list(ALGORITHMS),
        scopes_supported=SCOPES_SUPPORTED,
        capabilities=["client-confidential-asymmetric"],
    )


@router.get(SMART_CONFIGURATION, response_model=SmartConfiguration)
async def get_smart_configuration(request: Request) -> SmartConfiguration:
    """SMART discovery: the token endpoint, the grant, how a client authenticates, the
    scopes (no credential needed)."""
    return configuration(request)


@router.get(FHIR_SMART_CONFIGURATION, response_model=SmartConfiguration)
async def get_fhir_smart_configuration(request: Request) -> SmartConfiguration:
    """The same document, under the FHIR base (where SMART clients look for it)."""
    return configuration(request)


_FORM_SCHEMA = {
    "type": "object",
    "required": ["grant_type", "client_assertion_type", "client_assertion", "scope"],
    "properties": {
        "grant_type": {"type": "string", "enum": [GRANT_TYPE]},
        "client_assertion_type": {"type": "string", "enum": [CLIENT_ASSERTION_TYPE]},
        "client_assertion": {
            "type": "string",
            "description": "A JWT signed with RS384 or ES384 by a key of the client's JWKS "
            "(its kid in the header): iss = sub = client_id, aud = this URL, exp at most 5 "
            "minutes ahead, a jti never used before.",
        },
        "scope": {"type": "string", "description": "SMART scopes, space-separated."},
    },
}


@router.post(
    TOKEN_PATH,
    response_model=AccessToken,
    responses={
        400: {"model": OAuthError, "description": "invalid_request, unsupported_grant_type, "
              "invalid_scope"},
        401: {"model": OAuthError, "description": "invalid_client: the assertion or the "
              "client is refused"},
        413: {"description": "body over 64 KiB (a problem, as for every route)"},
    },
    openapi_extra={
        "requestBody": {"required": True, "content": {FORM_TYPE: {"schema": _FORM_SCHEMA}}}
    },
)  # fmt: skip
async def request_token(request: Request) -> Any:
    """SMART Backend Services: an access token for a client_credentials grant with a
    client assertion (private_key_jwt)."""
    try:
        form = await _form(request)
        async with database_of(request).sessionmaker() as db:
            issued = await SmartService.request_token(
                db=db, form=form, token_url=public_base(request) + TOKEN_PATH
            )
    except TokenRefused as refused:
        status = 401 if refused.error == INVALID_CLIENT else 400
        error = {"error": refused.error, "error_description": refused.message}
        return JSONResponse(error, status_code=status, headers={"Pragma": "no-cache"})
    except CareTeamError:
        raise  # the database busy or away: answered as every route answers it
    body: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "scope": " ".join(issued.scopes),
    }
    return JSONResponse(body, headers={"Pragma": "no-cache"})


async def _form(request: Request) -> list[tuple[str, str]]:
    """The body's parameters as sent (RFC 6749 section 4.4.2: form-encoded, UTF-8)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != FORM_TYPE:
        raise TokenRefused(INVALID_REQUEST, f"the body must be {FORM_TYPE}")
    if request.url.query:
        raise TokenRefused(INVALID_REQUEST, "parameters go in the body, not the URL")
    body = await request.body()
    try:
        return parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=MAX_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError) as err:
        raise TokenRefused(
            INVALID_REQUEST,
            f"the body is not form-encoded UTF-8 (at most {MAX_FIELDS} parameters)",
        ) from err
