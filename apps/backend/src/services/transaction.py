"""The transaction every service operation runs in, and database-error translation."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import pg_error_fields
from src.models import UNIQUE_PRIMARY_INDEX
from src.services.errors import (
    CareTeamError,
    DatabaseError,
    DatabaseUnavailable,
    PrimaryProviderConflict,
)

logger = logging.getLogger(__name__)

# Transaction-local (true): the tenant never leaks into the next transaction on the
# same pooled connection.
SET_TENANT = text("SELECT set_config('app.current_organization_id', :org, true)")


_UNAVAILABLE_SQLSTATES = {
    "57014",  # statement timeout / query canceled
    "55P03",  # lock not available (lock_timeout)
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
        logger.warning(
            "primary provider write refused by %s (IntegrityError) "
            "operation=%s organization_id=%s patient_id=%s",
            UNIQUE_PRIMARY_INDEX,
            operation,
            organization_id,
            patient_id,
            extra={"event": "primary_provider_conflict", **ids},
        )
        return PrimaryProviderConflict(organization_id, patient_id)
    connection_lost = isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated
    if (
        connection_lost
        or sqlstate in _UNAVAILABLE_SQLSTATES
        or isinstance(err, sa_exc.TimeoutError | OSError | TimeoutError)
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


@asynccontextmanager
async def unit_of_work(
    db: AsyncSession,
    *,
    operation: str,
    organization_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
) -> AsyncIterator[None]:
    """One transaction: the tenant set first (when given), commit on success.

    On any failure it rolls back and re-raises: domain errors as they are, database
    errors translated into domain errors (never a raw driver exception).
    """
    try:
        if organization_id is not None:
            await db.execute(SET_TENANT, {"org": str(organization_id)})
        yield
        await db.commit()
    except BaseException as err:
        try:
            await db.rollback()
        except Exception:  # the connection may be gone; the server rolls back by itself
            logger.debug("rollback after failed %s also failed", operation, exc_info=True)
        if isinstance(err, CareTeamError) or not isinstance(err, Exception):
            raise
        if (
            isinstance(err, sa_exc.SQLAlchemyError | OSError | TimeoutError)
            or pg_error_fields(err)[0]
        ):
            raise _translate(
                err, operation=operation, organization_id=organization_id, patient_id=patient_id
            ) from err
        raise
