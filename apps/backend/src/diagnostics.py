"""Find violations of "at most one primary provider per (organization, patient)".

Runs as the owner (across all tenants), before or after the unique-primary migration.
Used by scripts/check_primary_provider_violations.py.

Exit codes: 0 no violations, 1 violations found, 2 the check could not run.
"""

from __future__ import annotations

import datetime
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from src.config import ConfigurationError, get_settings
from src.db import create_engine, resolve_database_url
from src.models import UNIQUE_PRIMARY_INDEX

EXIT_CLEAN, EXIT_VIOLATIONS, EXIT_CANNOT_RUN = 0, 1, 2

# Every (organization, patient) with more than one primary, with its primaries in the
# order the migration ranks them: the first one (latest assigned_at, tie: highest id)
# is the one it keeps.
VIOLATIONS = text("""
    SELECT a.organization_id, a.patient_id, a.provider_id, a.assigned_at, a.id
    FROM care_team_assignments AS a
    JOIN (
        SELECT organization_id, patient_id
        FROM care_team_assignments
        WHERE is_primary_provider
        GROUP BY organization_id, patient_id
        HAVING count(*) > 1
    ) AS d USING (organization_id, patient_id)
    WHERE a.is_primary_provider
    ORDER BY a.organization_id, a.patient_id, a.assigned_at DESC, a.id DESC
""")

# Patients with a care team but no primary provider: allowed, but worth a look.
WITHOUT_PRIMARY = text("""
    SELECT organization_id, patient_id, count(*) AS members
    FROM care_team_assignments
    GROUP BY organization_id, patient_id
    HAVING NOT bool_or(is_primary_provider)
    ORDER BY organization_id, patient_id
""")

INDEX_STATE = text("""
    SELECT i.indisvalid
    FROM pg_class AS c
    JOIN pg_index AS i ON i.indexrelid = c.oid
    WHERE c.relname = :name AND c.relkind = 'i' AND pg_table_is_visible(c.oid)
""")

CAN_SEE_ALL_TENANTS = text("""
    SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user
""")

TABLE_EXISTS = text("SELECT to_regclass('care_team_assignments') IS NOT NULL")


# What a failed connection or query can raise, from SQLAlchemy or from asyncpg directly.
DATABASE_ERRORS = (
    SQLAlchemyError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class CannotRun(Exception):
    """The check cannot give a trustworthy answer; the message says why."""


@dataclass(frozen=True)
class Primary:
    assignment_id: uuid.UUID
    provider_id: uuid.UUID
    assigned_at: datetime.datetime


@dataclass
class Violation:
    organization_id: uuid.UUID
    patient_id: uuid.UUID
    primaries: list[Primary] = field(default_factory=list)

    @property
    def kept(self) -> Primary:
        """The primary the migration keeps (latest assigned_at, tie: highest id)."""
        return self.primaries[0]


@dataclass
class Report:
    index_state: str  # "valid", "invalid" or "missing"
    violations: list[Violation]
    without_primary: list[tuple[uuid.UUID, uuid.UUID, int]]

    @property
    def exit_code(self) -> int:
        return EXIT_VIOLATIONS if self.violations else EXIT_CLEAN


async def run_check(engine: AsyncEngine) -> Report:
    """Collect the report, in one read-only snapshot. Raises CannotRun."""
    async with engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        if not (await conn.execute(TABLE_EXISTS)).scalar_one():
            raise CannotRun("table care_team_assignments does not exist: run the migrations first")
        if not (await conn.execute(CAN_SEE_ALL_TENANTS)).scalar():
            raise CannotRun(
                "this role cannot see every organization's rows (row-level security); "
                "connect as a superuser or a role with BYPASSRLS"
            )
        valid = (await conn.execute(INDEX_STATE, {"name": UNIQUE_PRIMARY_INDEX})).scalar()
        violations: list[Violation] = []
        for row in await conn.execute(VIOLATIONS):
            if not violations or (violations[-1].organization_id, violations[-1].patient_id) != (
                row.organization_id,
                row.patient_id,
            ):
                violations.append(Violation(row.organization_id, row.patient_id))
            violations[-1].primaries.append(Primary(row.id, row.provider_id, row.assigned_at))
        without = [tuple(row) for row in await conn.execute(WITHOUT_PRIMARY)]
    state = "missing" if valid is None else ("valid" if valid else "invalid")
    return Report(state, violations, without)


def print_report(report: Report, echo: Callable[[str], None] = print) -> None:
    """Write the human-readable report (ids only, never names)."""
    echo(f"Index {UNIQUE_PRIMARY_INDEX}: {report.index_state}")
    for v in report.violations:
        echo(
            f"❌ organization {v.organization_id} patient {v.patient_id}: "
            f"{len(v.primaries)} primary providers"
        )
        for p in v.primaries:
            verdict = "keep" if p is v.kept else "demote to secondary"
            echo(
                f"     provider {p.provider_id}  assigned_at {p.assigned_at.isoformat()}  "
                f"(assignment {p.assignment_id})  -> migration would {verdict}"
            )
    if report.without_primary:
        echo(
            f"⚠️  WARNING: {len(report.without_primary)} patient(s) have a care team "
            "but no primary provider:"
        )
        for org, patient, members in report.without_primary:
            echo(f"     organization {org} patient {patient} ({members} member(s))")
    if report.violations:
        echo(f"❌ FAILED: {len(report.violations)} patient(s) with more than one primary provider")
    else:
        echo("✅ SUCCESS: No violations found")


def describe_connection_error(err: BaseException) -> str:
    """One line saying why the database could not be used (no traceback, no secrets)."""
    cause: BaseException = err
    while isinstance(cause, SQLAlchemyError) and cause.__cause__ is not None:
        cause = cause.__cause__
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"{type(cause).__name__}: {first_line}"


async def main() -> int:
    """The diagnostic as a program: print the report, return the exit code."""
    try:
        settings = get_settings()
        engine = create_engine(resolve_database_url(settings), settings)
    except ConfigurationError as err:
        print(f"❌ ERROR: {err}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        report = await run_check(engine)
    except CannotRun as err:
        print(f"❌ ERROR: {err}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except DATABASE_ERRORS as err:
        print(
            f"❌ ERROR: cannot query the database: {describe_connection_error(err)}",
            file=sys.stderr,
        )
        return EXIT_CANNOT_RUN
    finally:
        await engine.dispose()
    print_report(report)
    return report.exit_code
