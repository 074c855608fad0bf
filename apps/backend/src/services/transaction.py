"""The transaction every service operation runs in, and database-error translation.

A public service method owns its transaction, in one of two shapes:

- run_statement: one statement that is its own transaction (a database function that
  sets the tenant and checks the API key itself: the care-team read, a care team
  change, with or without an Idempotency-Key). One round trip.
- run_transaction: BEGIN with the tenant and the key's check (careteam_enter, in one
  round trip), the work's statements, COMMIT.

Either takes a connection of the session's pool (the session is the caller's handle:
its engine, the API key it acts as, src/services/credentials.py), sends prepared
statements on asyncpg directly, rolls back on any failure, and turns database errors
into domain errors (translate). A session that already has a transaction open is
refused with SessionInTransaction: the service never joins, and so never commits, a
caller's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.util import greenlet_spawn

from src.db import pg_error_fields
from src.metrics import INDEX_REFUSALS
from src.models import UNIQUE_PRIMARY_INDEX
from src.services import credentials
from src.services.credentials import Credential
from src.services.errors import (
    NO_SUBJECT,
    ApiKeyNotLive,
    CareTeamError,
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    OutcomeUnknown,
    PrimaryProviderConflict,
    Subject,
    from_database,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SessionInTransaction(RuntimeError):
    """A caller passed a session with a transaction open. Each service method is one
    transaction of its own: commit or roll back the session's work first."""


# --- statements ----------------------------------------------------------------------


class Sql:
    """A statement in PostgreSQL's own positional form ($1, $2, ...), with the name of
    each parameter in order, so calls bind by name:

        LOCK = Sql("SELECT id FROM patients WHERE organization_id = $1 AND id = $2",
                   "org", "patient")
        await LOCK.fetchval(driver, {"org": org, "patient": patient})

    The text is sent as written (a prepared statement); nothing rewrites it.
    """

    __slots__ = ("names", "text")

    def __init__(self, text: str, *names: str) -> None:
        self.text = text
        self.names = names

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]

    # Run on an asyncpg connection (the one run_transaction hands to the work).
    async def fetch(self, driver: Any, params: dict[str, Any]) -> list[Any]:
        return list(await driver.fetch(self.text, *self.args(params)))

    async def fetchrow(self, driver: Any, params: dict[str, Any]) -> Any:
        return await driver.fetchrow(self.text, *self.args(params))

    async def fetchval(self, driver: Any, params: dict[str, Any]) -> Any:
        return await driver.fetchval(self.text, *self.args(params))

    async def execute(self, driver: Any, params: dict[str, Any]) -> None:
        await driver.execute(self.text, *self.args(params))


# Transaction-local (true): the tenant never leaks into the next transaction on the
# same pooled connection. (The baseline benchmark's statement; the service sends
# tenant_statement.)
SET_TENANT = Sql("SELECT set_config('app.current_organization_id', $1, true)", "org")


# A transaction that reads one snapshot of the database from its first statement to its
# end (a bulk export): what it reads is the database as of one instant, whatever commits
# meanwhile.
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
# A snapshot another transaction exported (pg_export_snapshot): its id, as PostgreSQL
# writes it, before it is inlined in SET TRANSACTION SNAPSHOT.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+-[0-9]+")


def begin_snapshot(exported: str | None = None) -> str:
    """BEGIN_SNAPSHOT; with `exported` (an id pg_export_snapshot returned), a transaction
    that reads that snapshot (the export's parallel readers, src/api/bulk_export.py)."""
    if exported is None:
        return BEGIN_SNAPSHOT
    if not _SNAPSHOT_ID.fullmatch(exported):
        raise ValueError("a snapshot id is as pg_export_snapshot returns it")
    return f"{BEGIN_SNAPSHOT}; SET TRANSACTION SNAPSHOT '{exported}'"


def tenant_statement(
    organization_id: uuid.UUID, credential: Credential | None, begin: str = "BEGIN"
) -> str:
    """BEGIN (or `begin`, BEGIN_SNAPSHOT) and the tenant as one simple query, which takes
    no parameters: the id is inlined after being re-parsed as a UUID, the key's hash
    after being checked to be hex (so only hex digits and dashes reach the SQL).
    careteam_enter sets the tenant and, for a session acting as an API key, checks that
    the key is still live."""
    org = uuid.UUID(str(organization_id))
    return f"{begin}; SELECT careteam_enter('{org}', {_key_literal(credential)})"


def _key_literal(credential: Credential | None) -> str:
    if credential is None:
        return "NULL"
    if not _HEX.fullmatch(credential.key_hash):
        raise ValueError("an API key hash is hex digits")
    return f"'{credential.key_hash}'"


_HEX = re.compile(r"[0-9a-f]{64}")


def key_hash_of(db: AsyncSession) -> str | None:
    """The key hash a one-statement unit passes for its statement to check (careteam_care_team,
    careteam_change_team), or None for a session that acts as no key."""
    credential = credentials.of_session(db)
    return None if credential is None else credential.key_hash


# --- what went wrong ------------------------------------------------------------------------


class Failure(enum.Enum):
    """What a database error means for the operation, decided by the error's type."""

    ROLLED_BACK = "rolled_back"  # PostgreSQL undid the transaction: running it again is safe
    LOST = "lost"  # the connection is gone (terminated, restarting, unreachable)
    BUSY = "busy"  # a lock or statement timeout, or no pooled connection free: load
    REFUSED = "refused"  # PostgreSQL refused a statement (a constraint, a bug, ...)
    MISUSE = "misuse"  # the driver was used wrongly: a bug, never retried


# PostgreSQL rolled the whole transaction back: serialization failure, deadlock.
_ROLLED_BACK_SQLSTATES = {"40001", "40P01"}
_BUSY_SQLSTATES = {"57014", "55P03"}  # statement timeout / cancel, lock not available
# The server ends or refuses the session: the connection cannot be used again.
_GONE = (
    asyncpg.PostgresConnectionError,  # 08xxx: connection lost, refused, failed
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.InternalClientError,  # the protocol's state is broken: the connection is done
    OSError,  # includes ConnectionError: the socket
    TimeoutError,  # connecting timed out
)


def chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and the exceptions behind it: SQLAlchemy's wrappers (`.orig`), then the
    driver's causes (a ConnectionDoesNotExistError caused by an AdminShutdownError caused
    by a ConnectionResetError, say)."""
    seen: BaseException | None = err
    while seen is not None:
        yield seen
        inner = getattr(seen, "orig", None) or seen.__cause__
        seen = None if inner is seen else inner


_DATABASE_ERRORS = (
    sa_exc.SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def classify(err: BaseException, driver: Any = None) -> Failure:  # noqa: PLR0911
    """The kind of failure `err` is, by the types in its chain (and, for an
    InterfaceError, by whether `driver`, the connection it came from, is still open)."""
    if isinstance(err, sa_exc.TimeoutError):  # no pooled connection free in time
        return Failure.BUSY
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return Failure.LOST
    sqlstate = pg_error_fields(err)[0]
    if sqlstate in _ROLLED_BACK_SQLSTATES:
        return Failure.ROLLED_BACK
    if sqlstate in _BUSY_SQLSTATES:
        return Failure.BUSY
    causes = list(chain(err))
    if any(isinstance(cause, _GONE) for cause in causes):
        return Failure.LOST
    if any(isinstance(cause, asyncpg.InterfaceError) for cause in causes):
        # Using a connection that has closed (it broke) is a loss; anything else asyncpg
        # calls an interface error ("another operation is in progress", ...) is misuse.
        closed = driver is not None and driver.is_closed()
        return Failure.LOST if closed else Failure.MISUSE
    if any(isinstance(cause, asyncpg.PostgresError) for cause in causes):
        return Failure.REFUSED
    return Failure.MISUSE


def is_database_error(err: BaseException) -> bool:
    return any(isinstance(cause, _DATABASE_ERRORS) for cause in chain(err))


def translate(
    err: BaseException,
    failure: Failure,
    *,
    operation: str,
    organization_id: uuid.UUID | None,
    subject: Subject,
    credential: Credential | None = None,
) -> CareTeamError:
    """The domain error for a database failure the operation could not recover from:
    an error our database code raised (sql/errcodes.csv, about `subject`), a refusal by
    the one-primary index, or what the failure's kind says (busy, unavailable, a bug)."""
    sqlstate, constraint = pg_error_fields(err)
    ids = {
        "operation": operation,
        "organization_id": str(organization_id) if organization_id else None,
        "patient_id": str(subject.patient_id) if subject.patient_id else None,
        "sqlstate": sqlstate,
    }
    ours = from_database(sqlstate, _detail(err), subject)
    if isinstance(ours, ApiKeyNotLive):
        if credential is not None:
            credentials.forget(credential.key_hash)
        logger.info(
            "API key no longer live during %s", operation, extra={"event": "key_not_live", **ids}
        )
    if ours is not None:
        return ours
    if (
        sqlstate == "23505"
        and constraint == UNIQUE_PRIMARY_INDEX
        and organization_id is not None
        and subject.patient_id is not None
    ):
        INDEX_REFUSALS.inc()
        logger.warning(
            "primary provider write refused by %s (IntegrityError) "
            "operation=%s organization_id=%s patient_id=%s",
            UNIQUE_PRIMARY_INDEX,
            operation,
            organization_id,
            subject.patient_id,
            extra={
                "event": "primary_provider_conflict",
                "index": UNIQUE_PRIMARY_INDEX,
                "error": "IntegrityError",
                **ids,
            },
        )
        return PrimaryProviderConflict(organization_id, subject.patient_id)
    if failure is Failure.BUSY:
        logger.warning(
            "database busy during %s sqlstate=%s",
            operation,
            sqlstate,
            extra={"event": "database_busy", **ids},
        )
        return DatabaseBusy(
            f"{operation} waited too long (a lock held by another writer, or load); "
            "nothing changed: retry shortly"
        )
    if failure in (Failure.LOST, Failure.ROLLED_BACK):
        logger.error(
            "database unavailable during %s sqlstate=%s",
            operation,
            sqlstate,
            extra={"event": "database_unavailable", **ids},
        )
        return DatabaseUnavailable(f"database unavailable during {operation}; retry later")
    if failure is Failure.MISUSE:
        logger.error(
            "driver misuse during %s (%s): a bug",
            operation,
            type(list(chain(err))[-1]).__name__,
            exc_info=err,
            extra={"event": "driver_misuse", **ids},
        )
    else:
        logger.error(
            "database error during %s sqlstate=%s constraint=%s",
            operation,
            sqlstate,
            constraint,
            extra={"event": "database_error", **ids},
        )
    return DatabaseError(f"database refused {operation} (sqlstate {sqlstate}); nothing changed")


def _detail(err: BaseException) -> str | None:
    """The DETAIL of the PostgreSQL error behind `err`, if any."""
    for cause in chain(err):
        detail = getattr(cause, "detail", None)
        if isinstance(detail, str):
            return detail
    return None


# --- the transaction ------------------------------------------------------------------------

MAX_ATTEMPTS = 6
FIRST_RETRY_DELAY_S = 0.1  # doubling: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s, enough for a restart
_HELD = "careteam_held_connection"


class _Unit:
    """One attempt's transaction, on a connection of the session's pool.

    The session is the caller's handle on a database (its engine, its role, the API key
    it acts as); the unit checks a connection out of that engine's pool for the attempt
    alone (or uses the one `holding` keeps for the session), and sends BEGIN, the
    statements and COMMIT to asyncpg directly (prepared statements). It does not go
    through the Session's own transaction: that bookkeeping costs more CPU than a
    care-team read's statement. A session with a transaction of its own open is
    refused: the service never runs beside, or inside, the caller's.
    """

    def __init__(self, db: AsyncSession) -> None:
        if db.in_transaction():
            raise SessionInTransaction(
                "the session passed to the service has a transaction open; each service "
                "method runs its own: commit or roll back the session first"
            )
        engine = db.bind
        if not isinstance(engine, AsyncEngine):
            raise TypeError("the service needs a session bound to an engine")
        self.engine = engine
        self.credential = credentials.of_session(db)
        self.held: Any = db.info.get(_HELD)  # a connection kept for the session (holding)
        self.pooled: Any = None  # the pool's connection, while the attempt holds it
        self.driver: Any = None  # the asyncpg connection under it
        self.began = False  # this unit sent BEGIN: it ends the transaction
        self.committing = False  # COMMIT was sent: a failure now leaves the outcome unknown

    async def begin(
        self, organization_id: uuid.UUID | None, *, explicit: bool, begin: str = "BEGIN"
    ) -> Any:
        if self.pooled is None:
            self.pooled = self.held or await self.engine.raw_connection()
            self.driver = self.pooled.driver_connection
        if organization_id is not None or explicit:
            # Marked first: if careteam_enter refuses the key, BEGIN has run already and
            # abandon() must roll back.
            self.began = True
            if organization_id is not None:
                await self.driver.execute(tenant_statement(organization_id, self.credential, begin))
                self.confirm()
            else:
                await self.driver.execute("BEGIN")
        return self.driver

    def confirm(self) -> None:
        """A statement that checked the session's key succeeded: the key is live."""
        if self.credential is not None:
            self.credential.confirmed = True

    async def commit(self) -> None:
        if self.began:
            self.committing = True
            await self.driver.execute("COMMIT")
            self.committing = self.began = False

    async def abandon(self, *, doubtful: bool) -> None:
        """Roll back after a failure. A connection in doubt (lost, cancelled mid-statement,
        or still inside a transaction) is discarded, never handed to the next request."""
        if self.began and not doubtful:
            try:
                await self.driver.execute("ROLLBACK")
                doubtful = self.driver.is_in_transaction()
            except Exception:
                logger.debug("rollback failed; discarding the connection", exc_info=True)
                doubtful = True
        self.began = False
        await self.release(doubtful=doubtful)

    async def release(self, *, doubtful: bool = False) -> None:
        """Give the connection back to the pool (a doubtful one is closed instead); a
        held one stays the session's, unless it is doubtful."""
        pooled, self.pooled, self.driver = self.pooled, None, None
        if pooled is None or (pooled is self.held and not doubtful):
            return
        await _give_back(pooled, doubtful=doubtful)


async def _give_back(pooled: Any, *, doubtful: bool) -> None:
    if not pooled.is_valid:  # discarded already (a held one, when it broke)
        return
    try:
        if doubtful or pooled.driver_connection.is_in_transaction():
            await greenlet_spawn(pooled.invalidate)
        else:
            await greenlet_spawn(pooled.close)
    except Exception:  # the connection is gone: the pool replaces it
        logger.debug("returning a connection to the pool failed", exc_info=True)


@contextlib.asynccontextmanager
async def holding(db: AsyncSession) -> AsyncIterator[None]:
    """Every transaction the service runs on `db` inside the block uses one connection,
    whose database session lives as long as the block: for an operation of several
    transactions that holds session-level locks (a panel transfer). A lost connection
    is not replaced inside the block (its locks went with it): the operation fails with
    DatabaseUnavailable, to be retried. At the end the connection is closed, not pooled,
    so that no lock it took outlives the operation, whatever happened."""
    engine = db.bind
    if not isinstance(engine, AsyncEngine):
        raise TypeError("the service needs a session bound to an engine")
    if _HELD in db.info:
        raise SessionInTransaction("the session already holds a connection for an operation")
    pooled = await engine.raw_connection()
    db.info[_HELD] = pooled
    try:
        yield
    finally:
        del db.info[_HELD]
        await _give_back(pooled, doubtful=True)


async def _retried(
    db: AsyncSession,
    *,
    operation: str,
    organization_id: uuid.UUID | None,
    subject: Subject,
    attempt_once: Callable[[_Unit], Awaitable[T]],
    verify: Callable[[Any], Awaitable[T | None]] | None,
    writes: bool,
) -> T:
    """`attempt_once(unit)` until it succeeds, or fails in a way a retry cannot mend.

    Retried, a bounded number of times with a growing delay, only when the attempt
    certainly did not commit (PostgreSQL rolled it back: serialization failure,
    deadlock; or the connection was lost before COMMIT was sent), or when running it
    again is safe by design: then `verify` decides (a write whose COMMIT's answer was
    lost is verified in a new transaction: its result if the change is in place, None
    to run it again). A write whose COMMIT was lost with no `verify` raises
    OutcomeUnknown. Domain errors are re-raised as they are, database errors become
    domain errors (translate); misuse of the driver is a bug, never retried.
    """
    delay = FIRST_RETRY_DELAY_S
    must_verify = False
    for attempt in range(1, MAX_ATTEMPTS + 1):
        unit = _Unit(db)
        try:
            if must_verify:
                assert verify is not None
                driver = await unit.begin(organization_id, explicit=True)
                done = await verify(driver)
                await unit.commit()
                await unit.release()
                if done is not None:
                    logger.info(
                        "%s: the change had committed before the connection was lost", operation
                    )
                    return done
                must_verify = False
                unit = _Unit(db)
            return await attempt_once(unit)
        except SessionInTransaction:
            raise
        except BaseException as err:
            cancelled = not isinstance(err, Exception)
            failure = None
            if not cancelled and is_database_error(err):
                failure = classify(err, unit.driver)
            committing = unit.committing
            await unit.abandon(doubtful=cancelled or failure is Failure.LOST)
            if failure is None:  # a domain error, a cancellation, or a bug: as it is
                raise
            lost = failure is Failure.LOST
            if lost and committing and writes:
                if verify is None:
                    raise OutcomeUnknown(operation) from err
                must_verify = True
            retryable = failure in (Failure.LOST, Failure.ROLLED_BACK) and unit.held is None
            if attempt == MAX_ATTEMPTS or not retryable:
                if must_verify:
                    raise OutcomeUnknown(operation) from err
                raise translate(
                    err,
                    failure,
                    operation=operation,
                    organization_id=organization_id,
                    subject=subject,
                    credential=unit.credential,
                ) from err
            logger.warning(
                "%s failed (%s); retry %d/%d in %.1fs",
                operation,
                failure.value,
                attempt,
                MAX_ATTEMPTS - 1,
                delay,
                extra={"event": "retry", "operation": operation},
            )
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


async def run_transaction(
    db: AsyncSession,
    *,
    operation: str,
    work: Callable[[Any], Awaitable[T]],
    organization_id: uuid.UUID | None = None,
    subject: Subject = NO_SUBJECT,
    verify: Callable[[Any], Awaitable[T | None]] | None = None,
    read_only: bool = False,
    snapshot: bool | str = False,
) -> T:
    """`work(connection)` as one transaction, committed: BEGIN with the tenant and the
    session's API key checked (careteam_enter) when `organization_id` is given, the
    work's statements on the asyncpg connection, COMMIT; rolled back on any failure.
    `snapshot`: a read-only REPEATABLE READ transaction (BEGIN_SNAPSHOT; it needs
    `organization_id`), whose statements all read the database as of its first; a
    snapshot id (pg_export_snapshot's, from a transaction still open): one that reads
    the database as that transaction does.

    A read without a tenant (an owner's listing, a key's lookup) is one statement
    without BEGIN or COMMIT. `subject`: what the work acts on, named by the domain
    errors the database raises. `verify`: see _retried (a write with an Idempotency-Key
    passes RUN_AGAIN: its claim tells whether it committed). Raises
    SessionInTransaction if the session has a transaction open.
    """
    explicit = organization_id is not None or not read_only
    if snapshot and organization_id is None:
        raise ValueError("a snapshot transaction reads one tenant's data")
    begin = "BEGIN"
    if snapshot is not False:
        begin = begin_snapshot(None if snapshot is True else snapshot)

    async def attempt_once(unit: _Unit) -> T:
        driver = await unit.begin(organization_id, explicit=explicit, begin=begin)
        result = await work(driver)
        await unit.commit()
        await unit.release()
        return result

    return await _retried(
        db,
        operation=operation,
        organization_id=organization_id,
        subject=subject,
        attempt_once=attempt_once,
        verify=verify,
        writes=not (read_only or snapshot),
    )


async def run_statement(
    db: AsyncSession,
    *,
    operation: str,
    statement: Callable[[Any, str | None], Awaitable[T]],
    organization_id: uuid.UUID,
    subject: Subject = NO_SUBJECT,
) -> T:
    """One statement that is its own transaction (an implicit one, committed where it
    ends): `statement(connection, key_hash)` sends a database function that sets the
    tenant and checks `key_hash`, the session's API key, itself (careteam_care_team,
    careteam_change_team). One round trip. A statement that writes must recognise an
    earlier attempt of itself that committed, and then change nothing more
    (careteam_change_team does, by its write id): a connection lost during it is simply
    retried. `organization_id` names the tenant in logs."""
    key_hash = key_hash_of(db)

    async def attempt_once(unit: _Unit) -> T:
        driver = await unit.begin(None, explicit=False)
        result = await statement(driver, key_hash)
        unit.confirm()  # the statement checked the session's key
        await unit.release()
        return result

    return await _retried(
        db,
        operation=operation,
        organization_id=organization_id,
        subject=subject,
        attempt_once=attempt_once,
        verify=None,
        writes=False,
    )


async def _run_again(driver: Any) -> None:
    return None


# For a write that is safe to run again whatever became of a lost COMMIT: one with an
# Idempotency-Key (its claim finds its own stored result if it committed), or one that
# moves only what is left (a transfer's batch).
RUN_AGAIN: Callable[[Any], Awaitable[None]] = _run_again
