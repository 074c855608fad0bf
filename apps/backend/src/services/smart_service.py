"""SMART Backend Services (SMART App Launch 2.x, "Backend Services"; the FHIR Bulk Data
IG's authorization): registered clients, and the token endpoint's decision.

A client is registered by an operator (an owner session: `careteam client register`)
with its public keys, or the URL of its JWK Set (src/services/smart_keys.py), and the
scopes it may be granted. It asks for an access token with the client_credentials grant
and a signed client assertion (RFC 7523, SMART's client-confidential-asymmetric
profile); request_token decides, on an application session, in this order:

1. the form: every parameter at most once (RFC 6749 section 3.2), `grant_type`
   client_credentials, `client_assertion_type` jwt-bearer, `client_assertion` and
   `scope` present (invalid_request, unsupported_grant_type);
2. the scopes asked for, each well-formed (invalid_scope);
3. the assertion, as PyJWT reads it: alg RS384 or ES384 only (`none` and HMAC are
   refused before any key is looked at), a `kid`; `iss` = `sub` = a registered, live
   client id (a `client_id` parameter, if sent, the same); a `jku`, if any, equal to the
   client's registered JWKS URL; the signature by one of the client's keys whose kid and
   key type match (each such key is tried: two keys may share a kid); `aud` exactly the
   token URL; `exp` present, not passed, at most MAX_ASSERTION_LIFETIME_S ahead; `iat`
   and `nbf`, if present, not in the future; each of the three a JSON number; `jti`
   present, without a control character; no `crit` header PyJWT does not understand.
   CLOCK_SKEW_S of leeway on every instant. Any failure is invalid_client (SMART:
   "the server SHALL respond with an invalid_client error");
4. the scopes granted: what was asked as far as the registration grants it
   (src/scopes.py, intersect); none is invalid_scope;
5. smart_issue_token: the client still live, the jti never seen for the client while
   its assertion could be valid (a replay is invalid_client), the token stored.

The access token is an opaque random string (`ctt_` and 43 characters), stored only as
a hash, as a row of api_keys with its client, scopes and expiry
(SMART_TOKEN_LIFETIME_S): it authenticates exactly as an API key does
(src/services/organization_service.py), and stops working once expired or once its
client is revoked (revoke_client revokes the client's tokens in the same transaction;
authenticate_api_key v3 also refuses a token of a revoked client). Messages carry ids,
never the assertion.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
    PyJWTError,
)
from sqlalchemy.ext.asyncio import AsyncSession

from src.config import get_settings
from src.scopes import InvalidScope, intersect, parse_scope, parse_scopes
from src.services.errors import (
    InvalidArgument,
    OrganizationNotFound,
    SmartClientNotFound,
    TokenRefused,
)
from src.services.organization_service import (
    ACCESS_TOKEN_PREFIX,
    ORGANIZATION_EXISTS,
    hash_api_key,
)
from src.services.smart_keys import (
    ALGORITHMS,
    KEY_TYPES,
    InvalidJwks,
    JwksCache,
    JwksUnavailable,
    check_jwks,
    check_jwks_url,
)
from src.services.transaction import Sql, run_transaction

logger = logging.getLogger(__name__)

GRANT_TYPE = "client_credentials"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300  # SMART: exp "no more than five minutes in the future"
CLOCK_SKEW_S = 30
MAX_ASSERTION_CHARS = 16 * 1024
MAX_JTI_CHARS = 255
MAX_SCOPE_CHARS = 2048
NAME_MAX = 200

# The OAuth 2.0 error codes this endpoint answers (RFC 6749 section 5.2).
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
INVALID_SCOPE = "invalid_scope"

TOKEN_PARAMETERS = ("grant_type", "client_assertion_type", "client_assertion", "scope")

INSERT_CLIENT = Sql(
    "INSERT INTO smart_clients (organization_id, name, jwks, jwks_url, scopes) "
    "VALUES ($1, $2, $3::jsonb, $4, $5) RETURNING id, created_at",
    "org",
    "name",
    "jwks",
    "jwks_url",
    "scopes",
)
LIST_CLIENTS = Sql(
    "SELECT id, name, jwks_url, scopes, created_at, revoked_at, "
    "coalesce(jsonb_array_length(jwks -> 'keys'), 0) AS keys "
    "FROM smart_clients WHERE organization_id = $1 ORDER BY created_at, id",
    "org",
)
# Revoking is idempotent (a client revoked before keeps its first revoked_at). Two
# statements: the second, with a snapshot taken once the client's row is locked, sees
# every token committed before (smart_issue_token holds the row FOR SHARE).
LOCK_CLIENT = Sql(
    "SELECT organization_id, revoked_at FROM smart_clients WHERE id = $1 FOR UPDATE", "id"
)
REVOKE_CLIENT = Sql(
    "UPDATE smart_clients SET revoked_at = now() "
    "WHERE organization_id = $1 AND id = $2 AND revoked_at IS NULL RETURNING revoked_at",
    "org",
    "id",
)
REVOKE_TOKENS = Sql(
    "UPDATE api_keys SET revoked_at = now() "
    "WHERE organization_id = $1 AND client_id = $2 AND revoked_at IS NULL",
    "org",
    "id",
)
CLIENT_KEYS = Sql(
    "SELECT organization_id, jwks, jwks_url, scopes FROM smart_client_keys($1)", "client"
)
ISSUE_TOKEN = Sql(
    "SELECT outcome, token_id, token_expires_at FROM smart_issue_token($1, $2, $3, $4, $5, $6, $7)",
    "org",
    "client",
    "jti",
    "jti_expires_at",
    "hash",
    "scopes",
    "lifetime_s",
)

INSTANT_CLAIMS = ("exp", "iat", "nbf")
# C0, DEL, C1, and lone surrogates (json.loads makes them of "\ud800"): none is
# meaningful in an id, and PostgreSQL's text refuses NUL (and UTF-8 the surrogates).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SHOWN = 40  # at most this much of a value a client sent is repeated back


@dataclass(frozen=True)
class RegisteredClient:
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    jwks_url: str | None
    scopes: tuple[str, ...]
    created_at: datetime.datetime


@dataclass(frozen=True)
class SmartClientRecord:
    id: uuid.UUID
    name: str
    jwks_url: str | None
    keys: int  # public keys registered (0 when they are fetched from jwks_url)
    scopes: list[str]
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None


@dataclass(frozen=True)
class RevokedClient:
    organization_id: uuid.UUID
    revoked_at: datetime.datetime
    already_revoked: bool
    tokens_revoked: int


@dataclass(frozen=True)
class IssuedToken:
    """An access token: `access_token` is shown once (only its hash is stored)."""

    access_token: str
    token_id: uuid.UUID
    client_id: uuid.UUID
    organization_id: uuid.UUID
    scopes: tuple[str, ...]
    expires_in: int


def _refused(description: str) -> TokenRefused:
    return TokenRefused(INVALID_CLIENT, description)


def _shown(value: object) -> str:
    return repr(str(value)[:SHOWN])


@dataclass(frozen=True)
class ClientRegistration:
    """What a client is registered with, checked (check_registration)."""

    name: str
    scopes: tuple[str, ...]
    jwks: dict[str, Any] | None  # the public keys, as check_jwks keeps them
    jwks_url: str | None


def check_registration(
    *,
    name: str,
    scopes: Sequence[str],
    jwks: Mapping[str, Any] | None,
    jwks_url: str | None,
    jwks_field: str = "jwks",
) -> ClientRegistration:
    """A registration's name (1 to NAME_MAX characters once stripped), its scopes (SMART
    v1 or v2 syntax, stored in v2 form), its public keys or JWKS URL (exactly one;
    check_jwks, check_jwks_url: public RSA 2048+ or EC P-384 keys with a kid, https),
    the same rules for the CLI and HTTP. Raises InvalidArgument naming the field
    (`jwks_field` for the one of the two keys' fields the caller gave)."""
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidArgument(f"a client's name is 1 to {NAME_MAX} characters", field="name")
    if (jwks is None) == (jwks_url is None):
        raise InvalidArgument("give the client's JWKS or its JWKS URL, not both", field="jwks")
    try:
        granted = parse_scopes(scopes)
        keys = None if jwks is None else check_jwks(dict(jwks))
        url = None if jwks_url is None else check_jwks_url(jwks_url)
    except InvalidScope as err:
        raise InvalidArgument(str(err), field="scopes") from err
    except InvalidJwks as err:
        raise InvalidArgument(str(err), field=jwks_field) from err
    return ClientRegistration(name, granted, keys, url)


# One per process: fetched JWK Sets by URL.
JWKS = JwksCache()


class SmartService:
    """Client registration (owner sessions) and the token endpoint (app sessions)."""

    @staticmethod
    async def register_client(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        name: str,
        scopes: Sequence[str],
        jwks: Mapping[str, Any] | None = None,
        jwks_url: str | None = None,
    ) -> RegisteredClient:
        """Register a client with its public keys (`jwks`, a JWK Set) or the URL to
        fetch them from (`jwks_url`), exactly one, and its scopes (SMART v1 or v2
        syntax). Raises InvalidArgument (a malformed scope, name, set or URL),
        OrganizationNotFound."""
        registration = check_registration(name=name, scopes=scopes, jwks=jwks, jwks_url=jwks_url)
        name, granted = registration.name, registration.scopes
        keys, url = registration.jwks, registration.jwks_url

        async def work(driver: Any) -> RegisteredClient:
            if not await ORGANIZATION_EXISTS.fetchval(driver, {"org": organization_id}):
                raise OrganizationNotFound(organization_id)
            row = await INSERT_CLIENT.fetchrow(
                driver,
                {
                    "org": organization_id,
                    "name": name,
                    "jwks": None if keys is None else json.dumps(keys),
                    "jwks_url": url,
                    "scopes": list(granted),
                },
            )
            return RegisteredClient(
                row["id"], organization_id, name, url, granted, row["created_at"]
            )

        client = await run_transaction(db, operation="register_smart_client", work=work)
        logger.info(
            "SMART client registered organization_id=%s client_id=%s",
            organization_id,
            client.id,
        )
        return client

    @staticmethod
    async def list_clients(
        *, db: AsyncSession, organization_id: uuid.UUID
    ) -> list[SmartClientRecord]:
        """The organization's clients, oldest first (never a key). Raises
        OrganizationNotFound."""

        async def work(driver: Any) -> list[SmartClientRecord]:
            if not await ORGANIZATION_EXISTS.fetchval(driver, {"org": organization_id}):
                raise OrganizationNotFound(organization_id)
            rows = await LIST_CLIENTS.fetch(driver, {"org": organization_id})
            return [SmartClientRecord(**dict(r)) for r in rows]

        return await run_transaction(db, operation="list_smart_clients", work=work, read_only=True)

    @staticmethod
    async def revoke_client(*, db: AsyncSession, client_id: uuid.UUID) -> RevokedClient:
        """Revoke the client and every token it holds, in one transaction: they stop
        working at once (the next transaction of a request with one of its tokens is
        refused, in this process or any other). Idempotent. Raises SmartClientNotFound."""

        async def work(driver: Any) -> RevokedClient:
            row = await LOCK_CLIENT.fetchrow(driver, {"id": client_id})
            if row is None:
                raise SmartClientNotFound(client_id)
            org = row["organization_id"]
            params = {"org": org, "id": client_id}
            revoked_now = await REVOKE_CLIENT.fetchval(driver, params)
            status = await driver.execute(REVOKE_TOKENS.text, *REVOKE_TOKENS.args(params))
            return RevokedClient(
                org,
                revoked_now or row["revoked_at"],
                already_revoked=revoked_now is None,
                tokens_revoked=int(status.rsplit(" ", 1)[-1]),
            )

        revoked = await run_transaction(db, operation="revoke_smart_client", work=work)
        logger.info(
            "SMART client revoked organization_id=%s client_id=%s already_revoked=%s "
            "tokens_revoked=%d",
            revoked.organization_id,
            client_id,
            revoked.already_revoked,
            revoked.tokens_revoked,
        )
        return revoked

    @staticmethod
    async def request_token(
        *, db: AsyncSession, form: Sequence[tuple[str, str]], token_url: str
    ) -> IssuedToken:
        """An access token for a client_credentials request whose parameters are `form`
        (as sent, in order), checked as the module docstring says; `token_url` is the
        endpoint's own URL (the assertion's `aud`). Raises TokenRefused."""
        fields = _fields(form)
        asked = _asked_scopes(fields["scope"])
        assertion = fields["client_assertion"]
        header = _header(assertion)
        unverified = _unverified_claims(assertion)
        client_id = _client_of(unverified, fields.get("client_id"))
        _check_claim_types(unverified)
        client = await run_transaction(
            db,
            operation="smart_client_keys",
            work=lambda driver: CLIENT_KEYS.fetchrow(driver, {"client": client_id}),
            read_only=True,
        )
        if client is None:
            raise _refused(f"client {client_id} is not registered, or was revoked")
        claims = await _verified_claims(assertion, header, client, client_id, token_url)
        granted = intersect(asked, client["scopes"])
        if not granted:
            raise TokenRefused(
                INVALID_SCOPE,
                f"none of the scopes asked for is granted to client {client_id} "
                f"(registered: {' '.join(client['scopes'])})",
            )
        return await _issue(db, client["organization_id"], client_id, claims, granted)


def _fields(form: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The parameters, each once; the four SMART needs present and as it says. Others
    are ignored, as RFC 6749 section 3.2 says, but `client_id` (RFC 7521 section 4.2) is
    kept, to be checked against the assertion's `iss`."""
    fields: dict[str, str] = {}
    repeated = []
    for name, value in form:
        if name in fields:
            repeated.append(name)
        fields[name] = value
    if repeated:
        shown = ", ".join(sorted({_shown(n) for n in repeated}))
        raise TokenRefused(INVALID_REQUEST, f"parameter(s) sent more than once: {shown}")
    if "grant_type" not in fields:
        raise TokenRefused(INVALID_REQUEST, "grant_type is missing")
    if fields["grant_type"] != GRANT_TYPE:
        raise TokenRefused(
            UNSUPPORTED_GRANT_TYPE,
            f"grant_type {_shown(fields['grant_type'])} is not supported: only {GRANT_TYPE}",
        )
    missing = [name for name in TOKEN_PARAMETERS if not fields.get(name)]
    if missing:
        raise TokenRefused(INVALID_REQUEST, f"missing or empty: {', '.join(missing)}")
    if fields["client_assertion_type"] != CLIENT_ASSERTION_TYPE:
        raise TokenRefused(
            INVALID_REQUEST, f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
        )
    return fields


def _asked_scopes(text: str) -> tuple[str, ...]:
    """The scopes asked for (space-separated, RFC 6749 section 3.3), in v2 form."""
    if len(text) > MAX_SCOPE_CHARS:
        raise TokenRefused(INVALID_SCOPE, f"scope is longer than {MAX_SCOPE_CHARS} characters")
    try:
        return tuple(parse_scope(scope) for scope in text.split())
    except InvalidScope as err:
        raise TokenRefused(INVALID_SCOPE, str(err)) from err


def _header(assertion: str) -> dict[str, Any]:
    """The assertion's JOSE header, read before anything is trusted: its algorithm one
    of ALGORITHMS (never `none`, never HMAC), its kid named."""
    if len(assertion) > MAX_ASSERTION_CHARS:
        raise _refused(f"client_assertion is longer than {MAX_ASSERTION_CHARS} characters")
    try:
        header = jwt.get_unverified_header(assertion)
    except PyJWTError as err:  # DecodeError; InvalidTokenError for a `crit` it lacks
        raise _refused(
            "client_assertion is not a signed JWT (JWS compact form) this server "
            f"understands ({type(err).__name__})"
        ) from err
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise _refused(
            f"client_assertion alg {_shown(algorithm)} is not accepted: {' or '.join(ALGORITHMS)}"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refused("client_assertion has no kid in its header")
    if header.get("typ", "JWT") != "JWT":
        raise _refused('client_assertion typ must be "JWT"')
    return header


def _unverified_claims(assertion: str) -> dict[str, Any]:
    """The assertion's claims, read before its signature is checked: only to find the
    client and refuse what no key could make acceptable."""
    try:
        claims: dict[str, Any] = jwt.decode(assertion, options={"verify_signature": False})
    except DecodeError as err:
        raise _refused("client_assertion's claims are not a JSON object") from err
    except PyJWTError as err:
        raise _refused(f"client_assertion is not valid ({type(err).__name__})") from err
    return claims


def _client_of(claims: Mapping[str, Any], client_id_parameter: str | None) -> uuid.UUID:
    """The client the assertion claims to be (`iss`, which must equal `sub`): not yet
    trusted, only looked up."""
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or not _CANONICAL_UUID.fullmatch(issuer):
        raise _refused("client_assertion iss must be the client_id this server gave")
    if subject != issuer:
        raise _refused("client_assertion sub must equal its iss (the client_id)")
    if client_id_parameter is not None and client_id_parameter != issuer:
        raise _refused("client_id does not match the client_assertion's iss")
    return uuid.UUID(issuer)


def _check_claim_types(claims: Mapping[str, Any]) -> None:
    """`exp`, `iat` and `nbf`, where present, are JSON numbers (RFC 7519 NumericDate):
    PyJWT reads them with int(), which takes "1765000000" or true as well; and `jti`
    is text PostgreSQL can keep (no control character, no lone surrogate)."""
    for name in INSTANT_CLAIMS:
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _refused(f"client_assertion {name} must be a JSON number (NumericDate)")
    jti = claims.get("jti")
    if isinstance(jti, str) and _CONTROL_CHARACTER.search(jti):
        raise _refused("client_assertion jti must not hold a control character")


async def _client_keys(
    client: Any, header: dict[str, Any], client_id: uuid.UUID
) -> list[dict[str, Any]]:
    """The client's keys that may have signed: same kid, the algorithm's key type (and
    its alg, if the key names one). A URL's set is fetched again once if none does."""
    url = client["jwks_url"]
    jku = header.get("jku")
    if jku is not None and jku != url:
        raise _refused(f"client_assertion jku is not the JWKS URL registered for {client_id}")

    def candidates(jwks: Any) -> list[dict[str, Any]]:
        keys = (json.loads(jwks) if isinstance(jwks, str) else jwks)["keys"]
        return [
            key
            for key in keys
            if key.get("kid") == header["kid"]
            and key.get("kty") == KEY_TYPES[header["alg"]]
            and key.get("alg", header["alg"]) == header["alg"]
        ]

    if url is None:
        found = candidates(client["jwks"])
    else:
        timeout_s = get_settings().smart_jwks_timeout_s
        try:
            found = candidates(await JWKS.keys(url, timeout_s=timeout_s))
            if not found:
                found = candidates(await JWKS.keys(url, timeout_s=timeout_s, refetch=True))
        except JwksUnavailable as err:
            # The reason (a status, an error class, a timeout) stays in the log: told to
            # the client, it would tell whoever registered the URL what answers there.
            logger.warning(
                "SMART client JWKS unavailable organization_id=%s client_id=%s reason=%s",
                client["organization_id"],
                client_id,
                err,
            )
            raise _refused("the client's JWKS URL could not be used") from err
    if not found:
        raise _refused(
            f"client {client_id} has no {KEY_TYPES[header['alg']]} key with kid "
            f"{_shown(header['kid'])} for {header['alg']}"
        )
    return found


async def _verified_claims(
    assertion: str, header: dict[str, Any], client: Any, client_id: uuid.UUID, token_url: str
) -> dict[str, Any]:
    """The assertion's claims once PyJWT has checked its signature with one of the
    client's keys, and the claims SMART requires."""
    algorithm = header["alg"]
    keys = await _client_keys(client, header, client_id)
    claims = None
    for key in keys:
        try:
            verifier = PyJWK(key, algorithm).key
        except (PyJWTError, ValueError, TypeError):
            continue  # a fetched key PyJWT cannot load; another may verify
        try:
            claims = jwt.decode(
                assertion,
                key=verifier,
                algorithms=[algorithm],
                audience=token_url,
                issuer=str(client_id),
                leeway=CLOCK_SKEW_S,
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "strict_aud": True,
                },
            )
            break
        except InvalidSignatureError:
            continue  # two keys may share a kid: try the next
        except ExpiredSignatureError as err:
            raise _refused("client_assertion has expired (exp)") from err
        except ImmatureSignatureError as err:
            raise _refused("client_assertion is not valid yet (iat or nbf in the future)") from err
        except InvalidAudienceError as err:
            raise _refused(f"client_assertion aud must be the token URL, {token_url}") from err
        except MissingRequiredClaimError as err:
            raise _refused(f"client_assertion has no {err.claim} claim") from err
        except (InvalidIssuedAtError, InvalidIssuerError) as err:
            raise _refused(f"client_assertion is not valid: {err}") from err
        except InvalidTokenError as err:
            raise _refused(f"client_assertion is not valid ({type(err).__name__})") from err
    if claims is None:
        raise _refused(
            f"client_assertion's signature does not verify with the key(s) of client "
            f"{client_id} with kid {_shown(header['kid'])}"
        )
    if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S:
        raise _refused(
            f"client_assertion exp is more than {MAX_ASSERTION_LIFETIME_S} seconds ahead"
        )
    jti = claims["jti"]
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_CHARS:
        raise _refused(f"client_assertion jti must be a string of 1 to {MAX_JTI_CHARS} characters")
    return claims


async def _issue(
    db: AsyncSession,
    organization_id: uuid.UUID,
    client_id: uuid.UUID,
    claims: dict[str, Any],
    granted: tuple[str, ...],
) -> IssuedToken:
    token = ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32)
    lifetime_s = get_settings().smart_token_lifetime_s
    # The jti is kept as long as an assertion carrying it could be accepted.
    jti_expires_at = datetime.datetime.fromtimestamp(claims["exp"] + CLOCK_SKEW_S, datetime.UTC)
    params = {
        "org": organization_id,
        "client": client_id,
        "jti": claims["jti"],
        "jti_expires_at": jti_expires_at,
        "hash": hash_api_key(token),
        "scopes": list(granted),
        "lifetime_s": lifetime_s,
    }
    row = await run_transaction(
        db,
        operation="smart_issue_token",
        work=lambda driver: ISSUE_TOKEN.fetchrow(driver, params),
    )
    if row["outcome"] == "client_not_live":
        raise _refused(f"client {client_id} was revoked")
    if row["outcome"] == "jti_replayed":
        logger.warning(
            "SMART client assertion replayed organization_id=%s client_id=%s",
            organization_id,
            client_id,
        )
        raise _refused("client_assertion jti was used before: sign a new assertion")
    logger.info(
        "SMART access token issued organization_id=%s client_id=%s token_id=%s",
        organization_id,
        client_id,
        row["token_id"],
    )
    return IssuedToken(token, row["token_id"], client_id, organization_id, granted, lifetime_s)
