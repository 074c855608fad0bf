"""The access log: recording who read or changed which patient's data, reading it back,
and pruning it (revision 20261207_access_log).

- `record` writes one entry (and a row per patient it names) as one statement that is
  its own transaction (careteam_record_access), committed when it returns;
  `record_many` writes several the same way, in one statement (careteam_record_access
  for each, over a JSON array: one transaction, one commit). The HTTP layer awaits an
  entry's commit before it sends a response (src/api/access_log.py, through the
  process's AccessLogWriter, src/services/access_log_writer.py, which groups concurrent
  requests' entries), so no answer leaves without its entry. An entry's id is chosen
  when the entry is made, before the first attempt, so a retry after a lost connection
  never writes it twice.
- `list_entries` reads an organization's entries, or one patient's, oldest first, by
  keyset (recorded_at, id), under the tenant's row-level security, up to the horizon
  (HORIZON: the oldest open transaction), so that no entry committed later lands
  behind a cursor.
- `prune` deletes the entries older than a cutoff, in batches, as the owner (the
  application role may only INSERT and SELECT).

An entry holds ids, the route template, parameter names, a status and counts: never a
value a client sent.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.services.errors import page_limit
from src.services.transaction import Sql, run_statement, run_transaction

MAX_PAGE = 200
PRUNE_BATCH = 10_000
_START = (datetime.datetime(1, 1, 1, tzinfo=datetime.UTC), uuid.UUID(int=0))


def time_ordered_id() -> uuid.UUID:
    """A UUID version 7 (RFC 9562 section 5.7): the Unix time in milliseconds, then
    random bits. An entry's id, so that ids sort by time (to the millisecond, across
    processes as far as their clocks agree): FHIR's default order, by `_id`, reads the
    log in time order, and the primary key's inserts land at its right end."""
    milliseconds = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    random = int.from_bytes(os.urandom(10), "big")
    value = milliseconds << 80 | 0x7 << 76 | (random >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | random & ((1 << 62) - 1)
    return uuid.UUID(int=value)


@dataclass(frozen=True)
class AccessEntry:
    """One request to record. `api_key_id` / `client_id`: who (a SMART client's token,
    or a plain key: at least one of them, unless `operator` is given); `route`:
    "METHOD /template"; `interaction`: the FHIR restful interaction (read, vread,
    history-instance, search-type, create, update, delete); `action`: AuditEvent's C,
    R, U, D or E; `parameters`: the names of the query parameters given (never their
    values)."""

    organization_id: uuid.UUID
    api_key_id: uuid.UUID | None
    client_id: uuid.UUID | None
    route: str
    interaction: str
    action: str
    status: int
    parameters: tuple[str, ...] = ()
    result_count: int | None = None
    patient_ids: tuple[uuid.UUID, ...] = ()
    id: uuid.UUID = field(default_factory=time_ordered_id)
    # An operator's command (`careteam export`), which acts with no credential: who ran
    # it (user@host); then api_key_id and client_id are both None.
    operator: str | None = None


@dataclass(frozen=True)
class AccessRecord:
    """An entry as read back (FHIR's AuditEvent; it never changes: version 1)."""

    id: uuid.UUID
    recorded_at: datetime.datetime
    api_key_id: uuid.UUID | None
    client_id: uuid.UUID | None
    operator: str | None  # an operator's command: who ran it (no credential)
    route: str
    interaction: str
    action: str
    parameters: list[str]
    status: int
    result_count: int | None
    patient_ids: list[uuid.UUID]

    @property
    def version(self) -> int:
        return 1

    @property
    def version_key(self) -> tuple[int, int]:
        return (1, 0)

    @property
    def updated_at(self) -> datetime.datetime:
        return self.recorded_at


ENTRY_COLUMNS = (
    "id, recorded_at, api_key_id, client_id, operator, route, interaction, action, "
    "parameters, status, result_count, patient_ids"
)

RECORD = Sql(
    "SELECT careteam_record_access($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    "org",
    "id",
    "api_key_id",
    "client_id",
    "route",
    "interaction",
    "action",
    "parameters",
    "status",
    "result_count",
    "patients",
)
# An operator's entry (AccessEntry.operator), which names no credential.
RECORD_OPERATOR = Sql(
    "SELECT careteam_record_operator_access($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    "org",
    "id",
    "operator",
    "route",
    "interaction",
    "action",
    "parameters",
    "status",
    "result_count",
    "patients",
)
# Several entries in one statement (one transaction, one commit): careteam_record_access
# for each element of a JSON array (jsonb_to_recordset turns its arrays into text[] and
# uuid[]); the number of entries written (an entry already there, from an earlier
# attempt, is not counted, nor written again).
RECORD_MANY = Sql(
    "SELECT count(*) FILTER (WHERE careteam_record_access("
    "e.org, e.id, e.api_key_id, e.client_id, e.route, e.interaction, e.action,"
    " e.parameters, e.status, e.result_count, e.patients))"
    " FROM jsonb_to_recordset($1::jsonb) AS e(org uuid, id uuid, api_key_id uuid,"
    " client_id uuid, route text, interaction text, action text, parameters text[],"
    " status integer, result_count integer, patients uuid[])",
    "entries",
)
# The horizon of a page: the start of the oldest transaction still open in this database
# (or this one's). An entry's recorded_at is its transaction's start, so an entry not yet
# committed can only land at or after it: a page stops before it, and an entry that
# commits later is never behind a cursor already given out. pg_stat_activity shows the
# application role its own sessions' starts, which are the log's writers; it hides other
# roles' (NULL), which write no entries. A Bulk Data export's snapshot (a READ ONLY
# transaction that can last minutes, named by its application_name) writes nothing, and
# is left out: it would hold every horizon back for as long as it runs.
HORIZON = (
    "(SELECT least(transaction_timestamp(), min(a.xact_start)) FROM pg_stat_activity AS a"
    " WHERE a.datname = current_database() AND a.backend_type = 'client backend'"
    " AND a.xact_start IS NOT NULL AND a.pid <> pg_backend_pid()"
    " AND a.application_name IS DISTINCT FROM 'careteam-export-snapshot')"
)
# Oldest first, after a position (recorded_at, id) and before the horizon: the
# organization's entries, by the index (organization_id, recorded_at, id).
SELECT_ENTRIES = Sql(
    f"SELECT {ENTRY_COLUMNS} FROM access_log WHERE organization_id = $1 "
    "AND (recorded_at, id) > ($2::timestamptz, $3::uuid) "
    f"AND recorded_at < {HORIZON} ORDER BY recorded_at, id LIMIT $4",
    "org",
    "after_at",
    "after_id",
    "limit",
)
# One patient's: by the patient rows' primary key (organization_id, patient_id,
# recorded_at, entry_id), then each entry by its own.
SELECT_PATIENT_ENTRIES = Sql(
    "SELECT "
    + ", ".join(f"l.{c.strip()}" for c in ENTRY_COLUMNS.split(","))
    + " FROM access_log_patients AS p JOIN access_log AS l"
    " ON l.organization_id = p.organization_id AND l.id = p.entry_id"
    " WHERE p.organization_id = $1 AND p.patient_id = $2"
    " AND (p.recorded_at, p.entry_id) > ($3::timestamptz, $4::uuid)"
    f" AND p.recorded_at < {HORIZON}"
    " ORDER BY p.recorded_at, p.entry_id LIMIT $5",
    "org",
    "patient",
    "after_at",
    "after_id",
    "limit",
)
# As the owner: one batch of an organization's entries older than the cutoff, with
# their patient rows (found by their primary key from the entries' own columns).
PRUNE = Sql(
    """
    WITH doomed AS (
        SELECT organization_id, id FROM access_log
        WHERE organization_id = $1 AND recorded_at < $2
        ORDER BY recorded_at, id LIMIT $3
    ), gone AS (
        DELETE FROM access_log AS l USING doomed
        WHERE l.organization_id = doomed.organization_id AND l.id = doomed.id
        RETURNING l.organization_id, l.id, l.recorded_at, l.patient_ids
    ), patients AS (
        DELETE FROM access_log_patients AS p
        USING (SELECT organization_id, id, recorded_at, unnest(patient_ids) AS patient_id
               FROM gone) AS g
        WHERE p.organization_id = g.organization_id AND p.patient_id = g.patient_id
          AND p.recorded_at = g.recorded_at AND p.entry_id = g.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM gone) AS entries, (SELECT count(*) FROM patients) AS rows
    """,
    "org",
    "cutoff",
    "batch",
)
COUNT_OLDER = Sql(
    "SELECT organization_id, count(*) AS entries FROM access_log WHERE recorded_at < $1 "
    "GROUP BY organization_id ORDER BY organization_id",
    "cutoff",
)


def _params_of(entry: AccessEntry, *, as_json: bool = False) -> dict[str, Any]:
    """careteam_record_access's (or careteam_record_operator_access's) arguments for
    `entry` (ids as strings for JSON)."""

    def value(item: uuid.UUID | None) -> uuid.UUID | str | None:
        return str(item) if as_json and item is not None else item

    return {
        "org": value(entry.organization_id),
        "id": value(entry.id),
        "api_key_id": value(entry.api_key_id),
        "client_id": value(entry.client_id),
        "operator": entry.operator,
        "route": entry.route,
        "interaction": entry.interaction,
        "action": entry.action,
        "parameters": list(entry.parameters),
        "status": entry.status,
        "result_count": entry.result_count,
        "patients": [value(p) for p in dict.fromkeys(entry.patient_ids)],
    }


def _record_of(row: Any) -> AccessRecord:
    return AccessRecord(**dict(row))


class AccessLogService:
    """Writes, reads and prunes the access log. Stateless; each method is one
    transaction (prune: one per batch)."""

    @staticmethod
    async def record(*, db: AsyncSession, entry: AccessEntry) -> None:
        """Write `entry`, committed when this returns (one statement, its own
        transaction; retried after a lost connection, written once). Raises the service's
        database errors (DatabaseUnavailable, DatabaseBusy, ...) when it cannot."""
        params = _params_of(entry)
        record = RECORD if entry.operator is None else RECORD_OPERATOR

        async def statement(driver: Any, _key_hash: str | None) -> None:
            await record.fetchval(driver, params)

        await run_statement(
            db,
            operation="record_access",
            statement=statement,
            organization_id=entry.organization_id,
        )

    @staticmethod
    async def record_many(*, db: AsyncSession, entries: list[AccessEntry]) -> int:
        """Write `entries` (of any organizations) in one statement that is its own
        transaction: all committed when this returns, or none (a refusal of one refuses
        them all). Retried after a lost connection like `record`, each entry written
        once. Returns how many were new. Credentials' entries only (the HTTP layer's):
        an operator's goes through `record`."""
        if any(entry.operator is not None for entry in entries):
            raise ValueError("an operator's entry is written by record(), one at a time")
        document = json.dumps([_params_of(entry, as_json=True) for entry in entries])

        async def statement(driver: Any, _key_hash: str | None) -> int:
            return int(await RECORD_MANY.fetchval(driver, {"entries": document}))

        return await run_statement(
            db,
            operation="record_access",
            statement=statement,
            organization_id=entries[0].organization_id,
        )

    @staticmethod
    async def list_entries(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID | None = None,
        after: tuple[datetime.datetime, uuid.UUID] | None = None,
        limit: int = 50,
    ) -> list[AccessRecord]:
        """The organization's entries (or those naming `patient_id`) after `after`
        (recorded_at, id), oldest first, at most `limit` (1 to MAX_PAGE + 1)."""
        page_limit(limit, MAX_PAGE + 1)
        after_at, after_id = after or _START
        params = {
            "org": organization_id,
            "patient": patient_id,
            "after_at": after_at,
            "after_id": after_id,
            "limit": limit,
        }

        async def work(driver: Any) -> list[AccessRecord]:
            query = SELECT_ENTRIES if patient_id is None else SELECT_PATIENT_ENTRIES
            return [_record_of(row) for row in await query.fetch(driver, params)]

        return await run_transaction(
            db,
            operation="list_access_log",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def count_older(*, db: AsyncSession, cutoff: datetime.datetime) -> dict[uuid.UUID, int]:
        """As the owner: each organization's entries recorded before `cutoff`."""

        async def work(driver: Any) -> dict[uuid.UUID, int]:
            rows = await COUNT_OLDER.fetch(driver, {"cutoff": cutoff})
            return {row["organization_id"]: row["entries"] for row in rows}

        return await run_transaction(db, operation="count_access_log", work=work, read_only=True)

    @staticmethod
    async def prune(
        *,
        db: AsyncSession,
        cutoff: datetime.datetime,
        batch_size: int = PRUNE_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """As the owner (the application role cannot delete): delete every entry
        recorded before `cutoff`, with its patient rows, `batch_size` entries per
        transaction (each batch commits; an interrupted prune keeps what it deleted and
        is finished by running it again). `progress(deleted so far)` after each batch.
        Returns how many entries it deleted."""
        deleted = 0
        for organization_id in await AccessLogService.count_older(db=db, cutoff=cutoff):
            while True:
                params = {"org": organization_id, "cutoff": cutoff, "batch": batch_size}

                async def work(driver: Any, params: dict[str, Any] = params) -> int:
                    row = await PRUNE.fetchrow(driver, params)
                    return int(row["entries"])

                done = await run_transaction(db, operation="prune_access_log", work=work)
                deleted += done
                if progress is not None:
                    progress(deleted)
                if done < batch_size:
                    break
        return deleted
