"""What the API reports about its database: readiness (/readyz) and the rule's last
check (/metrics). Both read with the application role, through the same transaction
layer as every other read, so their failures are domain errors like any other."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from src import primary_index
from src.services.transaction import Sql, run_transaction

READINESS = Sql(f"""
    SELECT (SELECT version_num FROM alembic_version LIMIT 1) AS revision,
           ({primary_index.INDEX_VALID}) AS index_valid
""")
# careteam_rule_status recounts only when its last count is older than $1 seconds, once
# for every API process that asks (sql/functions/careteam_rule_status/).
RULE_STATUS = Sql(
    "SELECT checked_at, several_primaries, without_primary, index_valid "
    "FROM careteam_rule_status($1)",
    "max_age_s",
)


@dataclass(frozen=True)
class Readiness:
    """revision: the schema's (None: the application role cannot read it, the schema is
    not migrated); index_valid: as primary_index.INDEX_VALID says."""

    revision: str | None
    index_valid: bool | None


@dataclass(frozen=True)
class RuleStatus:
    checked_at: datetime.datetime
    several_primaries: int
    without_primary: int
    index_valid: bool | None


class HealthService:
    @staticmethod
    async def readiness(*, db: AsyncSession) -> Readiness:
        """The schema's revision and the one-primary index's state, in one read.
        Raises DatabaseUnavailable, DatabaseBusy, DatabaseError."""

        async def work(driver: Any) -> Readiness:
            try:
                row = await READINESS.fetchrow(driver, {})
            # Not migrated: no alembic_version yet, or no grant on it.
            except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedTableError):
                return Readiness(None, None)
            return Readiness(row["revision"], row["index_valid"])

        return await run_transaction(db, operation="readiness", work=work, read_only=True)

    @staticmethod
    async def rule_status(*, db: AsyncSession, max_age_s: float) -> RuleStatus:
        """The rule's last count of violations, recounted when older than `max_age_s`."""

        async def work(driver: Any) -> RuleStatus:
            row = await RULE_STATUS.fetchrow(driver, {"max_age_s": max_age_s})
            return RuleStatus(**dict(row))

        return await run_transaction(db, operation="rule_status", work=work, read_only=True)
