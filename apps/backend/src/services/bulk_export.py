"""FHIR Bulk Data export jobs (table export_jobs, revision 20261207_bulk_export): their
states, and the snapshot an export reads.

A job is made by a kick-off (`create`), run by the runner in `careteam serve`
(src/api/bulk_export.py: it claims the oldest queued job, keeps its heartbeat while it
runs, and finishes or fails it), read by its status URL (`find`) and deleted by DELETE
(`delete`). Everything here under the job's organization's tenant (row-level security),
except the runner's four cross-organization functions (claim, recover, expire, known:
SECURITY DEFINER, sql/functions/careteam_*_export*).

Why `transaction_time` is exact. A change carries its transaction's start (now()), and
commits some time later, so "changed after T" and "committed after the snapshot" differ
for a transaction that began before the snapshot and committed after it. So the export
takes its transaction time first, in a transaction of its own: the start of the oldest
transaction open in the database at that moment, or that moment if none is, less a
microsecond (HORIZON). Only then does it open its snapshot. Every change stamped at or
before T began before every transaction open at T: it had committed before the snapshot
was taken, so the snapshot holds it. Every change stamped after T is left out, visible
or not (the Bulk Data IG: the response "SHOULD NOT include any resources modified after
this instant"), and comes in the next export with `_since` = T. So exports chained by
`_since` = the previous `transactionTime` hold every change once: none missed, none
twice.
"""

from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.services.access_log_service import HORIZON
from src.services.transaction import Sql, run_transaction

LEVELS = ("system", "patient", "group")
# The application_name of an export's snapshot transaction (READ ONLY: it writes nothing),
# which HORIZON leaves out.
EXPORT_SNAPSHOT = "careteam-export-snapshot"

JOB_COLUMNS = (
    "organization_id, id, requester, level, group_id, types, since, type_filters, request, "
    "status, attempts, progress, transaction_time, output, error, expires_after_s, "
    "created_at, started_at, finished_at, expires_at"
)


@dataclass(frozen=True)
class ExportJobRecord:
    organization_id: uuid.UUID
    id: uuid.UUID
    requester: str
    level: str
    group_id: uuid.UUID | None
    types: list[str]
    since: datetime.datetime | None
    type_filters: list[str]
    request: str
    status: str
    attempts: int
    progress: str | None
    transaction_time: datetime.datetime | None
    output: list[dict[str, Any]]
    error: list[dict[str, Any]]
    expires_after_s: int
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    expires_at: datetime.datetime | None


def unkept_job(
    *,
    organization_id: uuid.UUID,
    requester: str,
    request: str,
    level: str = "system",
    group_id: uuid.UUID | None = None,
    types: tuple[str, ...],
    since: datetime.datetime | None = None,
) -> ExportJobRecord:
    """An export run outside export_jobs (the CLI's, a benchmark's): not kept, its one
    attempt running now."""
    now = datetime.datetime.now(datetime.UTC)
    return ExportJobRecord(
        organization_id=organization_id,
        id=uuid.uuid4(),
        requester=requester,
        level=level,
        group_id=group_id,
        types=list(types),
        since=since,
        type_filters=[],
        request=request,
        status="running",
        attempts=1,
        progress=None,
        transaction_time=None,
        output=[],
        error=[],
        expires_after_s=1,
        created_at=now,
        started_at=now,
        finished_at=None,
        expires_at=None,
    )


def _job(row: Any) -> ExportJobRecord:
    data = dict(row)
    for name in ("output", "error"):
        if isinstance(data[name], str):
            data[name] = json.loads(data[name])
    return ExportJobRecord(**data)


# One kick-off at a time per organization (a transaction-level lock), so that two at once
# cannot both pass the limit.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('careteam_export:' || $1::uuid::text, 0))"
_ACTIVE = Sql(
    "SELECT count(*) FROM export_jobs WHERE organization_id = $1 "
    "AND status IN ('queued', 'running')",
    "org",
)
_INSERT = Sql(
    "INSERT INTO export_jobs (organization_id, requester, level, group_id, types, since, "
    "type_filters, request, expires_after_s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
    f"RETURNING {JOB_COLUMNS}",
    "org",
    "requester",
    "level",
    "group",
    "types",
    "since",
    "filters",
    "request",
    "expires",
)
_FIND = Sql(
    f"SELECT {JOB_COLUMNS} FROM export_jobs WHERE organization_id = $1 AND id = $2", "org", "id"
)
_DELETE = Sql(
    f"DELETE FROM export_jobs WHERE organization_id = $1 AND id = $2 RETURNING {JOB_COLUMNS}",
    "org",
    "id",
)
# The runner's heartbeat: false when the job is no longer running (deleted: cancelled).
_BEAT = Sql(
    "UPDATE export_jobs SET heartbeat_at = now(), progress = $3 "
    "WHERE organization_id = $1 AND id = $2 AND status = 'running' AND attempts = $4 "
    "RETURNING true",
    "org",
    "id",
    "progress",
    "attempt",
)
_FINISH = Sql(
    "UPDATE export_jobs SET status = $3, transaction_time = $4, output = $5::jsonb, "
    "error = $6::jsonb, progress = NULL, heartbeat_at = NULL, finished_at = now(), "
    "expires_at = now() + expires_after_s * interval '1 second' "
    "WHERE organization_id = $1 AND id = $2 AND status = 'running' AND attempts = $7 "
    "RETURNING true",
    "org",
    "id",
    "status",
    "time",
    "output",
    "error",
    "attempt",
)
# A runner stopping (its process shut down gracefully): the job back in the queue, this
# attempt not counted (a deploy is not a failure).
_RELEASE = Sql(
    "UPDATE export_jobs SET status = 'queued', attempts = attempts - 1, heartbeat_at = NULL, "
    "progress = NULL WHERE organization_id = $1 AND id = $2 AND status = 'running' "
    "AND attempts = $3",
    "org",
    "id",
    "attempt",
)
_TRANSACTION_TIME = f"SELECT {HORIZON} - interval '1 microsecond'"

CLAIM = "SELECT organization_id, id FROM careteam_claim_export()"
RECOVER = "SELECT organization_id, id, status FROM careteam_recover_exports($1, $2, $3::jsonb)"
EXPIRE = "SELECT organization_id, id FROM careteam_expire_exports()"
KNOWN = "SELECT careteam_known_exports($1::uuid[])"


class TooManyExports(Exception):
    """The organization has its limit of exports queued or running already."""


@dataclass(frozen=True)
class ExportRequest:
    """A kick-off, checked: what to export and for whom."""

    requester: str
    level: str
    group_id: uuid.UUID | None
    types: tuple[str, ...]
    since: datetime.datetime | None
    type_filters: tuple[str, ...]
    request: str


class BulkExportService:
    @staticmethod
    async def create(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        asked: ExportRequest,
        max_jobs: int,
        expires_after_s: int,
    ) -> ExportJobRecord:
        """A queued job; TooManyExports when `max_jobs` are queued or running already."""

        async def work(driver: Any) -> ExportJobRecord:
            await driver.execute(_LOCK, organization_id)
            if await _ACTIVE.fetchval(driver, {"org": organization_id}) >= max_jobs:
                raise TooManyExports()
            row = await _INSERT.fetchrow(
                driver,
                {
                    "org": organization_id,
                    "requester": asked.requester,
                    "level": asked.level,
                    "group": asked.group_id,
                    "types": list(asked.types),
                    "since": asked.since,
                    "filters": list(asked.type_filters),
                    "request": asked.request,
                    "expires": expires_after_s,
                },
            )
            return _job(row)

        return await run_transaction(
            db, operation="create_export", organization_id=organization_id, work=work
        )

    @staticmethod
    async def find(
        *, db: AsyncSession, organization_id: uuid.UUID, job_id: uuid.UUID
    ) -> ExportJobRecord | None:
        async def work(driver: Any) -> ExportJobRecord | None:
            row = await _FIND.fetchrow(driver, {"org": organization_id, "id": job_id})
            return None if row is None else _job(row)

        return await run_transaction(
            db, operation="read_export", organization_id=organization_id, work=work, read_only=True
        )

    @staticmethod
    async def delete(
        *, db: AsyncSession, organization_id: uuid.UUID, job_id: uuid.UUID
    ) -> ExportJobRecord | None:
        """The job, deleted (its runner stops at its next heartbeat); None if none."""

        async def work(driver: Any) -> ExportJobRecord | None:
            row = await _DELETE.fetchrow(driver, {"org": organization_id, "id": job_id})
            return None if row is None else _job(row)

        return await run_transaction(
            db, operation="delete_export", organization_id=organization_id, work=work
        )

    @staticmethod
    async def beat(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        job_id: uuid.UUID,
        attempt: int,
        progress: str,
    ) -> bool:
        """The running job's heartbeat and progress; False if it is no longer this
        attempt's (deleted, or its runner taken for dead and the job queued again)."""

        async def work(driver: Any) -> bool:
            params = {
                "org": organization_id,
                "id": job_id,
                "progress": progress,
                "attempt": attempt,
            }
            return bool(await _BEAT.fetchval(driver, params))

        return await run_transaction(
            db, operation="export_heartbeat", organization_id=organization_id, work=work
        )

    @staticmethod
    async def release(
        *, db: AsyncSession, organization_id: uuid.UUID, job_id: uuid.UUID, attempt: int
    ) -> None:
        """The job queued again, this attempt not counted (its runner is stopping)."""

        async def work(driver: Any) -> None:
            await _RELEASE.execute(
                driver, {"org": organization_id, "id": job_id, "attempt": attempt}
            )

        await run_transaction(
            db, operation="release_export", organization_id=organization_id, work=work
        )

    @staticmethod
    async def finish(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        job_id: uuid.UUID,
        attempt: int,
        status: str,
        transaction_time: datetime.datetime | None,
        output: list[dict[str, Any]],
        error: list[dict[str, Any]],
    ) -> bool:
        """Completed or failed, with its manifest's lists; False if it was no longer
        this attempt's (deleted meanwhile, or taken for dead and queued again)."""

        async def work(driver: Any) -> bool:
            params = {
                "org": organization_id,
                "id": job_id,
                "status": status,
                "time": transaction_time,
                "output": json.dumps(output),
                "error": json.dumps(error),
                "attempt": attempt,
            }
            return bool(await _FINISH.fetchval(driver, params))

        return await run_transaction(
            db, operation="finish_export", organization_id=organization_id, work=work
        )

    @staticmethod
    async def transaction_time(
        *, db: AsyncSession, organization_id: uuid.UUID
    ) -> datetime.datetime:
        """The export's transaction time, read before its snapshot is opened (the module's
        docstring says why)."""

        async def work(driver: Any) -> datetime.datetime:
            at: datetime.datetime = await driver.fetchval(_TRANSACTION_TIME)
            return at

        return await run_transaction(
            db, operation="export_time", organization_id=organization_id, work=work, read_only=True
        )
