"""The transaction every service operation runs in, and database-error translation."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import pg_error_fields
from src.metrics import INDEX_REFUSALS
from src.models import UNIQUE_PRIMARY_INDEX
from src.services.errors import (
    CareTeamError,
    DatabaseBusy,
    DatabaseError,
    DatabaseUnavailable,
    OutcomeUnknown,
    PrimaryProviderConflict,
)

logger = logging.getLogger(__name__)


# The database is there but the operation waited too long: retry soon (busy).
_BUSY_SQLSTATES = {
    "57014",  # statement timeout / query canceled
    "55P03",  # lock not available (lock_timeout): another writer holds the patient
}
_UNAVAILABLE_SQLSTATES = {
    "57P01",  # admin shutdown
    "57P02",  # crash shutdown
    "57P03",  # cannot connect now
    "53300",  # too many connections
}


def _translate(
    err: Exception,
    *,
    operation: str,
    organization_id: uuid.UUID | None,
    patient_id: uuid.UUID | None,
) -> CareTeamError:
    """Turn a driver or SQLAlchemy error into the domain error the caller can act on."""
    sqlstate, constraint = pg_error_fields(err)
    ids = {
        "operation": operation,
        "organization_id": str(organization_id) if organization_id else None,
        "patient_id": str(patient_id) if patient_id else None,
        "sqlstate": sqlstate,
    }
    if (
        sqlstate == "23505"
        and constraint == UNIQUE_PRIMARY_INDEX
        and organization_id is not None
        and patient_id is not None
    ):
        INDEX_REFUSALS.inc()
        logger.warning(
            "primary provider write refused by %s (IntegrityError) "
            "operation=%s organization_id=%s patient_id=%s",
            UNIQUE_PRIMARY_INDEX,
            operation,
            organization_id,
            patient_id,
            extra={
                "event": "primary_provider_conflict",
                "index": UNIQUE_PRIMARY_INDEX,
                "error": "IntegrityError",
                **ids,
            },
        )
        return PrimaryProviderConflict(organization_id, patient_id)
    if sqlstate in _BUSY_SQLSTATES or isinstance(err, sa_exc.TimeoutError):
        # A lock or statement timeout, or every pooled connection busy: load, not loss.
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
    connection_lost = _connection_lost(err)
    if (
        connection_lost
        or sqlstate in _UNAVAILABLE_SQLSTATES
        or isinstance(err, OSError | TimeoutError)
        or (isinstance(err, sa_exc.InterfaceError | sa_exc.OperationalError) and sqlstate is None)
    ):
        logger.error(
            "database unavailable during %s sqlstate=%s",
            operation,
            sqlstate,
            extra={"event": "database_unavailable", **ids},
        )
        return DatabaseUnavailable(f"database unavailable during {operation}; retry later")
    logger.error(
        "database error during %s sqlstate=%s constraint=%s",
        operation,
        sqlstate,
        constraint,
        extra={"event": "database_error", **ids},
    )
    return DatabaseError(f"database refused {operation} (sqlstate {sqlstate}); nothing changed")


T = TypeVar("T")


@dataclass(frozen=True)
class Sql:
    """A statement written with :named parameters (readable, and what pgbench replays),
    sent as asyncpg's positional prepared statement."""

    text: str
    positional: str
    names: tuple[str, ...]

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]

    # Run on an asyncpg connection (the one run_in_transaction hands to the work).
    async def fetch(self, driver: Any, params: dict[str, Any]) -> list[Any]:
        return list(await driver.fetch(self.positional, *self.args(params)))

    async def fetchrow(self, driver: Any, params: dict[str, Any]) -> Any:
        return await driver.fetchrow(self.positional, *self.args(params))

    async def fetchval(self, driver: Any, params: dict[str, Any]) -> Any:
        return await driver.fetchval(self.positional, *self.args(params))

    async def execute(self, driver: Any, params: dict[str, Any]) -> None:
        await driver.execute(self.positional, *self.args(params))


def sql(text_with_names: str) -> Sql:
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    positional = re.sub(r"(?<!:):(\w+)", number, text_with_names)
    return Sql(text_with_names, positional, tuple(names))


# Transaction-local (true): the tenant never leaks into the next transaction on the
# same pooled connection.
SET_TENANT = sql("SELECT set_config('app.current_organization_id', :org, true)")


def tenant_statement(organization_id: uuid.UUID) -> str:
    """SET_TENANT with the id inlined, so that it can ride with BEGIN in one simple query
    (which takes no parameters). The id is re-parsed as a UUID first: only hex digits and
    dashes can reach the SQL."""
    return SET_TENANT.text.replace(":org", f"'{uuid.UUID(str(organization_id))}'")


MAX_ATTEMPTS = 6
FIRST_RETRY_DELAY_S = 0.1  # doubling: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s, enough for a restart

# PostgreSQL rolled the whole transaction back: running it again is safe.
_ROLLED_BACK_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock detected
# The connection is gone (terminated, server restarting or unreachable).
_CONNECTION_SQLSTATES = {"57P01", "57P02", "57P03", "08000", "08003", "08006", "08001"}


def _connection_lost(err: BaseException) -> bool:
    sqlstate = pg_error_fields(err)[0]
    if sqlstate in _CONNECTION_SQLSTATES:
        return True
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return True
    if isinstance(err, sa_exc.TimeoutError):  # the pool is exhausted: load, not loss
        return False
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, OSError | ConnectionError) or type(cause).__name__ in (
            "ConnectionDoesNotExistError",
            "InterfaceError",
            "InternalClientError",  # the protocol's state is broken: the connection is done
        ):
            return True
        cause = cause.__cause__
    return False


_DATABASE_ERRORS = (
    sa_exc.SQLAlchemyError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def _is_database_error(err: Exception) -> bool:
    return isinstance(err, _DATABASE_ERRORS) or pg_error_fields(err)[0] is not None


async def _discard(connection: Any) -> None:
    """The driver may not have told the pool that the connection broke: make sure it is
    discarded, never handed to the next request."""
    try:
        await connection.invalidate()
    except Exception:
        logger.debug("invalidating a lost connection failed", exc_info=True)


class _Unit:
    """One attempt's transaction, driven on the asyncpg connection beneath the session.

    The session lends its pooled connection; the statements, BEGIN and COMMIT go to
    asyncpg directly (prepared statements, none of the ORM's per-statement work: about
    half the client CPU of an operation). If the session already has a transaction open
    (a caller's, or the test suite's savepoint), the unit joins it and the session
    commits or rolls back as before.
    """

    def __init__(self, db: AsyncSession) -> None:
        self.db = db
        self.connection: Any = None  # the session's AsyncConnection
        self.driver: Any = None  # the asyncpg connection under it
        self.joined = False  # the session had a transaction open: the session ends it
        self.began = False  # this unit sent BEGIN: it ends the transaction itself

    async def begin(self, organization_id: uuid.UUID | None, *, explicit: bool) -> Any:
        self.connection = await self.db.connection()
        # Plain attributes of the connection just checked out (get_raw_connection() would
        # cost a greenlet round for the same object).
        self.driver = self.connection.sync_connection.connection.driver_connection
        self.joined = self.driver.is_in_transaction()
        self.began = explicit and not self.joined
        begin = "BEGIN; " if self.began else ""
        if organization_id is not None:
            # BEGIN and the tenant in one round trip: one simple query, several statements.
            await self.driver.execute(begin + tenant_statement(organization_id))
        elif begin:
            await self.driver.execute("BEGIN")
        return self.driver

    async def commit(self) -> None:
        if self.joined:
            await self.db.commit()
        elif self.began:
            await self.driver.execute("COMMIT")
        # Otherwise the session keeps its connection (it has no transaction open on it)
        # for the next unit of the same session, e.g. the request's after its key check.

    async def abandon(self, *, lost: bool, cancelled: bool) -> None:
        """Roll back after a failure. A connection in doubt (lost, cancelled mid-statement,
        or still inside a transaction) is discarded, never handed to the next request."""
        doubtful = lost or cancelled
        if self.began and not doubtful:
            try:
                await self.driver.execute("ROLLBACK")
                doubtful = self.driver.is_in_transaction()
            except Exception:
                logger.debug("rollback failed; discarding the connection", exc_info=True)
                doubtful = True
        if doubtful and self.connection is not None:
            await _discard(self.connection)
        try:
            await self.db.rollback()
        except Exception:  # the connection may be gone; the server rolls back by itself
            logger.debug("session rollback after a failure also failed", exc_info=True)


async def run_in_transaction(
    db: AsyncSession,
    *,
    operation: str,
    work: Callable[[Any], Awaitable[T]],
    organization_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
    verify: Callable[[Any], Awaitable[T | None]] | None = None,
    read_only: bool = False,
) -> T:
    """Run `work(connection)` as one transaction (tenant first, when given) and commit it.

    `work` gets the asyncpg connection of the session and sends its statements there,
    never through the session itself (asyncpg refuses to start the session's own
    transaction inside one this unit began).
    A read-only unit without a tenant (key authentication: one statement) runs without
    BEGIN/COMMIT.

    On any failure it rolls back: domain errors are re-raised as they are, database
    errors become domain errors (never a raw driver exception). It retries, a bounded
    number of times with a growing delay, only when the transaction certainly did not
    commit: PostgreSQL rolled it back (serialization failure, deadlock), or the
    connection was lost before COMMIT was sent. A connection lost during COMMIT leaves
    the outcome unknown: then `verify`, in a new transaction, looks at the data: it
    returns the result if the change is in place, or None if it is not (then `work`
    runs again). Without `verify`, that case raises OutcomeUnknown, unless `read_only`
    (nothing to commit: it simply runs again).
    """
    delay = FIRST_RETRY_DELAY_S
    must_verify = False
    explicit = organization_id is not None or not read_only

    for attempt in range(1, MAX_ATTEMPTS + 1):
        committing = False
        unit = _Unit(db)
        try:
            driver = await unit.begin(organization_id, explicit=explicit)
            if must_verify:
                assert verify is not None
                done = await verify(driver)
                await unit.commit()
                if done is not None:
                    logger.info(
                        "%s: the change had committed before the connection was lost", operation
                    )
                    return done
                must_verify = False
                driver = await unit.begin(organization_id, explicit=explicit)
            result = await work(driver)
            committing = True
            await unit.commit()
            return result
        except BaseException as err:
            lost = isinstance(err, Exception) and _connection_lost(err)
            await unit.abandon(lost=lost, cancelled=not isinstance(err, Exception))
            if isinstance(err, CareTeamError) or not isinstance(err, Exception):
                raise
            if not _is_database_error(err):
                raise
            sqlstate = pg_error_fields(err)[0]
            if lost and committing and not read_only:
                if verify is None:
                    raise OutcomeUnknown(operation) from err
                must_verify = True
            if attempt == MAX_ATTEMPTS or not (lost or sqlstate in _ROLLED_BACK_SQLSTATES):
                if must_verify:
                    raise OutcomeUnknown(operation) from err
                raise _translate(
                    err,
                    operation=operation,
                    organization_id=organization_id,
                    patient_id=patient_id,
                ) from err
            logger.warning(
                "%s failed (%s); retry %d/%d in %.1fs",
                operation,
                "connection lost" if lost else f"sqlstate {sqlstate}",
                attempt,
                MAX_ATTEMPTS - 1,
                delay,
                extra={"event": "retry", "operation": operation},
            )
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover
