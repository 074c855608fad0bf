"""Idempotency keys: a write sent again with the key it was first sent with is answered
with the first response, and executed once.

How it holds:
- The key is claimed in the write's own transaction, first thing after BEGIN: an INSERT
  into idempotency_keys (organization, key). A second request with the same key that
  arrives meanwhile waits on that row (the primary key) until the first one commits or
  rolls back; so concurrent requests with one key execute once.
- The response is rendered (by the HTTP layer's `render`) and stored in that same
  transaction, just before COMMIT: the change and its response commit together, or
  neither does. A retry finds either both or nothing (and then runs the write).
- A COMMIT whose answer was lost (the connection dropped) is settled by reading the key:
  if its row is there, the write committed, and its stored response is the answer; if
  not, the write runs again. So a create retried with its key never makes a duplicate,
  where without a key it can only answer outcome_unknown.
- The same key with a different request (method, path, query or body) is refused
  (IdempotencyKeyReused), and nothing runs.
- Keys are per organization and expire KEY_TTL after their first use: a key older than
  that is treated as new (and its old row replaced); each keyed write also deletes up
  to ten expired keys of its organization, so the table holds about a day of keys.

An operation of several transactions (a panel transfer, in batches) claims its key in a
transaction of its own first (marked in progress), and stores the response in a last
one: a retry meanwhile is answered IdempotencyKeyInProgress; a claim left in progress
longer than STALE_CLAIM (its request died) is taken over, and the operation, resumable
by design, runs again.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from src.services.errors import IdempotencyKeyInProgress, IdempotencyKeyReused

T = TypeVar("T")

KEY_TTL = datetime.timedelta(hours=24)
STALE_CLAIM = datetime.timedelta(minutes=15)
IN_PROGRESS = 0  # the status of a claim whose response is not stored yet


@dataclass(frozen=True)
class Reply:
    """A response as it was sent: status, JSON body, ETag."""

    status_code: int
    body: bytes
    etag: str | None = None


class Replay(Exception):
    """The request was already executed under this key: answer `reply` again."""

    def __init__(self, reply: Reply) -> None:
        super().__init__("replayed")
        self.reply = reply


@dataclass
class IdempotentRequest:
    """The request being served under an Idempotency-Key."""

    key: str
    fingerprint: str
    token: bytes = dataclasses.field(default_factory=lambda: secrets.token_bytes(16))
    render: Callable[[Any], Reply] | None = None  # set by the HTTP layer per operation
    reply: Reply | None = None  # the response as stored: the HTTP layer sends this one
    claimed: bool = False  # this request's claim has committed (several transactions)
    several_transactions: bool = False


_current: contextvars.ContextVar[IdempotentRequest | None] = contextvars.ContextVar(
    "idempotent_request", default=None
)


def begin_request(key: str | None, fingerprint: str = "") -> None:
    """A write request begins: under this key (None: none)."""
    _current.set(None if key is None else IdempotentRequest(key=key, fingerprint=fingerprint))


def stored_reply() -> Reply | None:
    """The response stored under the current request's key (rendered once, there)."""
    request = _current.get()
    return None if request is None else request.reply


def answer_with(render: Callable[[Any], Reply]) -> None:
    """How the current request's result becomes its response (stored under its key)."""
    request = _current.get()
    if request is not None:
        request.render = render


def current() -> IdempotentRequest | None:
    """The request's key, once the HTTP layer has said how to render its response."""
    request = _current.get()
    return request if request is not None and request.render is not None else None


# The claim's body, until the response replaces it, is the request's own token: a
# request that finds its own claim (its COMMIT was lost) knows the claim is its own.
CLAIM = """
INSERT INTO idempotency_keys (organization_id, key, fingerprint, status_code, body)
VALUES ($1, $2, $3, 0, $4)
ON CONFLICT (organization_id, key) DO NOTHING
RETURNING true
"""
# This key, if it expired or was left in progress by a request that died; and up to
# ten other expired keys of the organization (ones another writer is deleting are
# skipped, never waited for): each keyed write clears up after ten. One round trip.
FORGET_EXPIRED = """
WITH this_key AS (
    DELETE FROM idempotency_keys
    WHERE organization_id = $1 AND key = $2
      AND (created_at < now() - $3::interval
           OR (status_code = 0 AND created_at < now() - $4::interval))
), others AS (
    DELETE FROM idempotency_keys
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM idempotency_keys
        WHERE organization_id = $1 AND created_at < now() - $3::interval AND key <> $2
        LIMIT 10 FOR UPDATE SKIP LOCKED))
)
SELECT 1
"""
LOOKUP = """
SELECT fingerprint, status_code, body, etag FROM idempotency_keys
WHERE organization_id = $1 AND key = $2
"""
FORGET_CLAIM = """
DELETE FROM idempotency_keys WHERE organization_id = $1 AND key = $2 AND status_code = 0
"""
STORE = """
UPDATE idempotency_keys SET status_code = $3, body = $4, etag = $5
WHERE organization_id = $1 AND key = $2
"""


async def _answer_taken(driver: Any, org: uuid.UUID, request: IdempotentRequest) -> None:
    """The key is taken (its row committed): replay its response, or refuse. Returns
    only when the claim is this very request's (its COMMIT's answer was lost)."""
    row = await driver.fetchrow(LOOKUP, org, request.key)
    if row is None:  # expired and removed meanwhile: nothing to answer with
        raise IdempotencyKeyInProgress()
    if row["fingerprint"] != request.fingerprint:
        raise IdempotencyKeyReused()
    if row["status_code"] == IN_PROGRESS:
        if bytes(row["body"]) == request.token:
            return
        raise IdempotencyKeyInProgress()
    raise Replay(Reply(row["status_code"], bytes(row["body"]), row["etag"]))


async def _take(driver: Any, org: uuid.UUID, request: IdempotentRequest) -> None:
    await driver.execute(FORGET_EXPIRED, org, request.key, KEY_TTL, STALE_CLAIM)
    claimed = await driver.fetchval(CLAIM, org, request.key, request.fingerprint, request.token)
    if claimed is None:
        await _answer_taken(driver, org, request)


async def claim(driver: Any, org: uuid.UUID) -> None:
    """In a write's transaction, first: take the request's key, or raise Replay /
    IdempotencyKeyReused / IdempotencyKeyInProgress. Nothing without a key."""
    request = current()
    if request is None or request.claimed:
        return
    await _take(driver, org, request)


async def store(driver: Any, org: uuid.UUID, result: Any) -> None:
    """In the same transaction, last: the response the request gets, with its change."""
    request = current()
    if request is None or request.several_transactions:
        return
    assert request.render is not None
    reply = request.reply = request.render(result)
    await driver.execute(STORE, org, request.key, reply.status_code, reply.body, reply.etag)


async def settle_lost_commit(driver: Any, org: uuid.UUID) -> bool:
    """After a COMMIT whose answer was lost: raise Replay if it committed (its key is
    there); False if it did not (the write runs again). False without a key."""
    request = current()
    if request is None or request.several_transactions:
        return False
    row = await driver.fetchrow(LOOKUP, org, request.key)
    if row is None:
        return False
    await _answer_taken(driver, org, request)  # raises: a single-transaction claim
    return True  # never stays in progress once committed


async def run_once(
    run_transaction: Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]],
    org: uuid.UUID,
    operation: Callable[[], Awaitable[T]],
) -> T:
    """An operation of several transactions under the request's key: claimed in a
    transaction of its own (by `run_transaction(work)`), then run, then its response
    stored in a last transaction."""
    request = current()
    if request is None:
        return await operation()
    request.several_transactions = True

    async def nothing(driver: Any) -> None:
        return None  # the transaction claims the key (see claim), and that is all

    await run_transaction(nothing)
    request.claimed = True
    try:
        result = await operation()
    except BaseException:
        # It failed: let a retry run it again (it is resumable) instead of waiting.
        with contextlib.suppress(Exception):  # if that fails too, the claim goes stale
            await run_transaction(lambda driver: driver.execute(FORGET_CLAIM, org, request.key))
        raise
    assert request.render is not None
    reply = request.reply = request.render(result)
    await run_transaction(
        lambda driver: driver.execute(
            STORE, org, request.key, reply.status_code, reply.body, reply.etag
        )
    )
    return result
