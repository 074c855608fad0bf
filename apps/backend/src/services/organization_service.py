"""Organizations (tenants) and their API keys.

Creating organizations and issuing or revoking keys are operator actions: they run on
an owner session (across tenants). Authenticating a key runs on an application session
and can only go through the database function authenticate_api_key(). A SMART access
token (src/services/smart_service.py) authenticates the same way: it is a row of
api_keys with its client and expiry, and authenticate_api_key() refuses it once expired
or once its client is revoked. Keys are listed, counted and revoked here without them.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.scopes import DEFAULT_KEY_SCOPES, Grants, InvalidScope, parse_scopes
from src.services import credentials
from src.services.credentials import Credential, KnownKey
from src.services.errors import (
    ApiKeyNotFound,
    InvalidArgument,
    OrganizationNotFound,
    PatientNotFound,
    ProviderNotFound,
)
from src.services.transaction import Sql, run_transaction

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "ctk_"
ACCESS_TOKEN_PREFIX = "ctt_"  # a SMART access token (src/services/smart_service.py)

AUTHENTICATE = Sql(
    "SELECT api_key_id, organization_id, scopes, client_id, expires_at "
    "FROM authenticate_api_key($1)",
    "hash",
)
INSERT_ORGANIZATION = Sql("INSERT INTO organizations (name) VALUES ($1) RETURNING id", "name")
ORGANIZATION_EXISTS = Sql("SELECT 1 FROM organizations WHERE id = $1", "org")
INSERT_API_KEY = Sql(
    "INSERT INTO api_keys (organization_id, key_hash, name, scopes) VALUES ($1, $2, $3, $4) "
    "RETURNING id",
    "org",
    "hash",
    "name",
    "scopes",
)
# Revoking is idempotent: a key revoked before keeps its first revoked_at.
REVOKE_API_KEY = Sql(
    """
    WITH target AS (
        SELECT id, organization_id, revoked_at FROM api_keys
        WHERE id = $1 AND client_id IS NULL
        FOR UPDATE
    ), revoked AS (
        UPDATE api_keys AS k SET revoked_at = now()
        FROM target AS t
        WHERE k.id = t.id AND t.revoked_at IS NULL
        RETURNING k.revoked_at
    )
    SELECT t.organization_id,
           coalesce((SELECT revoked_at FROM revoked), t.revoked_at) AS revoked_at,
           t.revoked_at IS NOT NULL AS already_revoked
    FROM target AS t
""",
    "id",
)


# Across tenants (an owner session): the organizations of a patient or a provider id.
ORGANIZATIONS_OF_PATIENT = Sql("SELECT organization_id FROM patients WHERE id = $1", "id")
ORGANIZATIONS_OF_PROVIDER = Sql("SELECT organization_id FROM providers WHERE id = $1", "id")

LIST_ORGANIZATIONS = Sql(
    """
    SELECT o.id, o.name, o.created_at,
           (SELECT count(*) FROM api_keys AS k
            WHERE k.organization_id = o.id AND k.revoked_at IS NULL
              AND k.client_id IS NULL) AS live_keys
    FROM organizations AS o ORDER BY o.created_at, o.id
"""
)
# Never the hash (nor, of course, the key: it is not stored). Access tokens are not keys
# (`careteam client list` shows clients).
LIST_API_KEYS = Sql(
    "SELECT id, name, scopes, created_at, revoked_at FROM api_keys "
    "WHERE organization_id = $1 AND client_id IS NULL ORDER BY created_at, id",
    "org",
)


@dataclass(frozen=True)
class OrganizationRecord:
    id: uuid.UUID
    name: str
    created_at: datetime.datetime
    live_keys: int  # keys not revoked


@dataclass(frozen=True)
class ApiKeyRecord:
    id: uuid.UUID
    name: str | None
    scopes: list[str]
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None


@dataclass(frozen=True)
class IssuedApiKey:
    """A new key. `key` is shown once and never stored; only its hash is."""

    id: uuid.UUID
    organization_id: uuid.UUID
    key: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class RevokedApiKey:
    organization_id: uuid.UUID
    revoked_at: datetime.datetime
    already_revoked: bool  # it had been revoked before: nothing changed


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


_API_KEY_SHAPE = re.compile(
    f"(?:{re.escape(API_KEY_PREFIX)}|{re.escape(ACCESS_TOKEN_PREFIX)})" + r"[A-Za-z0-9_-]{43}"
)


def looks_like_api_key(key: str) -> bool:
    """Cheap shape check before any database work (43 url-safe characters after the
    prefix of a key, or of an access token)."""
    return _API_KEY_SHAPE.fullmatch(key) is not None


def looks_like_access_token(key: str) -> bool:
    return key.startswith(ACCESS_TOKEN_PREFIX) and looks_like_api_key(key)


class OrganizationService:
    """Tenant administration (owner sessions) and key authentication (app sessions)."""

    @staticmethod
    async def create_organization(*, db: AsyncSession, name: str) -> IssuedApiKey:
        """Create an organization and its first API key (DEFAULT_KEY_SCOPES), in one
        transaction."""

        async def work(driver: Any) -> IssuedApiKey:
            org = await INSERT_ORGANIZATION.fetchval(driver, {"name": name})
            return await _issue_key(driver, org, name="initial", scopes=DEFAULT_KEY_SCOPES)

        issued = await run_transaction(db, operation="create_organization", work=work)
        logger.info("organization created organization_id=%s", issued.organization_id)
        return issued

    @staticmethod
    async def create_api_key(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        name: str | None = None,
        scopes: Sequence[str] = DEFAULT_KEY_SCOPES,
    ) -> IssuedApiKey:
        """Issue a new key for the organization with these scopes (SMART v2 or v1
        syntax, stored in v2 form: src/scopes.py). Raises InvalidArgument for a
        malformed scope, OrganizationNotFound."""
        try:
            granted = parse_scopes(scopes)
        except InvalidScope as err:
            raise InvalidArgument(str(err), field="scopes") from err

        async def work(driver: Any) -> IssuedApiKey:
            if not await ORGANIZATION_EXISTS.fetchval(driver, {"org": organization_id}):
                raise OrganizationNotFound(organization_id)
            return await _issue_key(driver, organization_id, name=name, scopes=granted)

        issued = await run_transaction(db, operation="create_api_key", work=work)
        logger.info("api key created organization_id=%s api_key_id=%s", organization_id, issued.id)
        return issued

    @staticmethod
    async def require_organization(*, db: AsyncSession, organization_id: uuid.UUID) -> None:
        """Raises OrganizationNotFound unless the organization exists (owner session)."""

        async def work(driver: Any) -> bool:
            return bool(await ORGANIZATION_EXISTS.fetchval(driver, {"org": organization_id}))

        if not await run_transaction(
            db, operation="require_organization", work=work, read_only=True
        ):
            raise OrganizationNotFound(organization_id)

    @staticmethod
    async def organization_of(
        *,
        db: AsyncSession,
        patient_id: uuid.UUID | None = None,
        provider_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """The organization of a patient or a provider, across tenants (an owner
        session: the CLI finds the tenant of the id an operator gives). Raises
        PatientNotFound / ProviderNotFound, or InvalidArgument if the id is in several."""
        if patient_id is not None and provider_id is None:
            lookup, record_id = ORGANIZATIONS_OF_PATIENT, patient_id
        elif provider_id is not None and patient_id is None:
            lookup, record_id = ORGANIZATIONS_OF_PROVIDER, provider_id
        else:
            raise ValueError("give a patient_id or a provider_id")

        async def work(driver: Any) -> list[uuid.UUID]:
            return [row[0] for row in await lookup.fetch(driver, {"id": record_id})]

        found = await run_transaction(db, operation="organization_of", work=work, read_only=True)
        if not found:
            if patient_id is not None:
                raise PatientNotFound(patient_id)
            raise ProviderNotFound(record_id)
        if len(found) > 1:
            raise InvalidArgument(
                f"{record_id} is in several organizations: give --organization",
                field="organization",
            )
        return found[0]

    @staticmethod
    async def list_organizations(*, db: AsyncSession) -> list[OrganizationRecord]:
        """Every organization, oldest first, with how many live keys it has."""

        async def work(driver: Any) -> list[OrganizationRecord]:
            return [
                OrganizationRecord(**dict(r)) for r in await LIST_ORGANIZATIONS.fetch(driver, {})
            ]

        return await run_transaction(db, operation="list_organizations", work=work, read_only=True)

    @staticmethod
    async def list_api_keys(*, db: AsyncSession, organization_id: uuid.UUID) -> list[ApiKeyRecord]:
        """The organization's keys, oldest first: ids, names, when created and revoked
        (never a secret). Raises OrganizationNotFound."""

        async def work(driver: Any) -> list[ApiKeyRecord]:
            if not await ORGANIZATION_EXISTS.fetchval(driver, {"org": organization_id}):
                raise OrganizationNotFound(organization_id)
            rows = await LIST_API_KEYS.fetch(driver, {"org": organization_id})
            return [ApiKeyRecord(**dict(r)) for r in rows]

        return await run_transaction(db, operation="list_api_keys", work=work, read_only=True)

    @staticmethod
    async def revoke_api_key(*, db: AsyncSession, key_id: uuid.UUID) -> RevokedApiKey:
        """Revoke the key at once. Idempotent: a key revoked before stays revoked since
        then (`already_revoked`). Raises ApiKeyNotFound."""

        async def work(driver: Any) -> RevokedApiKey:
            row = await REVOKE_API_KEY.fetchrow(driver, {"id": key_id})
            if row is None:
                raise ApiKeyNotFound(key_id)
            return RevokedApiKey(**dict(row))

        revoked = await run_transaction(db, operation="revoke_api_key", work=work)
        logger.info(
            "api key revoked organization_id=%s api_key_id=%s already_revoked=%s",
            revoked.organization_id,
            key_id,
            revoked.already_revoked,
        )
        return revoked

    @staticmethod
    def recall(api_key: str) -> Credential | None:
        """The credential of a key this process has seen, without a round trip (not
        `confirmed`: see authenticate); None for any other key."""
        if not looks_like_api_key(api_key):
            return None
        key_hash = hash_api_key(api_key)
        known = credentials.remembered(key_hash)
        if known is None:
            return None
        if known.expired():  # an access token past its expiry: no round trip to refuse it
            credentials.forget(key_hash)
            return None
        return Credential(
            key_hash,
            known.api_key_id,
            known.organization_id,
            grants=known.grants,
            client_id=known.client_id,
        )

    @staticmethod
    async def authenticate(*, db: AsyncSession, api_key: str) -> Credential | None:
        """The credential of a live key, or None (unknown, revoked, malformed).

        A key seen before in this process needs no round trip (its organization never
        changes): its credential is not `confirmed` yet, and the session that acts as it
        (credentials.act_as) checks it in the first statement of each transaction. A key
        looked up now is confirmed by the lookup.
        """
        recalled = OrganizationService.recall(api_key)
        if recalled is not None or not looks_like_api_key(api_key):
            return recalled
        # (A remembered token that expired was forgotten by recall: looked up again
        # below, the database refuses it.)
        key_hash = hash_api_key(api_key)

        async def work(driver: Any) -> KnownKey | None:
            # One statement, one round trip: read-only and without a tenant, it runs
            # without BEGIN or COMMIT.
            row = await AUTHENTICATE.fetchrow(driver, {"hash": key_hash})
            if row is None:
                return None
            return KnownKey(
                row["api_key_id"],
                row["organization_id"],
                Grants(tuple(row["scopes"])),
                client_id=row["client_id"],
                expires_at=row["expires_at"],
            )

        found = await run_transaction(db, operation="authenticate", work=work, read_only=True)
        if found is None:
            return None
        credentials.remember(key_hash, found)
        return Credential(
            key_hash,
            found.api_key_id,
            found.organization_id,
            confirmed=True,
            grants=found.grants,
            client_id=found.client_id,
        )

    @staticmethod
    async def confirm(*, db: AsyncSession, credential: Credential) -> bool:
        """Whether the credential's key is still live (one round trip): then it is
        `confirmed`; if not, the process forgets it."""

        async def work(driver: Any) -> bool:
            row = await AUTHENTICATE.fetchrow(driver, {"hash": credential.key_hash})
            return row is not None and row["organization_id"] == credential.organization_id

        live = await run_transaction(db, operation="authenticate", work=work, read_only=True)
        if live:
            credential.confirmed = True
        else:
            credentials.forget(credential.key_hash)
        return live


async def _issue_key(
    driver: Any, org: uuid.UUID, *, name: str | None, scopes: Sequence[str]
) -> IssuedApiKey:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = await INSERT_API_KEY.fetchval(
        driver, {"org": org, "hash": hash_api_key(key), "name": name, "scopes": list(scopes)}
    )
    return IssuedApiKey(id=key_id, organization_id=org, key=key, scopes=tuple(scopes))
