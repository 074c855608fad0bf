"""Find (and optionally fix) violations of "at most one primary provider per
(organization, patient)".

Runs as the owner, across all organizations (or one, with `organization_id`), before or
after the unique-primary migration. Results are streamed from a server-side cursor and
written as they arrive, so memory stays flat however large the table is. Behind
scripts/check_primary_provider_violations.py and `careteam check`.

Exit codes: 0 no violations, 1 violations found, 2 the check could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from src import primary_rule
from src.config import ConfigurationError, get_settings
from src.db import create_engine, resolve_database_url
from src.models import UNIQUE_PRIMARY_INDEX

EXIT_CLEAN, EXIT_VIOLATIONS, EXIT_CANNOT_RUN = 0, 1, 2
FIX_ACTOR = "careteam check --fix"

# Every (organization, patient) with more than one primary, with its primaries in the
# order the dedupe ranks them: the first one (latest assigned_at, tie: highest id) is
# the one it keeps. One scan finds the pairs; the details come from the
# (organization_id, patient_id, provider_id) index, pair by pair.
VIOLATIONS = text("""
    SELECT d.organization_id, d.patient_id, p.id, p.provider_id, p.assigned_at
    FROM (
        SELECT organization_id, patient_id
        FROM care_team_assignments
        WHERE is_primary_provider
          AND (CAST(:org AS uuid) IS NULL OR organization_id = CAST(:org AS uuid))
        GROUP BY organization_id, patient_id
        HAVING count(*) > 1
    ) AS d
    CROSS JOIN LATERAL (
        SELECT a.id, a.provider_id, a.assigned_at
        FROM care_team_assignments AS a
        WHERE a.organization_id = d.organization_id AND a.patient_id = d.patient_id
          AND a.is_primary_provider
    ) AS p
    ORDER BY d.organization_id, d.patient_id, p.assigned_at DESC, p.id DESC
""")

# Patients with a care team but no primary provider: allowed, but worth a look.
WITHOUT_PRIMARY = text("""
    SELECT organization_id, patient_id, count(*) AS members
    FROM care_team_assignments
    WHERE CAST(:org AS uuid) IS NULL OR organization_id = CAST(:org AS uuid)
    GROUP BY organization_id, patient_id
    HAVING NOT bool_or(is_primary_provider)
    ORDER BY organization_id, patient_id
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
        """The primary the dedupe keeps (latest assigned_at, tie: highest id)."""
        return self.primaries[0]

    def as_json(self) -> dict[str, Any]:
        return {
            "organization_id": str(self.organization_id),
            "patient_id": str(self.patient_id),
            "primaries": [
                {
                    "assignment_id": str(p.assignment_id),
                    "provider_id": str(p.provider_id),
                    "assigned_at": p.assigned_at.isoformat(),
                    "action": "keep" if p is self.kept else "demote",
                }
                for p in self.primaries
            ],
        }


@dataclass
class WithoutPrimary:
    organization_id: uuid.UUID
    patient_id: uuid.UUID
    members: int


@dataclass(frozen=True)
class Options:
    organization_id: uuid.UUID | None = None
    limit: int | None = None  # how many of each kind to list (all are counted)
    as_json: bool = False
    fix: bool = False
    execute: bool = False


@dataclass
class Summary:
    index_state: str = "missing"
    violations: int = 0
    demotions_needed: int = 0
    without_primary: int = 0
    demoted: int | None = None  # set when --fix --execute ran

    @property
    def exit_code(self) -> int:
        remaining = self.violations if self.demoted is None else 0
        return EXIT_VIOLATIONS if remaining else EXIT_CLEAN


async def _begin_snapshot(conn: AsyncConnection) -> None:
    """One read-only snapshot for the whole report; refuses what would mislead."""
    await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
    if not (await conn.execute(TABLE_EXISTS)).scalar_one():
        raise CannotRun("table care_team_assignments does not exist: run the migrations first")
    if not (await conn.execute(CAN_SEE_ALL_TENANTS)).scalar():
        raise CannotRun(
            "this role cannot see every organization's rows (row-level security); "
            "connect as a superuser or a role with BYPASSRLS"
        )


async def stream_violations(
    conn: AsyncConnection, organization_id: uuid.UUID | None
) -> AsyncIterator[Violation]:
    """Violations one by one, in (organization, patient) order, from a server-side cursor."""
    current: Violation | None = None
    org = str(organization_id) if organization_id else None
    result = await conn.stream(VIOLATIONS.execution_options(yield_per=1000), {"org": org})
    async for row in result:
        if current is None or (current.organization_id, current.patient_id) != (
            row.organization_id,
            row.patient_id,
        ):
            if current is not None:
                yield current
            current = Violation(row.organization_id, row.patient_id)
        current.primaries.append(Primary(row.id, row.provider_id, row.assigned_at))
    if current is not None:
        yield current


async def stream_without_primary(
    conn: AsyncConnection, organization_id: uuid.UUID | None
) -> AsyncIterator[WithoutPrimary]:
    org = str(organization_id) if organization_id else None
    result = await conn.stream(WITHOUT_PRIMARY.execution_options(yield_per=1000), {"org": org})
    async for row in result:
        yield WithoutPrimary(row.organization_id, row.patient_id, row.members)


class Reporter:
    """Writes the report as it streams: human-readable lines, or one JSON object."""

    def __init__(self, out: TextIO, options: Options) -> None:
        self.out, self.options = out, options
        self._first_item = True

    def _listed(self, count: int) -> bool:
        return self.options.limit is None or count <= self.options.limit

    def _json(self, fragment: str) -> None:
        self.out.write(fragment)

    def start(self, index_state: str) -> None:
        if self.options.as_json:
            org = self.options.organization_id
            self._json(
                "{"
                f'"index_name": "{UNIQUE_PRIMARY_INDEX}", "index_state": "{index_state}", '
                f'"organization_id": {json.dumps(str(org) if org else None)}, '
                '"violations": ['
            )
            return
        self.out.write(f"Index {UNIQUE_PRIMARY_INDEX}: {index_state}\n")
        if index_state == "invalid":
            self.out.write(
                "⚠️  WARNING: the index is INVALID (an interrupted build); it does not enforce "
                "the rule. Re-run the migration: it drops and rebuilds it.\n"
            )

    def violation(self, number: int, v: Violation) -> None:
        if not self._listed(number):
            return
        if self.options.as_json:
            self._json(("" if number == 1 else ", ") + json.dumps(v.as_json()))
            return
        self.out.write(
            f"❌ organization {v.organization_id} patient {v.patient_id}: "
            f"{len(v.primaries)} primary providers\n"
        )
        for p in v.primaries:
            verdict = "keep" if p is v.kept else "demote to secondary"
            self.out.write(
                f"     provider {p.provider_id}  assigned_at {p.assigned_at.isoformat()}  "
                f"(assignment {p.assignment_id})  -> migration would {verdict}\n"
            )

    def start_without_primary(self, summary: Summary) -> None:
        if self.options.as_json:
            self._json('], "without_primary": [')
        elif summary.violations and not self._listed(summary.violations):
            self.out.write(
                f"     ... and {summary.violations - (self.options.limit or 0)} more "
                "(raise --limit to list them)\n"
            )

    def without_primary(self, number: int, w: WithoutPrimary) -> None:
        if not self._listed(number):
            return
        if self.options.as_json:
            item = {
                "organization_id": str(w.organization_id),
                "patient_id": str(w.patient_id),
                "members": w.members,
            }
            self._json(("" if number == 1 else ", ") + json.dumps(item))
            return
        if number == 1:
            self.out.write("⚠️  WARNING: patients with a care team but no primary provider:\n")
        self.out.write(
            f"     organization {w.organization_id} patient {w.patient_id} "
            f"({w.members} member(s))\n"
        )

    def finish(self, s: Summary) -> None:
        if self.options.as_json:
            status = "violations" if s.exit_code == EXIT_VIOLATIONS else "clean"
            fix = None
            if self.options.fix:
                fix = {
                    "executed": s.demoted is not None,
                    "demotions": s.demoted if s.demoted is not None else s.demotions_needed,
                }
            self._json(
                f'], "violations_total": {s.violations}, '
                f'"demotions_needed": {s.demotions_needed}, '
                f'"without_primary_total": {s.without_primary}, '
                f'"fix": {json.dumps(fix)}, "status": "{status}"}}\n'
            )
            return
        if s.without_primary:
            more = s.without_primary - (self.options.limit or s.without_primary)
            tail = f" ({more} more not listed)" if more > 0 else ""
            self.out.write(f"⚠️  {s.without_primary} patient(s) without a primary provider{tail}\n")
        if self.options.fix and s.demoted is None and s.violations:
            self.out.write(
                f"DRY RUN: --fix would demote {s.demotions_needed} assignment(s) of "
                f"{s.violations} patient(s) to secondary (one migration_dedupe event each). "
                "Add --execute to apply.\n"
            )
        if s.demoted is not None:
            self.out.write(
                f"🔧 FIXED: demoted {s.demoted} duplicate primary assignment(s) to secondary "
                "(recorded as migration_dedupe events)\n"
            )
        if s.exit_code == EXIT_VIOLATIONS:
            self.out.write(
                f"❌ FAILED: {s.violations} patient(s) with more than one primary provider\n"
            )
        else:
            self.out.write("✅ SUCCESS: No violations found\n")


async def run_check(engine: AsyncEngine, options: Options, out: TextIO) -> Summary:
    """Stream the report to `out`; with fix+execute, apply the dedupe. Raises CannotRun."""
    reporter = Reporter(out, options)
    summary = Summary()
    async with engine.connect() as conn:
        await _begin_snapshot(conn)
        summary.index_state = await conn.run_sync(primary_rule.index_state)
        reporter.start(summary.index_state)
        async for violation in stream_violations(conn, options.organization_id):
            summary.violations += 1
            summary.demotions_needed += len(violation.primaries) - 1
            reporter.violation(summary.violations, violation)
        reporter.start_without_primary(summary)
        async for patient in stream_without_primary(conn, options.organization_id):
            summary.without_primary += 1
            reporter.without_primary(summary.without_primary, patient)
        await conn.rollback()
    if options.fix and options.execute and summary.violations:
        summary.demoted = await fix_violations(engine, options.organization_id)
    reporter.finish(summary)
    return summary


async def fix_violations(engine: AsyncEngine, organization_id: uuid.UUID | None) -> int:
    """The migration's dedupe (same rule, same lock, same events), batch by batch."""
    async with engine.connect() as connection:
        conn = await connection.execution_options(isolation_level="AUTOCOMMIT")

        def work(sync_conn: Any) -> int:
            primary_rule.require_bypass_rls(sync_conn)
            with primary_rule.online_session(sync_conn, lock_timeout_ms=2000):
                return primary_rule.dedupe(
                    sync_conn, actor=FIX_ACTOR, organization_id=organization_id
                )

        demoted: int = await conn.run_sync(work)
        return demoted


def describe_connection_error(err: BaseException) -> str:
    """One line saying why the database could not be used (no traceback, no secrets)."""
    cause: BaseException = err
    while isinstance(cause, SQLAlchemyError) and cause.__cause__ is not None:
        cause = cause.__cause__
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"{type(cause).__name__}: {first_line}"


def _error(message: str, options: Options) -> int:
    if options.as_json:
        sys.stdout.write(json.dumps({"status": "error", "error": message}) + "\n")
    print(f"❌ ERROR: {message}", file=sys.stderr)
    return EXIT_CANNOT_RUN


async def check(options: Options, out: TextIO = sys.stdout) -> int:
    """The diagnostic as a program: write the report, return the exit code."""
    try:
        settings = get_settings()
        engine = create_engine(resolve_database_url(settings), settings)
    except ConfigurationError as err:
        return _error(str(err), options)
    try:
        summary = await run_check(engine, options, out)
    except (CannotRun, primary_rule.IndexBuildFailed) as err:
        return _error(str(err), options)
    except DATABASE_ERRORS as err:
        return _error(f"cannot query the database: {describe_connection_error(err)}", options)
    finally:
        await engine.dispose()
    return summary.exit_code


def _organization(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1: {value!r}")
    return int(value)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=description or __doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--organization", type=_organization, metavar="ORG_ID", help="check one organization only"
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="list at most N of each kind (all are still counted)",
    )
    parser.add_argument(
        "--fix", action="store_true", help="say what the dedupe would change (dry run)"
    )
    parser.add_argument(
        "--execute",
        action="store_true",
        help="with --fix: apply the dedupe (same rule, lock and events as the migration)",
    )
    args = parser.parse_args(argv)
    if args.execute and not args.fix:
        parser.error("--execute only goes with --fix")
    return Options(
        organization_id=args.organization,
        limit=args.limit,
        as_json=args.json,
        fix=args.fix,
        execute=args.execute,
    )


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    return asyncio.run(check(parse_args(argv, description)))
