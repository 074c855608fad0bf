"""Running FHIR Bulk Data exports: one job's files (`run_export`), and the runner that
`careteam serve` keeps in the background (`ExportRunner`).

An export reads one snapshot of the database (a REPEATABLE READ, READ ONLY transaction:
src/services/bulk_export.py says how its transaction time is chosen) and writes, per
resource type, one NDJSON file of the resources the FHIR API serves. Each type is one
statement that PostgreSQL answers with the lines themselves (src/api/export_resources.py),
read through a cursor a page at a time: memory holds two pages (PAGE resources each),
whatever the population. Every page that names patients is recorded in the access log
(the job's requester, the export route, what shaped the export, the patients), with an id
derived from the job, the type, the page and its patients, so a job run again records
nothing twice; a page's entry is committed before the page is written (while PostgreSQL
builds the next one). Once a whole Patient file has been recorded (no `_since`, no
Patient `_typeFilter`, no Patient left out for a change after the transaction time), the
types after it are not recorded again: every patient they name is in that file, read on
the same snapshot (see `_named_already`).

The runner claims the oldest queued job of any organization (at most EXPORT_WORKERS at
once in this process), keeps its heartbeat every HEARTBEAT_S while it runs, and stops it
when the job is deleted (a client's DELETE). A job whose heartbeat stops (the process
was killed) is queued again after STALE and started over, or failed after MAX_ATTEMPTS
with an OperationOutcome: never left running. Expired jobs are deleted with their files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from src.api.access_log import parameter_names
from src.api.export_resources import source_of
from src.api.fhir_query import RESULT, Query
from src.api.fhir_resources import FhirError
from src.services.access_log_service import AccessEntry, AccessLogService
from src.services.bulk_export import (
    CLAIM,
    EXPIRE,
    EXPORT_SNAPSHOT,
    KNOWN,
    PAGE,
    PAGE_OF,
    RECOVER,
    BulkExportService,
    ExportJobRecord,
)
from src.services.export_storage import ExportStorage
from src.services.fhir_search import Binder, Search, group_members, matching, table_of
from src.services.transaction import run_transaction
from src.values import Cursors

logger = logging.getLogger(__name__)

# The types an export can hold, in the order their files are written.
TYPES = ("Organization", "Practitioner", "Patient", "CareTeam", "Group")
LEVEL_TYPES = {
    "system": TYPES,  # every Group: each active provider's attributed panel
    "patient": TYPES[:4],  # the patients' compartment, and what it names
    "group": TYPES,  # that Group alone
}
FILTERABLE = ("Patient", "CareTeam", "Practitioner")  # _typeFilter: their search parameters
HEARTBEAT_S = 1.0  # also how soon a DELETE stops a running export
MAX_ATTEMPTS = 3
POLL_S = 1.0
SWEEP_S = 30.0
EXPORT_ROUTE = {
    "system": "GET /fhir/R4/$export",
    "patient": "GET /fhir/R4/Patient/$export",
    "group": "GET /fhir/R4/Group/{ident}/$export",
}
_NO_CURSORS = b"\x00" * 32  # a _typeFilter takes no _cursor (refused before it is read)
ERROR_STOPPED = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "transient",
            "diagnostics": "the server stopped during this export, every time it was "
            f"started ({MAX_ATTEMPTS} attempts): start a new export",
        }
    ],
}


def type_filters(values: list[str]) -> list[str]:
    """The `_typeFilter` queries given: each value a comma-separated list of them (the
    IG; a comma within one query is sent percent-encoded, %2C, inside it)."""
    return [query for value in values for query in value.split(",")]


def type_filter_search(text: str, organization_id: uuid.UUID) -> Search:
    """A `_typeFilter` value (`Type?query`, the query a FHIR search of that type takes)
    as the search it names; FhirError 400 when it is not one we run."""
    kind, mark, query = text.partition("?")
    if not mark or kind not in FILTERABLE:
        raise FhirError(
            400,
            "invalid",
            f"_typeFilter: each query must be Type?query with a type among {', '.join(FILTERABLE)}",
        )
    try:
        items = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:  # decoded with replacement, it would search for something else
        raise FhirError(
            400, "invalid", f"_typeFilter: {kind} query is not UTF-8 once percent-decoded"
        ) from None
    if not items:
        raise FhirError(400, "invalid", f"_typeFilter: a {kind} query has no search parameter")
    result = sorted({name for name, _ in items if name in RESULT})
    if result:
        raise FhirError(
            400,
            "not-supported",
            f"_typeFilter: result parameters are not supported here: {', '.join(result)}",
        )
    parsed = Query.read(
        kind,
        items,
        base="",
        cursors=Cursors(_NO_CURSORS, organization_id),
        lenient=False,
    )
    return Search(kind, tuple(parsed.clauses))


def _file_name(kind: str, attempt: int) -> str:
    """A file's name: its type and the attempt that wrote it (a runner taken for dead
    that wakes up again never writes into its successor's files)."""
    return f"{kind}-{attempt}.ndjson"


def _within(job: ExportJobRecord) -> tuple[str, uuid.UUID | None] | None:
    if job.level == "system":
        return None
    return (job.level, job.group_id)


def _searches(job: ExportJobRecord, kind: str) -> list[Search]:
    """The job's searches of `kind`: one per _typeFilter query of that type (ORed), or the
    whole type, each with the job's population (Search.within)."""
    filters = [t for t in job.type_filters if t.partition("?")[0] == kind]
    base = [type_filter_search(t, job.organization_id) for t in filters] or [Search(kind)]
    return [Search(kind, s.clauses, within=_within(job)) for s in base]


def statement(job: ExportJobRecord, kind: str, until: datetime.datetime) -> tuple[str, list[Any]]:
    """The statement of the job's `kind` resources in its snapshot, in id order, and its
    arguments: a row per resource changed after `since` (if given) that the job's
    searches find, with its NDJSON line (`resource`), the patients it names
    (`patients`) and whether it changed after the transaction time (`later`: left out,
    and counted in the notices)."""
    bind = Binder([job.organization_id])
    at = bind(until, "timestamptz")
    since = None if job.since is None else bind(job.since, "timestamptz")
    if kind == "Organization":
        source, table, where = source_of(kind), "organizations", "organizations.id = $1"
    else:
        population, changed = None, None
        if job.level == "group" and kind in ("Patient", "CareTeam"):
            # The Group's patients, read through their own rows' indexes (not the
            # organization's), as well as the condition on each resource (matching).
            population = group_members(bind(job.group_id, "uuid"))
        if job.level == "group" and kind == "Group" and since is not None:
            changed = (since, at)
        source = source_of(kind, population=population, changed=changed)
        table, where = table_of(kind), matching(_searches(job, kind), bind)
    window = "" if since is None else f" AND {source.updated} > {since}"
    text = (
        f"SELECT {source.resource} AS resource, {source.patients} AS patients, "
        f"{source.updated} > {at} AS later FROM {source.rows} "
        f"WHERE ({where}){window} ORDER BY {table}.id"
    )
    return text, bind.args


async def pages(
    driver: Any, job: ExportJobRecord, kind: str, until: datetime.datetime
) -> AsyncGenerator[list[Any]]:
    """The rows of statement(), a page at a time (PAGE, PAGE_OF a type's), from one
    cursor: memory holds two pages, whatever the population. The next page is asked for
    before this one is handed over, so PostgreSQL builds it while the caller writes.
    The cursor (its portal) stays open until the export's transaction ends: one per
    type, each finished."""
    text, args = statement(job, kind, until)
    cursor = await driver.cursor(text, *args)
    size = PAGE_OF.get(kind, PAGE)
    pending: asyncio.Future[list[Any]] | None = asyncio.ensure_future(cursor.fetch(size))
    try:
        while pending is not None:
            rows = await pending
            pending = asyncio.ensure_future(cursor.fetch(size)) if len(rows) == size else None
            if rows:
                yield rows
    finally:
        if pending is not None:  # the caller stopped early: the connection's one request
            with contextlib.suppress(Exception):
                await pending


def _split(rows: list[Any]) -> tuple[list[str], list[uuid.UUID], int]:
    """A page's lines, the patients they name, and how many of its rows changed after the
    transaction time (left out: the notices count them)."""
    kept = [row for row in rows if not row["later"]]
    lines = [row["resource"] for row in kept]
    if None in lines:  # a required element had no value (export_resources._object)
        raise Unbuildable()
    patients = [p for row in kept for p in row["patients"] or ()]
    return lines, patients, len(rows) - len(kept)


async def _notices(
    storage: ExportStorage, job: ExportJobRecord, later: dict[str, int]
) -> list[dict[str, Any]]:
    """The resources left out because they changed after the transaction time, said in
    an OperationOutcome (severity information) per type, in a file the manifest's
    `error` lists: never left out silently."""
    outcomes = [
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"{count} {kind} resource(s) changed after this export's "
                    "transactionTime and are not in it: export again with _since = this "
                    "transactionTime to get them",
                }
            ],
        }
        for kind, count in later.items()
        if count
    ]
    if not outcomes:
        return []
    name = _file_name("OperationOutcome", job.attempts)
    writer = storage.writer(job.organization_id, job.id, name)
    try:
        await asyncio.to_thread(writer.write, _ndjson(outcomes))
    finally:
        await asyncio.to_thread(writer.close)
    return [{"type": "OperationOutcome", "name": name, "count": len(outcomes)}]


def _who(requester: str) -> dict[str, Any]:
    """Who a job's requester is, as an access log entry names it: `api_key:<id>`,
    `smart_client:<id>`, or `operator:<user@host>` (`careteam export`, no credential)."""
    kind, _, ident = requester.partition(":")
    if kind == "operator":
        return {"api_key_id": None, "client_id": None, "operator": ident}
    if kind == "smart_client":
        return {"api_key_id": None, "client_id": uuid.UUID(ident)}
    return {"api_key_id": uuid.UUID(ident), "client_id": None}


class Unbuildable(Exception):
    """A resource lacks a value FHIR requires: the export fails and says so, rather than
    write a line that is not JSON."""

    def __init__(self) -> None:
        super().__init__(
            "a resource lacks a value FHIR requires (a time of -infinity, say), so it "
            "cannot be written (its FHIR read fails too): correct the data, then start a "
            "new export"
        )


class Cancelled(Exception):
    """The job was deleted (or taken from this runner) while it ran."""


async def _heartbeat(
    sessionmaker: async_sessionmaker[AsyncSession],
    job: ExportJobRecord,
    every_s: float,
    written: dict[str, int],
    stopped: asyncio.Event,
) -> None:
    """The job's heartbeat and progress, every `every_s` however long a page takes;
    `stopped` once the job is no longer this attempt's (deleted, or taken for dead)."""
    while True:
        await asyncio.sleep(every_s)
        done = ", ".join(f"{k} {n}" for k, n in written.items()) or "starting"
        try:
            async with sessionmaker() as side:
                running = await BulkExportService.beat(
                    db=side,
                    organization_id=job.organization_id,
                    job_id=job.id,
                    attempt=job.attempts,
                    progress=done,
                )
        except Exception:  # the database away for a moment: the next beat tells
            logger.warning("export %s: a heartbeat failed", job.id, exc_info=True)
            continue
        if not running:
            stopped.set()
            return


async def _record_page(
    sessionmaker: async_sessionmaker[AsyncSession],
    job: ExportJobRecord,
    kind: str,
    number: int,
    patients: list[uuid.UUID],
) -> None:
    """The access log entry of one page of the export: its requester, the kick-off's
    route, the patients the page holds. Its id is derived from the job, the attempt, the
    type, the page and the patients it names: a retry that reads the same page again
    writes nothing twice, and one whose page holds other patients (a run started over,
    on a new snapshot) records them."""
    who = _who(job.requester)
    named = tuple(dict.fromkeys(patients))
    digest = hashlib.sha256(b"".join(p.bytes for p in named)).hexdigest()
    entry = AccessEntry(
        organization_id=job.organization_id,
        **who,
        # An operator's: the command (`careteam export`), which has no HTTP route.
        route=job.request if who.get("operator") else EXPORT_ROUTE[job.level],
        interaction="operation",
        action="E",
        status=200,
        parameters=_parameters(job, operator="operator" in who),
        result_count=len(named),
        patient_ids=named,
        id=uuid.uuid5(job.id, f"{job.attempts}:{kind}:{number}:{digest}"),
    )
    async with sessionmaker() as side:
        await AccessLogService.record(db=side, entry=entry)


def _parameters(job: ExportJobRecord, *, operator: bool) -> tuple[str, ...]:
    """The names of what shaped the export, as its page entries record them (never a
    value): the kick-off's query parameters (`_since`, `_typeFilter`, ...); for an
    operator, the options that narrowed it (`--group`, `--since`, `--type`)."""
    if not operator:
        return parameter_names(urlsplit(job.request).query.encode())
    given = {
        "--group": job.group_id is not None,
        "--since": job.since is not None,
        "--type": set(job.types) != set(LEVEL_TYPES[job.level]),
    }
    return tuple(name for name, shaped in given.items() if shaped)


def _reads_every_row(job: ExportJobRecord) -> bool:
    """Whether each statement reads all of the organization's rows of its tables: a
    system- or patient-level export without `_typeFilter` (a Group-level one reads its
    members' rows through their indexes; a _typeFilter's condition may use one)."""
    return job.level != "group" and not job.type_filters


def _named_already(job: ExportJobRecord, kind: str, left_out: dict[str, int]) -> bool:
    """Whether every patient `kind`'s pages name has been recorded by the Patient pages
    before them: when the job wrote Patients before `kind`, with no `_since` and no
    Patient `_typeFilter`, and left none out (`left_out`: each type's resources changed
    after the transaction time, so not written; a Patient changed then may still have a
    CareTeam and Group memberships that were not), the Patient pages named every patient
    of the population; each CareTeam is one of theirs, and each Group member a patient of
    the population (its periods' foreign key, the same snapshot). Their entries would name
    the same patients again: about two thirds of an export's time went to them."""
    if kind == "Patient" or "Patient" not in job.types:
        return False
    if job.types.index(kind) < job.types.index("Patient") or left_out.get("Patient") != 0:
        return False
    return job.since is None and not any(f.startswith("Patient?") for f in job.type_filters)


def _ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in resources)


async def run_export(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ExportStorage,
    job: ExportJobRecord,
    *,
    progress: Callable[[str, int], None] | None = None,
    heartbeat_s: float | None = HEARTBEAT_S,
) -> tuple[datetime.datetime, list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the job's files; (transaction time, [{type, name, count}] per file of
    resources, the same for the notices' file: see _notices). Raises
    Cancelled when its heartbeat finds it no longer this attempt's. `progress(type,
    count so far)` is called after every page (the CLI's bar). `heartbeat_s` None: no
    heartbeat (a job that is not in export_jobs: the CLI's)."""
    org = job.organization_id
    async with sessionmaker() as db:
        until = await BulkExportService.transaction_time(db=db, organization_id=org)
    written: dict[str, int] = {}
    stopped = asyncio.Event()

    async def work(driver: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        # Left out of every horizon (access_log_service.HORIZON): it writes nothing, so
        # it must not hold other exports' transaction time back for its whole run.
        await driver.execute(f"SET LOCAL application_name = '{EXPORT_SNAPSHOT}'")
        # A statement read through a cursor runs serially: a parallel plan would run in
        # the leader alone, each of its workers' parts over again (measured: slower).
        await driver.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        if _reads_every_row(job):
            # Sequential scans and sorts, not index scans: an index in uuid order visits
            # the heap at random, and past the buffer cache that costs more than sorting
            # (measured at 1,000,000 patients: the Patients' statement 28 s against 14 s).
            await driver.execute("SET LOCAL enable_indexscan = off")
            await driver.execute("SET LOCAL enable_bitmapscan = off")
        written.clear()
        later: dict[str, int] = {}
        for kind in job.types:
            writer = storage.writer(org, job.id, _file_name(kind, job.attempts))
            written[kind] = later[kind] = number = 0
            named_already = _named_already(job, kind, later)
            try:
                # Closed here, not whenever it is collected: a fetch it has pending
                # finishes before the next statement (the connection's one request).
                async with contextlib.aclosing(pages(driver, job, kind, until)) as read:
                    async for rows in read:
                        lines, patients, changed = _split(rows)
                        later[kind] += changed
                        # Recorded before it is written (while PostgreSQL builds the next
                        # page): no page leaves unrecorded, even one that is stopped.
                        if patients and not named_already:
                            await _record_page(sessionmaker, job, kind, number, patients)
                        if lines:
                            data = ("\n".join(lines) + "\n").encode()
                            await asyncio.to_thread(writer.write, data)
                        number += 1
                        written[kind] += len(lines)
                        if progress is not None:
                            progress(kind, written[kind])
                        if stopped.is_set():
                            raise Cancelled()
            finally:
                await asyncio.to_thread(writer.close)
        output = [
            {"type": kind, "name": _file_name(kind, job.attempts), "count": written[kind]}
            for kind in job.types
            if written[kind]  # the IG: no output item for a type with no resource
        ]
        return output, await _notices(storage, job, later)

    beater = None
    if heartbeat_s is not None:
        beater = asyncio.create_task(_heartbeat(sessionmaker, job, heartbeat_s, written, stopped))
    try:
        async with sessionmaker() as db:
            output, notices = await run_transaction(
                db, operation="bulk_export", organization_id=org, work=work, snapshot=True
            )
    finally:
        if beater is not None:
            beater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beater
    return until, output, notices


class ExportRunner:
    """The background runner of one process (see the module docstring)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: ExportStorage,
        *,
        workers: int,
        stale_s: float = 30.0,
        poll_s: float = POLL_S,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._storage = storage
        self._workers = workers
        self._stale = datetime.timedelta(seconds=stale_s)
        # A beat well within the time after which a silent job is taken for dead.
        self._heartbeat_s = min(HEARTBEAT_S, stale_s / 3)
        self._poll_s = poll_s
        self._sweep_s = min(sweep_s, stale_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self._workers > 0:
            self._loop = asyncio.create_task(self._run(), name="export-runner")

    def wake(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        next_sweep = 0.0
        while True:
            try:
                if time.monotonic() >= next_sweep:
                    await self.sweep()
                    next_sweep = time.monotonic() + self._sweep_s
                while len(self._tasks) < self._workers:
                    claimed = await self._claim()
                    if claimed is None:
                        break
                    task = asyncio.create_task(self._execute(*claimed), name="export-job")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:  # the database unreachable, say: try again at the next poll
                logger.warning("export runner: a poll failed", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def _claim(self) -> tuple[uuid.UUID, uuid.UUID] | None:
        async def work(driver: Any) -> tuple[uuid.UUID, uuid.UUID] | None:
            row = await driver.fetchrow(CLAIM)
            return None if row is None else (row["organization_id"], row["id"])

        async with self._sessionmaker() as db:
            return await run_transaction(db, operation="claim_export", work=work)

    async def sweep(self) -> None:
        """Jobs whose runner stopped: queued again or failed; expired jobs: deleted; the
        files of both removed, and any file left of a job no longer on record."""

        async def work(driver: Any) -> tuple[list[Any], list[Any]]:
            stale = list(
                await driver.fetch(RECOVER, self._stale, MAX_ATTEMPTS, json.dumps(ERROR_STOPPED))
            )
            expired = list(await driver.fetch(EXPIRE))
            return stale, expired

        async with self._sessionmaker() as db:
            stale, expired = await run_transaction(db, operation="sweep_exports", work=work)
        # A job queued again keeps its earlier attempts' files (the next attempt, which
        # another process may be running already, writes files named for itself) until
        # it expires; a failed or expired one loses them now.
        for row in (*stale, *expired):
            if row.get("status") != "queued":
                self._storage.remove(row["organization_id"], row["id"])
        for row in stale:
            logger.warning(
                "export %s: its runner stopped; %s",
                row["id"],
                "queued again" if row["status"] == "queued" else "failed",
                extra={"event": "export_recovered", "organization_id": str(row["organization_id"])},
            )
        stored = list(self._storage.jobs())
        if stored:

            async def known(driver: Any) -> set[uuid.UUID]:
                return {r[0] for r in await driver.fetch(KNOWN, [job for _, job in stored])}

            async with self._sessionmaker() as db:
                kept = await run_transaction(db, operation="known_exports", work=known)
            for org, job in stored:
                if job not in kept:
                    self._storage.remove(org, job)

    async def _forget_if_deleted(self, organization_id: uuid.UUID, job_id: uuid.UUID) -> None:
        """A job deleted while it ran: its files, which the run may have written again
        after DELETE removed them, removed now."""
        async with self._sessionmaker() as db:
            job = await BulkExportService.find(
                db=db, organization_id=organization_id, job_id=job_id
            )
        if job is None:
            self._storage.remove(organization_id, job_id)

    async def _find(self, organization_id: uuid.UUID, job_id: uuid.UUID) -> ExportJobRecord | None:
        async with self._sessionmaker() as db:
            return await BulkExportService.find(
                db=db, organization_id=organization_id, job_id=job_id
            )

    async def _execute(self, organization_id: uuid.UUID, job_id: uuid.UUID) -> None:
        """Run a claimed job. Cancelled (the process stopping: a deploy) at any point
        after the claim, the job goes back in the queue now, this attempt not counted;
        if even that fails, the sweep recovers it once it is stale."""
        job = None
        try:
            job = await self._find(organization_id, job_id)
            if job is not None:
                await self._run_job(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                job = job or await self._find(organization_id, job_id)
                if job is not None:
                    async with self._sessionmaker() as db:
                        await BulkExportService.release(
                            db=db,
                            organization_id=organization_id,
                            job_id=job_id,
                            attempt=job.attempts,
                        )
            raise

    async def _run_job(self, job: ExportJobRecord) -> None:
        organization_id, job_id = job.organization_id, job.id
        extra = {"organization_id": str(organization_id), "export_id": str(job_id)}
        started = time.monotonic()
        status, until = "completed", None
        output: list[dict[str, Any]] = []
        error: list[dict[str, Any]] = []
        try:
            until, output, error = await run_export(
                self._sessionmaker, self._storage, job, heartbeat_s=self._heartbeat_s
            )
        except Cancelled:
            # Deleted, or taken for dead and queued again (the next attempt writes files
            # of its own; the job's expiry removes this one's).
            await self._forget_if_deleted(organization_id, job_id)
            logger.info("export %s stopped", job_id, extra={"event": "export_stopped", **extra})
            return
        except Exception as err:
            logger.exception("export %s failed", job_id, extra={"event": "export_failed", **extra})
            status, output = "failed", []
            error = [_outcome(err)]
        async with self._sessionmaker() as db:
            finished = await BulkExportService.finish(
                db=db,
                organization_id=organization_id,
                job_id=job_id,
                attempt=job.attempts,
                status=status,
                transaction_time=until,
                output=output,
                error=error,
            )
        if not finished:  # deleted while it ran, or taken for dead: not this attempt's
            await self._forget_if_deleted(organization_id, job_id)
            return
        logger.info(
            "export %s %s in %.1f s",
            job_id,
            status,
            time.monotonic() - started,
            extra={"event": f"export_{status}", **extra},
        )


def _outcome(err: Exception) -> dict[str, Any]:
    """The OperationOutcome a failed job's manifest lists (an error's kind, never data)."""
    if isinstance(err, Unbuildable):
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": str(err)}],
        }
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "exception",
                "diagnostics": f"the export failed ({type(err).__name__}): start a new export",
            }
        ],
    }
