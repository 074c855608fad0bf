"""The API key the current request authenticated with.

A key's organization never changes, so the process remembers it after the key's first
use (`remembered`, `remember`) and a request with a known key needs no round trip of
its own to authenticate. Whether the key is still live is what can change: so every
transaction the request then runs begins with careteam_enter(org, key hash) (migration
20261206_one_round_trip), which checks it in the same round trip as BEGIN and the
tenant, and a revoked key fails its very next request (ApiKeyNotLive, then forgotten).

`use` marks the key for the request's transactions (a context variable, like the
request id); without one (the CLI, scripts, tests calling the service) nothing is
checked beyond the tenant.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass

# Beyond this many keys the memory starts over (keys are checked in every transaction
# anyway; forgetting one costs its next request one round trip).
MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class Authenticated:
    api_key_id: uuid.UUID
    organization_id: uuid.UUID


_remembered: dict[str, Authenticated] = {}
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "careteam_request_key", default=None
)


def remembered(key_hash: str) -> Authenticated | None:
    return _remembered.get(key_hash)


def remember(key_hash: str, found: Authenticated) -> None:
    if len(_remembered) >= MAX_REMEMBERED:
        _remembered.clear()
    _remembered[key_hash] = found


def forget(key_hash: str) -> None:
    _remembered.pop(key_hash, None)


def use(key_hash: str | None) -> contextvars.Token[str | None]:
    """The request's transactions check this key (None: none). Returns the token to
    reset with when the request ends."""
    return _current.set(key_hash)


def reset(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)


def current() -> str | None:
    return _current.get()
