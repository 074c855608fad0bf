"""The API key (or SMART access token) a session acts as, and the process's memory of
the keys and tokens it has seen.

A key's organization never changes, so the process remembers it after the key's first
use (`remembered`, `remember`), and a request with a known key needs no round trip of
its own to authenticate. Whether the key is still live is what can change: so a
session that acts as a key (`act_as`) has every transaction the service runs on it
begin with careteam_enter(org, key hash), which checks it in the same round trip as
BEGIN and the tenant; a revoked key fails there (ApiKeyNotLive) and is forgotten. The
credential records that a statement confirmed it (`confirmed`), so the HTTP layer knows
whether a request that ends without reaching the database still has to check its key
(src/api/auth.py).

A SMART access token (src/services/smart_service.py) is a credential of the same kind:
a row of api_keys, stored as a hash, with its client (`client_id`) and when it expires
(`expires_at`). The memory refuses a token once it has expired without a round trip;
whether it is still live (not expired, its client not revoked) is checked by the same
statement as a key's, in every transaction.

A session without a credential (the CLI, scripts, tests calling the service) checks
nothing beyond the tenant.
"""

from __future__ import annotations

import datetime
import re
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from src.scopes import Grants

NO_SCOPES = Grants(())  # a credential made without scopes may do nothing over HTTP

# Beyond this many keys the memory starts over (keys are checked in every transaction
# anyway; forgetting one costs its next request one round trip).
MAX_REMEMBERED = 10_000
_SESSION_INFO = "careteam_credential"
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KnownKey:
    """What never changes about a key: its id, its organization and its scopes (a key's
    scopes are set when it is made; to change them, make another key); for an access
    token, its SMART client and when it expires as well."""

    api_key_id: uuid.UUID
    organization_id: uuid.UUID
    grants: Grants = NO_SCOPES
    client_id: uuid.UUID | None = None
    expires_at: datetime.datetime | None = None

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.datetime.now(
            datetime.UTC
        )


@dataclass
class Credential:
    """An API key (or access token) a session acts as. `confirmed`: a statement of this
    request found it live (set by the service's transaction layer). `grants`: what its
    scopes allow (checked by the HTTP layer, src/api/auth.py; the service checks none).
    `client_id`: the SMART client an access token was issued to (None for an API key);
    `api_key_id` is then the token's own id."""

    key_hash: str
    api_key_id: uuid.UUID
    organization_id: uuid.UUID
    confirmed: bool = False
    grants: Grants = NO_SCOPES
    # The SMART client whose access token this is (None for a plain API key): the access
    # log records it (src/api/access_log.py).
    client_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        # It is inlined into SQL (src/services/transaction.py): hex digits only.
        if not _HEX.fullmatch(self.key_hash):
            raise ValueError("an API key hash is 64 hex digits")

    @property
    def actor(self) -> str:
        """Who the records name: the key, or the SMART client of a token (its tokens
        come and go; the client is who acted)."""
        if self.client_id is not None:
            return f"smart_client:{self.client_id}"
        return f"api_key:{self.api_key_id}"


_remembered: dict[str, KnownKey] = {}


def remembered(key_hash: str) -> KnownKey | None:
    return _remembered.get(key_hash)


def remember(key_hash: str, known: KnownKey) -> None:
    if len(_remembered) >= MAX_REMEMBERED:
        _remembered.clear()
    _remembered[key_hash] = known


def forget(key_hash: str) -> None:
    _remembered.pop(key_hash, None)


def act_as(db: AsyncSession, credential: Credential) -> AsyncSession:
    """Every transaction the service runs on `db` from now on checks `credential`."""
    db.info[_SESSION_INFO] = credential
    return db


def of_session(db: AsyncSession) -> Credential | None:
    """The credential `db` acts as, if any."""
    credential: Credential | None = db.info.get(_SESSION_INFO)
    return credential
