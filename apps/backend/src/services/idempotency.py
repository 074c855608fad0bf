"""Idempotency keys: a write sent again with the key it was first sent with gets the
first result, and runs once.

The caller passes the key as an explicit parameter (IdempotencyKey: the key, and the
fingerprint of the request it came with). The database's code does the rest, the same
way for every write (sql/functions/careteam_claim_key, careteam_store_result):

- The key is claimed first in the write's own transaction, and the write's result (the
  service's own result, as JSON) stored last: the change and its result commit together,
  or neither does. A care team change does both inside its one statement
  (careteam_change_team); any other write in its explicit transaction (`once`).
- A request that finds its key holding a result gets that result (`replayed` is set) and
  runs nothing. Concurrent requests with one key run once: the second waits on the
  first's claim, then gets its result.
- The same key with another request (another fingerprint) is IdempotencyKeyReused.
- A write whose COMMIT's answer was lost is simply run again: its claim finds its own
  stored result if it committed, and runs it if it did not.
- An operation of several transactions (a panel transfer) claims its key in a
  transaction of its own, owned by its session through an advisory lock held as long
  as the operation runs (`claim_owned`), and stores its result in its last one
  (`store_owned`). A retry meanwhile is IdempotencyKeyInProgress; once the owner's
  session is gone (its process or its connection died), a retry takes the claim over at
  once, and the operation, resumable by design, goes on from where it stopped.
- Keys are per organization and expire 24 hours after their first use.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import TypeAdapter

from src.services.transaction import Sql

T = TypeVar("T")


@dataclass
class IdempotencyKey:
    """A write's Idempotency-Key and the fingerprint of the request it came with (the
    same key with another fingerprint is refused). `replayed`: set when the answer is
    the stored result of the request first sent with the key."""

    key: str
    fingerprint: str
    replayed: bool = False


CLAIM = Sql("SELECT careteam_claim_key($1, $2, $3, $4)", "org", "key", "fingerprint", "owned")
STORE = Sql("SELECT careteam_store_result($1, $2, $3::jsonb, $4)", "org", "key", "result", "owned")


def _adapter(result_type: type[T]) -> TypeAdapter[T]:
    return TypeAdapter(result_type)


def dump(result_type: type[T], result: T) -> str:
    """A result as the JSON stored under its key."""
    return json.dumps(_adapter(result_type).dump_python(result, mode="json"))


def load(result_type: type[T], stored: Any) -> T:
    """A stored result, as its type again (the pool's connections decode jsonb already;
    JSON text is read too)."""
    value = json.loads(stored) if isinstance(stored, str) else stored
    return _adapter(result_type).validate_python(value)


def _params(org: uuid.UUID, key: IdempotencyKey, owned: bool) -> dict[str, Any]:
    return {"org": org, "key": key.key, "fingerprint": key.fingerprint, "owned": owned}


async def once(
    driver: Any,
    org: uuid.UUID,
    key: IdempotencyKey | None,
    result_type: type[T],
    work: Callable[[Any], Awaitable[T]],
) -> T:
    """In a write's transaction (after its BEGIN and tenant): `work`'s result, between
    claiming `key` and storing the result under it; or the result stored under `key`
    by an earlier request (then `key.replayed`). Just `work` without a key."""
    if key is None:
        return await work(driver)
    stored = await CLAIM.fetchval(driver, _params(org, key, owned=False))
    if stored is not None:
        key.replayed = True
        return load(result_type, stored)
    result = await work(driver)
    await STORE.execute(
        driver, {**_params(org, key, owned=False), "result": dump(result_type, result)}
    )
    return result


async def claim_owned(
    driver: Any, org: uuid.UUID, key: IdempotencyKey, result_type: type[T]
) -> T | None:
    """For an operation of several transactions, in a transaction of its own on the
    connection the operation keeps: None when the key is now the operation's (its
    session holds the key's lock until store_owned, or until it ends); else the stored
    result (then `key.replayed`)."""
    stored = await CLAIM.fetchval(driver, _params(org, key, owned=True))
    if stored is None:
        return None
    key.replayed = True
    return load(result_type, stored)


async def store_owned(
    driver: Any, org: uuid.UUID, key: IdempotencyKey, result_type: type[T], result: T
) -> None:
    """The operation's result under its key, in its last transaction (which releases
    the key's lock)."""
    await STORE.execute(
        driver, {**_params(org, key, owned=True), "result": dump(result_type, result)}
    )
