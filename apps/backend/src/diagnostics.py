"""Find (and optionally fix) violations of "at most one primary provider per
(organization, patient)".

Runs as the owner, across all organizations (or one), before or after the
unique-primary migration. One scan of care_team_assignments finds both the patients
with several primaries and those with a care team but no primary; the rows are streamed
(COPY) and written as they arrive, so memory stays flat however large the table is.
Then, from revision 20261128_care_team_periods on, a second scan checks that the
current care teams equal the open periods (a membership out of step is a violation),
and a third lists the primaries whose provider is inactive (a warning: transfer their
panels). Behind scripts/check_primary_provider_violations.py and `careteam check`.

Exit codes: 0 no violations (or all fixed), 1 violations found, 2 the check could not run.

This module talks to PostgreSQL with asyncpg directly and imports the ORM only for
--fix --execute: on a large table its start-up time is part of what operators wait for.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import io
import json
import shutil
import sys
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import asyncpg

from src import primary_index
from src.config import ConfigurationError, get_settings
from src.embedded import resolve_database_url
from src.primary_index import UNIQUE_PRIMARY_INDEX

EXIT_CLEAN, EXIT_VIOLATIONS, EXIT_CANNOT_RUN = 0, 1, 2
DESCRIPTION = (
    "Check the care teams. Violations: patients with more than one primary provider, and "
    "memberships whose open period does not match the care team. Warnings: care teams "
    "without a primary, members whose provider is inactive, and patient identifiers not "
    "in normal form or that collide once normalized. With --fix, dedupe the several "
    "primaries as the migration does. Exit 0 clean, 1 violations found, 2 could not run."
)
FIX_ACTOR = "careteam check --fix"

# One pass over the table: per (organization, patient), how many primaries and members;
# only the groups that are not exactly one primary come out. For those with several,
# their primaries follow (from the (organization_id, patient_id, provider_id) index), in
# the order the dedupe ranks them: the first one (latest assigned_at, tie: highest id)
# is the one it keeps. The ORDER BY keeps a patient's rows together (the findings are
# few, so sorting them costs little next to the scan).
FINDINGS = """
SELECT d.organization_id, d.patient_id, d.primaries, d.members,
       p.id AS assignment_id, p.provider_id, p.assigned_at
FROM (
    SELECT organization_id, patient_id,
           count(*) FILTER (WHERE is_primary_provider) AS primaries,
           count(*) AS members
    FROM care_team_assignments
    WHERE {organization_filter}
    GROUP BY organization_id, patient_id
    HAVING count(*) FILTER (WHERE is_primary_provider) <> 1
) AS d
LEFT JOIN LATERAL (
    SELECT a.id, a.provider_id, a.assigned_at
    FROM care_team_assignments AS a
    WHERE d.primaries > 1
      AND a.organization_id = d.organization_id AND a.patient_id = d.patient_id
      AND a.is_primary_provider
    ORDER BY a.assigned_at DESC, a.id DESC
) AS p ON true
ORDER BY d.organization_id, d.patient_id, p.assigned_at DESC, p.id DESC
"""

# Every membership whose open period does not say the same: an assignment without an
# open period in its role, or an open period without an assignment in that role.
OUT_OF_STEP = """
SELECT coalesce(a.organization_id, p.organization_id) AS organization_id,
       coalesce(a.patient_id, p.patient_id) AS patient_id,
       coalesce(a.provider_id, p.provider_id) AS provider_id,
       CASE WHEN a.organization_id IS NULL THEN ''
            WHEN a.is_primary_provider THEN 'primary' ELSE 'secondary' END AS assigned,
       coalesce(p.role, '') AS open_period
FROM (SELECT organization_id, patient_id, provider_id, is_primary_provider
      FROM care_team_assignments WHERE {organization_filter}) AS a
FULL JOIN (SELECT organization_id, patient_id, provider_id, role
           FROM care_team_periods WHERE upper_inf(valid) AND {organization_filter}) AS p
    ON p.organization_id = a.organization_id AND p.patient_id = a.patient_id
   AND p.provider_id = a.provider_id
WHERE a.organization_id IS NULL OR p.organization_id IS NULL
   OR (p.role = 'primary') <> a.is_primary_provider
ORDER BY 1, 2, 3
"""

# Members whose provider is inactive: primaries (data from before deactivation was
# refused) and secondaries (from before deactivation ended a provider's memberships:
# PATCH {"active": false} again ends them).
_INACTIVE_MEMBERS = """
SELECT a.organization_id, a.patient_id, a.provider_id, '' AS assigned, '' AS open_period
FROM providers AS v
JOIN care_team_assignments AS a
    ON a.organization_id = v.organization_id AND a.provider_id = v.id
   AND {primary}a.is_primary_provider
WHERE NOT v.active AND {{inactive_filter}}
ORDER BY 1, 2
"""
INACTIVE_PRIMARIES = _INACTIVE_MEMBERS.format(primary="")
INACTIVE_SECONDARIES = _INACTIVE_MEMBERS.format(primary="NOT ")

# Patient identifiers written before the identifier rule that its migration could not
# bring into form (20261207_normalized_identifiers): with a control character, or whose
# normal form (NFC, no surrounding space) another identifier of the organization holds.
# Reported by patient, never by value.
_NORMAL = "normalize(regexp_replace({column}, '^[[:space:]]+|[[:space:]]+$', '', 'g'), NFC)"
IDENTIFIERS_NOT_NORMAL = """
SELECT organization_id, patient_id, '' AS provider_id, '' AS assigned, '' AS open_period
FROM patient_identifiers
WHERE {identifier_filter}
  AND (system IS NOT NFC NORMALIZED OR value IS NOT NFC NORMALIZED
       OR system ~ '^[[:space:]]|[[:space:]]$' OR value ~ '^[[:space:]]|[[:space:]]$'
       OR system ~ '[[:cntrl:]]' OR value ~ '[[:cntrl:]]')
ORDER BY 1, 2
"""
IDENTIFIER_COLLISIONS = f"""
SELECT organization_id, patient_id, '' AS provider_id, '' AS assigned, '' AS open_period
FROM (SELECT organization_id, patient_id,
             count(*) OVER (PARTITION BY organization_id, {_NORMAL.format(column="system")},
                            {_NORMAL.format(column="value")}) AS holders
      FROM patient_identifiers
      WHERE {{identifier_filter}}) AS normalized
WHERE holders > 1
ORDER BY 1, 2
"""
HAS_IDENTIFIERS = "SELECT to_regclass('patient_identifiers') IS NOT NULL"

HAS_PERIODS = "SELECT to_regclass('care_team_periods') IS NOT NULL"

CAN_SEE_ALL_TENANTS = "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"

# What a failed connection or query raises.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Writer(Protocol):
    """Where the report goes: a text stream (stdout, a file, or a sink)."""

    def write(self, text: str, /) -> int: ...


class CannotRun(Exception):
    """The check cannot give a trustworthy answer; the message says why."""


@dataclass(frozen=True)
class Primary:
    assignment_id: str
    provider_id: str
    assigned_at: datetime.datetime


@dataclass
class Finding:
    """A patient with several primaries (a violation) or with none (a warning).

    Ids stay text, as PostgreSQL wrote them: they are only ever printed."""

    organization_id: str
    patient_id: str
    members: int
    primaries: list[Primary] = field(default_factory=list)

    @property
    def is_violation(self) -> bool:
        return len(self.primaries) > 1

    @property
    def kept(self) -> Primary:
        """The primary the dedupe keeps (latest assigned_at, tie: highest id)."""
        return self.primaries[0]

    def as_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "kind": "several_primaries" if self.is_violation else "no_primary",
            "organization_id": self.organization_id,
            "patient_id": self.patient_id,
            "members": self.members,
        }
        if self.is_violation:
            item["primaries"] = [
                {
                    "assignment_id": p.assignment_id,
                    "provider_id": p.provider_id,
                    "assigned_at": p.assigned_at.isoformat(),
                    "action": "keep" if p is self.kept else "demote",
                }
                for p in self.primaries
            ]
        return item


@dataclass(frozen=True)
class MemberFinding:
    """One membership: out of step with its periods (a violation), or a primary or a
    secondary whose provider is inactive (a warning)."""

    kind: str  # OUT_OF_STEP_KIND, INACTIVE_KIND or INACTIVE_SECONDARY_KIND
    organization_id: str
    patient_id: str
    provider_id: str
    assigned: str  # the assignment's role ('' none); out of step only
    open_period: str  # the open period's role ('' none); out of step only

    @property
    def is_violation(self) -> bool:
        return self.kind == OUT_OF_STEP_KIND

    def as_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "kind": self.kind,
            "organization_id": self.organization_id,
            "patient_id": self.patient_id,
            "provider_id": self.provider_id,
        }
        if self.is_violation:
            item["assigned_role"] = self.assigned or None
            item["open_period_role"] = self.open_period or None
        return item


OUT_OF_STEP_KIND, INACTIVE_KIND = "period_out_of_step", "inactive_primary"
INACTIVE_SECONDARY_KIND = "inactive_secondary"
IDENTIFIER_NOT_NORMAL_KIND = "identifier_not_normal"
IDENTIFIER_COLLISION_KIND = "identifier_collision"
# Each kind of MemberFinding: the Summary's counter of it, and (for a warning) its line.
MEMBER_COUNTERS = {
    OUT_OF_STEP_KIND: "out_of_step",
    INACTIVE_KIND: "inactive_primaries",
    INACTIVE_SECONDARY_KIND: "inactive_secondaries",
    IDENTIFIER_NOT_NORMAL_KIND: "identifiers_not_normal",
    IDENTIFIER_COLLISION_KIND: "identifier_collisions",
}
MEMBER_WARNINGS = {
    INACTIVE_KIND: "primary provider {provider} is inactive",
    INACTIVE_SECONDARY_KIND: "secondary provider {provider} is inactive",
    IDENTIFIER_NOT_NORMAL_KIND: "an identifier has a control character or a space at either end",
    IDENTIFIER_COLLISION_KIND: "an identifier is another one's of the organization once "
    "normalized (NFC, no surrounding space)",
}


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
    periods_checked: bool = False  # only from revision 20261128_care_team_periods on
    out_of_step: int = 0
    inactive_primaries: int = 0
    inactive_secondaries: int = 0
    identifiers_not_normal: int = 0
    identifier_collisions: int = 0
    demoted: int | None = None  # set when --fix --execute ran

    @property
    def exit_code(self) -> int:
        remaining = self.violations if self.demoted is None else 0
        return EXIT_VIOLATIONS if remaining or self.out_of_step else EXIT_CLEAN

    def count(self, finding: Finding | MemberFinding) -> int:
        """Count the finding; its number among those of its kind."""
        if isinstance(finding, MemberFinding):
            counter = MEMBER_COUNTERS[finding.kind]
            number: int = getattr(self, counter) + 1
            setattr(self, counter, number)
            return number
        if finding.is_violation:
            self.violations += 1
            self.demotions_needed += len(finding.primaries) - 1
            return self.violations
        self.without_primary += 1
        return self.without_primary


class CsvStream:
    """Turns a COPY stream (CSV, arbitrary chunk boundaries) into rows, with the csv
    module, calling `on_row` for each.

    COPY rather than a cursor: PostgreSQL runs a cursor's query without parallel
    workers (it might be suspended), a COPY's query with them; and COPY streams all the
    same, chunk by chunk, so memory stays flat.
    """

    def __init__(self, on_row: Callable[[list[str]], None]) -> None:
        self.on_row = on_row
        self.partial = b""  # the start of a line, up to the end of the last chunk
        self.record: list[bytes] = []  # lines of a record whose quoted field goes on
        self.quotes = 0

    async def feed(self, chunk: bytes) -> None:
        """Parse the whole records of what has arrived: a chunk may end inside a line,
        and a quoted field may hold a newline (a record is whole when its quotes pair)."""
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        whole: list[bytes] = []
        for line in lines:
            self.record.append(line)
            self.quotes += line.count(b'"')
            if self.quotes % 2 == 0:
                whole += self.record
                self.record, self.quotes = [], 0
        self._rows(whole)

    def _rows(self, lines: list[bytes]) -> None:
        if lines:
            for cols in csv.reader(io.StringIO(b"\n".join(lines).decode() + "\n")):
                self.on_row(cols)

    def close(self) -> None:
        if self.partial or self.record:
            self._rows([*self.record, self.partial] if self.partial else self.record)
            self.partial, self.record, self.quotes = b"", [], 0


class FindingParser(CsvStream):
    """The rule's findings from the FINDINGS stream: a patient's rows come together."""

    def __init__(self, on_finding: Callable[[Finding], None]) -> None:
        super().__init__(self._row)
        self.on_finding = on_finding
        self.current: Finding | None = None

    def _row(self, cols: list[str]) -> None:
        org, patient, _primaries, members, assignment, provider, assigned_at = cols
        current = self.current
        if current is None or current.patient_id != patient or current.organization_id != org:
            if current is not None:
                self.on_finding(current)
            current = self.current = Finding(org, patient, int(members))
        if assignment:  # only patients with several primaries have these columns
            current.primaries.append(
                Primary(assignment, provider, datetime.datetime.fromisoformat(assigned_at))
            )

    def close(self) -> None:
        super().close()
        if self.current is not None:
            self.on_finding(self.current)
            self.current = None


def _organization_filter(organization_id: uuid.UUID | None, column: str = "organization_id") -> str:
    """A WHERE condition on `column` (a validated UUID: COPY takes no parameters)."""
    if organization_id is None:
        return "true"
    return f"{column} = '{uuid.UUID(str(organization_id))}'"


async def _copy(conn: asyncpg.Connection, query: str, stream: CsvStream) -> None:
    await conn.copy_from_query(query, output=stream.feed, format="csv")
    stream.close()


async def stream_findings(
    conn: asyncpg.Connection,
    organization_id: uuid.UUID | None,
    on_finding: Callable[[Finding], None],
) -> None:
    """Call `on_finding` for each finding as it arrives (inside the caller's transaction)."""
    query = FINDINGS.format(organization_filter=_organization_filter(organization_id))
    await conn.execute("SET LOCAL timezone = 'UTC'")
    await conn.execute("SET LOCAL datestyle = 'ISO'")
    await _copy(conn, query, FindingParser(on_finding))


async def stream_member_findings(
    conn: asyncpg.Connection,
    organization_id: uuid.UUID | None,
    on_finding: Callable[[MemberFinding], None],
    *,
    periods: bool,
    identifiers: bool = False,
) -> None:
    """The memberships out of step with their periods (when `periods`), then the
    primaries and the secondaries whose provider is inactive, then (when `identifiers`)
    the identifiers not in normal form and those that collide once normalized."""
    conditions = {
        "organization_filter": _organization_filter(organization_id),
        "inactive_filter": _organization_filter(organization_id, "v.organization_id"),
        "identifier_filter": _organization_filter(organization_id, "organization_id"),
    }
    queries = [(INACTIVE_KIND, INACTIVE_PRIMARIES), (INACTIVE_SECONDARY_KIND, INACTIVE_SECONDARIES)]
    if periods:
        queries.insert(0, (OUT_OF_STEP_KIND, OUT_OF_STEP))
    if identifiers:
        queries += [
            (IDENTIFIER_NOT_NORMAL_KIND, IDENTIFIERS_NOT_NORMAL),
            (IDENTIFIER_COLLISION_KIND, IDENTIFIER_COLLISIONS),
        ]
    for kind, query in queries:

        def found(cols: list[str], kind: str = kind) -> None:
            on_finding(MemberFinding(kind, *cols))

        await _copy(conn, query.format_map(conditions), CsvStream(found))


class Reporter:
    """Writes the report as it streams: human-readable lines, or one JSON object."""

    def __init__(self, out: Writer, options: Options) -> None:
        self.out, self.options = out, options
        self._items = 0

    def _listed(self, count: int) -> bool:
        return self.options.limit is None or count <= self.options.limit

    def _members(self, members: dict[str, Any]) -> str:
        """`"key": value, ` for each member, every key and value written by json."""
        return "".join(f"{json.dumps(k)}: {json.dumps(v)}, " for k, v in members.items())

    def start(self, index_state: str, periods_checked: bool) -> None:
        if self.options.as_json:
            # One JSON object, streamed: its members first, then the findings one by
            # one, then the totals (see finish); every value is written by json.
            org = self.options.organization_id
            header = {
                "index_name": UNIQUE_PRIMARY_INDEX,
                "index_state": index_state,
                "organization_id": str(org) if org else None,
                "periods_checked": periods_checked,
            }
            self.out.write("{" + self._members(header) + '"findings": [')
            return
        self.out.write(f"Index {UNIQUE_PRIMARY_INDEX}: {index_state}\n")
        if not periods_checked:
            self.out.write(
                "Periods: not checked (no care_team_periods before revision "
                "20261128_care_team_periods)\n"
            )
        if index_state == "invalid":
            self.out.write(
                "⚠️  WARNING: the index is INVALID (an interrupted build); it does not enforce "
                "the rule. Re-run the migration: it drops and rebuilds it.\n"
            )

    def finding(self, f: Finding | MemberFinding, number: int) -> None:
        """Write the finding, the `number`th of its kind (unless past --limit)."""
        if not self._listed(number):
            return
        if self.options.as_json:
            self.out.write(("" if self._items == 0 else ", ") + json.dumps(f.as_json()))
            self._items += 1
            return
        if isinstance(f, MemberFinding):
            where = f"organization {f.organization_id} patient {f.patient_id}"
            if not f.is_violation:
                warning = MEMBER_WARNINGS[f.kind].format(provider=f.provider_id)
                self.out.write(f"⚠️  WARNING: {where}: {warning}\n")
                return
            self.out.write(
                f"❌ {where} provider {f.provider_id}: assigned as {f.assigned or 'nothing'}, "
                f"open period {f.open_period or 'none'}\n"
            )
            return
        if not f.is_violation:
            self.out.write(
                f"⚠️  WARNING: organization {f.organization_id} patient {f.patient_id}: "
                f"care team of {f.members}, no primary provider\n"
            )
            return
        self.out.write(
            f"❌ organization {f.organization_id} patient {f.patient_id}: "
            f"{len(f.primaries)} primary providers\n"
        )
        for p in f.primaries:
            verdict = "keep" if p is f.kept else "demote to secondary"
            self.out.write(
                f"     provider {p.provider_id}  assigned_at {p.assigned_at.isoformat()}  "
                f"(assignment {p.assignment_id})  -> migration would {verdict}\n"
            )

    def _warnings(self, s: Summary) -> None:
        """The warnings' totals, each with what to do about it."""
        if s.without_primary:
            self.out.write(f"⚠️  {s.without_primary} patient(s) without a primary provider\n")
        if s.inactive_primaries:
            self.out.write(
                f"⚠️  {s.inactive_primaries} patient(s) whose primary provider is inactive "
                "(transfer the provider's panel: careteam panel transfer)\n"
            )
        if s.inactive_secondaries:
            self.out.write(
                f"⚠️  {s.inactive_secondaries} care team membership(s) of an inactive provider "
                '(deactivate it again to end them: PATCH {"active": false})\n'
            )
        if s.identifiers_not_normal or s.identifier_collisions:
            self.out.write(
                f"⚠️  {s.identifiers_not_normal} identifier(s) not in normal form and "
                f"{s.identifier_collisions} that collide once normalized (correct the "
                "patients' identifiers: PATCH /v1/patients/<id>)\n"
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
            totals = {
                "violations_total": s.violations,
                "demotions_needed": s.demotions_needed,
                "without_primary_total": s.without_primary,
                "periods_out_of_step_total": s.out_of_step,
                "inactive_primary_total": s.inactive_primaries,
                "inactive_secondary_total": s.inactive_secondaries,
                "identifier_not_normal_total": s.identifiers_not_normal,
                "identifier_collision_total": s.identifier_collisions,
                "fix": fix,
            }
            self.out.write("], " + self._members(totals) + f'"status": {json.dumps(status)}}}\n')
            return
        limit = self.options.limit
        for kind, total in (
            ("patient(s) with several primaries", s.violations),
            ("patient(s) without a primary", s.without_primary),
            ("membership(s) out of step with their periods", s.out_of_step),
            ("primaries whose provider is inactive", s.inactive_primaries),
            ("secondaries whose provider is inactive", s.inactive_secondaries),
            ("identifiers not in normal form", s.identifiers_not_normal),
            ("identifiers that collide once normalized", s.identifier_collisions),
        ):
            if limit is not None and total > limit:
                self.out.write(
                    f"     ({total - limit} more {kind} not listed; raise --limit to list them)\n"
                )
        self._warnings(s)
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
        if s.out_of_step:
            after = " after the fix" if s.demoted is not None else ""
            self.out.write(
                f"❌ FAILED{after}: {s.out_of_step} membership(s) whose open period does not match "
                "the care team (see the runbook: periods out of step)\n"
            )
        if s.violations and s.demoted is None:
            self.out.write(
                f"❌ FAILED: {s.violations} patient(s) with more than one primary provider\n"
            )
        if s.exit_code == EXIT_CLEAN:
            self.out.write("✅ SUCCESS: No violations found\n")


async def _check_can_run(conn: asyncpg.Connection) -> None:
    if not await conn.fetchval("SELECT to_regclass('care_team_assignments') IS NOT NULL"):
        raise CannotRun("table care_team_assignments does not exist: run the migrations first")
    if not await conn.fetchval(CAN_SEE_ALL_TENANTS):
        raise CannotRun(
            "this role cannot see every organization's rows (row-level security); "
            "connect as a superuser or a role with BYPASSRLS"
        )


async def run_check(url: str, options: Options, out: Writer) -> Summary:
    """Stream the report to `out`; with fix+execute, apply the dedupe. Raises CannotRun."""
    reporter = Reporter(out, options)
    summary = Summary()
    conn = await asyncpg.connect(url, timeout=get_settings().db_connect_timeout_s)
    try:
        await _check_can_run(conn)
        # One read-only snapshot for the whole report.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            # A maintenance scan of the whole table: let PostgreSQL spread it over
            # parallel workers (up to max_parallel_workers_per_gather) when it can.
            await conn.execute("SET LOCAL parallel_setup_cost = 0")
            await conn.execute("SET LOCAL parallel_tuple_cost = 0")
            summary.index_state = primary_index.index_state(
                await conn.fetchval(primary_index.INDEX_VALID)
            )
            summary.periods_checked = bool(await conn.fetchval(HAS_PERIODS))
            reporter.start(summary.index_state, summary.periods_checked)

            def count_and_report(finding: Finding | MemberFinding) -> None:
                reporter.finding(finding, summary.count(finding))

            await stream_findings(conn, options.organization_id, count_and_report)
            await stream_member_findings(
                conn,
                options.organization_id,
                count_and_report,
                periods=summary.periods_checked,
                identifiers=bool(await conn.fetchval(HAS_IDENTIFIERS)),
            )
    finally:
        await conn.close()
    if options.fix and options.execute and summary.violations:
        summary.demoted = await fix_violations(url, options.organization_id)
        if summary.periods_checked:
            # Demoting a duplicate puts its periods back in step (the trigger opens its
            # secondary period): what counts now is what is left.
            summary.out_of_step = await count_out_of_step(url, options.organization_id)
    reporter.finish(summary)
    return summary


async def count_out_of_step(url: str, organization_id: uuid.UUID | None) -> int:
    conn = await asyncpg.connect(url, timeout=get_settings().db_connect_timeout_s)
    try:
        query = OUT_OF_STEP.format(organization_filter=_organization_filter(organization_id))
        return int(await conn.fetchval(f"SELECT count(*) FROM ({query}) AS d"))
    finally:
        await conn.close()


async def fix_violations(url: str, organization_id: uuid.UUID | None) -> int:
    """The migration's dedupe (same rule, same lock, same events), batch by batch."""
    # Imported here: only this path needs the ORM (see the module docstring).
    from src import primary_dedupe  # noqa: PLC0415
    from src.db import create_engine  # noqa: PLC0415

    engine = create_engine(url, get_settings())
    try:
        async with engine.connect() as connection:
            conn = await connection.execution_options(isolation_level="AUTOCOMMIT")

            def work(sync_conn: Any) -> int:
                primary_dedupe.require_bypass_rls(sync_conn)
                with primary_dedupe.online_session(sync_conn, lock_timeout_ms=2000):
                    return primary_dedupe.dedupe(
                        sync_conn, actor=FIX_ACTOR, organization_id=organization_id
                    )

            demoted: int = await conn.run_sync(work)
            return demoted
    finally:
        await engine.dispose()


def describe_connection_error(err: BaseException) -> str:
    """One line saying why the database could not be used (no traceback, no secrets)."""
    cause = err
    while cause.__cause__ is not None:  # the driver's error, under any wrappers
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
        url = resolve_database_url(get_settings())
        summary = await run_check(url, options, out)
    except ConfigurationError as err:
        return _error(str(err), options)
    except CannotRun as err:
        return _error(str(err), options)
    except DATABASE_ERRORS as err:
        return _error(f"cannot query the database: {describe_connection_error(err)}", options)
    except Exception as err:  # the fix path's SQLAlchemy errors, IndexBuildFailed, ...
        return _error(f"the fix failed: {describe_connection_error(err)}", options)
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


class _ClickStyleHelp(argparse.HelpFormatter):
    """`--help` written as click writes every other careteam command's: "Usage:", the
    description indented, "Options:", at most 80 columns wide."""

    def __init__(self, prog: str) -> None:
        width = min(80, shutil.get_terminal_size().columns)
        super().__init__(prog, max_help_position=30, width=width)

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
        super().add_usage(usage, actions, groups, prefix="Usage: ")

    def _format_text(self, text: str) -> str:
        width = self._width - 2
        return textwrap.fill(text, width, initial_indent="  ", subsequent_indent="  ") + "\n\n"


def parse_args(
    argv: list[str] | None = None, description: str | None = None, prog: str | None = None
) -> Options:
    """The one parser of the diagnostic's options, for the script and `careteam check`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [OPTIONS]",
        description=description or DESCRIPTION,
        formatter_class=_ClickStyleHelp,
        add_help=False,
    )
    parser._optionals.title = "Options"
    parser.add_argument(
        "--json", action="store_true", help="Print JSON instead of text (one object on stdout)."
    )
    parser.add_argument(
        "--organization", type=_organization, metavar="ORG_ID", help="Check one organization only."
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="List at most N of each kind (all are still counted).",
    )
    parser.add_argument(
        "--fix", action="store_true", help="Say what the dedupe would change (a dry run)."
    )
    parser.add_argument(
        "--execute",
        action="store_true",
        help="With --fix: apply the dedupe (same rule, lock and events as the migration).",
    )
    parser.add_argument("--help", action="help", help="Show this message and exit.")
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


def main(
    argv: list[str] | None = None, description: str | None = None, prog: str | None = None
) -> int:
    """Parse `argv` (exit 2 on a usage error, 0 for --help) and run the check."""
    try:
        options = parse_args(argv, description, prog)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return int(exit_.code or 0)
    return asyncio.run(check(options))
