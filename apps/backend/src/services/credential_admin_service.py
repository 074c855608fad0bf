"""An organization's administrator manages its own API keys and SMART clients: issue,
list and revoke keys; register, list and revoke clients (the HTTP routes of /v1/api-keys
and /v1/clients).

Every method runs on an application session acting as the caller's credential
(credentials.act_as): a transaction whose first statement checks that credential for the
organization (careteam_enter), then one SECURITY DEFINER function, which checks again,
inside PostgreSQL, that the caller is live for the organization and holds careteam/admin
(careteam_admin_caller: ApiKeyNotLive, InsufficientScope), and is the application role's
only way to api_keys and smart_clients. The HTTP layer refuses a caller without the scope
first (src/api/route_scopes.py); the database's check is the same rule once more, for
any other way in.

An administrator may issue a key with any scopes, careteam/admin included (it is the
organization's administrator: it could register a client with the scope, or revoke every
other key, anyway), may revoke its own key (the revocation commits, then that key is
refused), and sees or touches only its organization's keys and clients: another
organization's id, an access token's id and an id that names nothing are one and the
same ApiKeyNotFound / SmartClientNotFound. The owner-session operations the CLI runs
are src/services/organization_service.py and src/services/smart_service.py. Logs carry
ids only.
"""

from __future__ import annotations

import datetime
import json
import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.config import get_settings
from src.scopes import DEFAULT_KEY_SCOPES, InvalidScope, parse_scopes
from src.services.errors import (
    ApiKeyNotFound,
    ApiKeyNotLive,
    InvalidArgument,
    SmartClientNotFound,
    page_limit,
)
from src.services.organization_service import (
    API_KEY_PREFIX,
    ApiKeyRecord,
    IssuedApiKey,
    RevokedApiKey,
    hash_api_key,
)
from src.services.smart_keys import InvalidJwks, check_public_jwks_url
from src.services.smart_service import (
    RegisteredClient,
    RevokedClient,
    SmartClientRecord,
    check_registration,
)
from src.services.transaction import Sql, key_hash_of, run_transaction

logger = logging.getLogger(__name__)

MAX_PAGE = 200

ISSUE_KEY = Sql(
    "SELECT id, created_at FROM careteam_admin_issue_key($1, $2, $3, $4, $5)",
    "org",
    "caller",
    "hash",
    "name",
    "scopes",
)
LIST_KEYS = Sql(
    "SELECT id, name, scopes, created_at, revoked_at FROM careteam_admin_keys($1, $2, $3, $4, $5)",
    "org",
    "caller",
    "after_created_at",
    "after_id",
    "limit",
)
REVOKE_KEY = Sql(
    "SELECT revoked_at, already_revoked FROM careteam_admin_revoke_key($1, $2, $3)",
    "org",
    "caller",
    "id",
)
REGISTER_CLIENT = Sql(
    "SELECT id, created_at FROM careteam_admin_register_client($1, $2, $3, $4::jsonb, $5, $6)",
    "org",
    "caller",
    "name",
    "jwks",
    "jwks_url",
    "scopes",
)
LIST_CLIENTS = Sql(
    "SELECT id, name, jwks_url, keys, scopes, created_at, revoked_at "
    "FROM careteam_admin_clients($1, $2, $3, $4, $5)",
    "org",
    "caller",
    "after_created_at",
    "after_id",
    "limit",
)
REVOKE_CLIENT = Sql(
    "SELECT revoked_at, already_revoked, tokens_revoked "
    "FROM careteam_admin_revoke_client($1, $2, $3)",
    "org",
    "caller",
    "id",
)

# A list's position: the last item's (created_at, id), both lists being in that order.
Position = tuple[datetime.datetime, uuid.UUID]


@dataclass(frozen=True)
class IssuedKey(IssuedApiKey):
    """A key issued over HTTP: as the CLI's, with its name and when it was made."""

    name: str | None = None
    created_at: datetime.datetime | None = None


def _caller(db: AsyncSession) -> str:
    """The caller's credential, as the database functions take it (its hash). A session
    acting as no credential is refused, as a revoked one is: management is an
    administrator's act, never anonymous."""
    key_hash = key_hash_of(db)
    if key_hash is None:
        raise ApiKeyNotLive()
    return key_hash


def _after(after: Position | None) -> dict[str, Any]:
    created_at, last_id = after if after is not None else (None, None)
    return {"after_created_at": created_at, "after_id": last_id}


class CredentialAdminService:
    """Keys and clients, managed by the organization's administrator (app sessions that
    act as a credential holding careteam/admin). See the module docstring."""

    @staticmethod
    async def issue_key(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        name: str | None = None,
        scopes: Sequence[str] = DEFAULT_KEY_SCOPES,
    ) -> IssuedKey:
        """A new key of the organization with these scopes (SMART v1 or v2 syntax, or
        careteam/admin; stored in v2 form), shown once: only its hash is stored. Raises
        InvalidArgument (a malformed scope), InsufficientScope, ApiKeyNotLive."""
        try:
            granted = parse_scopes(scopes)
        except InvalidScope as err:
            raise InvalidArgument(str(err), field="scopes") from err
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        params = {
            "org": organization_id,
            "caller": _caller(db),
            "hash": hash_api_key(key),
            "name": name,
            "scopes": list(granted),
        }
        row = await run_transaction(
            db,
            operation="admin_issue_key",
            organization_id=organization_id,
            work=lambda driver: ISSUE_KEY.fetchrow(driver, params),
        )
        logger.info("api key created organization_id=%s api_key_id=%s", organization_id, row["id"])
        return IssuedKey(
            id=row["id"],
            organization_id=organization_id,
            key=key,
            scopes=granted,
            name=name,
            created_at=row["created_at"],
        )

    @staticmethod
    async def list_keys(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        limit: int,
        after: Position | None = None,
    ) -> list[ApiKeyRecord]:
        """Up to `limit` of the organization's API keys after `after` (the last one's
        created_at and id), oldest first: never a hash, never an access token. Raises
        InvalidArgument (limit), InsufficientScope, ApiKeyNotLive."""
        params = {
            "org": organization_id,
            "caller": _caller(db),
            "limit": page_limit(limit, MAX_PAGE + 1),
            **_after(after),
        }

        async def work(driver: Any) -> list[ApiKeyRecord]:
            return [ApiKeyRecord(**dict(r)) for r in await LIST_KEYS.fetch(driver, params)]

        return await run_transaction(
            db,
            operation="admin_list_keys",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def revoke_key(
        *, db: AsyncSession, organization_id: uuid.UUID, key_id: uuid.UUID
    ) -> RevokedApiKey:
        """Revoke one of the organization's keys at once (the caller's own included).
        Idempotent: a key revoked before stays revoked since then (`already_revoked`).
        Raises ApiKeyNotFound (another organization's key, a token's id, or none),
        InsufficientScope, ApiKeyNotLive."""
        params = {"org": organization_id, "caller": _caller(db), "id": key_id}
        row = await run_transaction(
            db,
            operation="admin_revoke_key",
            organization_id=organization_id,
            work=lambda driver: REVOKE_KEY.fetchrow(driver, params),
        )
        if row is None:
            raise ApiKeyNotFound(key_id)
        logger.info(
            "api key revoked organization_id=%s api_key_id=%s already_revoked=%s",
            organization_id,
            key_id,
            row["already_revoked"],
        )
        return RevokedApiKey(organization_id, row["revoked_at"], row["already_revoked"])

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
        """Register a SMART client of the organization, as `careteam client register`
        does and by its rules (smart_service.check_registration: public keys only), and
        a JWKS URL held to more: https to a public host only (smart_keys.
        check_public_jwks_url: an administrator is a tenant, who must not make this
        server reach the operator's network). Raises InvalidArgument, InsufficientScope,
        ApiKeyNotLive."""
        registration = check_registration(
            name=name,
            scopes=scopes,
            jwks=jwks,
            jwks_url=jwks_url,
            jwks_field="jwks" if jwks is not None else "jwks_url",
        )
        if registration.jwks_url is not None:
            try:
                await check_public_jwks_url(
                    registration.jwks_url, timeout_s=get_settings().smart_jwks_timeout_s
                )
            except InvalidJwks as err:
                raise InvalidArgument(str(err), field="jwks_url") from err
        params = {
            "org": organization_id,
            "caller": _caller(db),
            "name": registration.name,
            "jwks": None if registration.jwks is None else json.dumps(registration.jwks),
            "jwks_url": registration.jwks_url,
            "scopes": list(registration.scopes),
        }
        row = await run_transaction(
            db,
            operation="admin_register_client",
            organization_id=organization_id,
            work=lambda driver: REGISTER_CLIENT.fetchrow(driver, params),
        )
        logger.info(
            "SMART client registered organization_id=%s client_id=%s", organization_id, row["id"]
        )
        return RegisteredClient(
            row["id"],
            organization_id,
            registration.name,
            registration.jwks_url,
            registration.scopes,
            row["created_at"],
        )

    @staticmethod
    async def list_clients(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        limit: int,
        after: Position | None = None,
    ) -> list[SmartClientRecord]:
        """Up to `limit` of the organization's SMART clients after `after`, oldest
        first (never a key). Raises InvalidArgument (limit), InsufficientScope,
        ApiKeyNotLive."""
        params = {
            "org": organization_id,
            "caller": _caller(db),
            "limit": page_limit(limit, MAX_PAGE + 1),
            **_after(after),
        }

        async def work(driver: Any) -> list[SmartClientRecord]:
            return [SmartClientRecord(**dict(r)) for r in await LIST_CLIENTS.fetch(driver, params)]

        return await run_transaction(
            db,
            operation="admin_list_clients",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def revoke_client(
        *, db: AsyncSession, organization_id: uuid.UUID, client_id: uuid.UUID
    ) -> RevokedClient:
        """Revoke one of the organization's clients and every token it holds, in one
        transaction: they stop working at once, in every process. Idempotent. Raises
        SmartClientNotFound (another organization's client, or none), InsufficientScope,
        ApiKeyNotLive."""
        params = {"org": organization_id, "caller": _caller(db), "id": client_id}
        row = await run_transaction(
            db,
            operation="admin_revoke_client",
            organization_id=organization_id,
            work=lambda driver: REVOKE_CLIENT.fetchrow(driver, params),
        )
        if row is None:
            raise SmartClientNotFound(client_id)
        revoked = RevokedClient(
            organization_id,
            row["revoked_at"],
            already_revoked=row["already_revoked"],
            tokens_revoked=row["tokens_revoked"],
        )
        logger.info(
            "SMART client revoked organization_id=%s client_id=%s already_revoked=%s "
            "tokens_revoked=%d",
            organization_id,
            client_id,
            revoked.already_revoked,
            revoked.tokens_revoked,
        )
        return revoked
