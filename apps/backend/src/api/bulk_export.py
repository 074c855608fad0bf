"""Running FHIR Bulk Data exports: one job's files (`run_export`), and the runner that
`careteam serve` keeps in the background (`ExportRunner`).

An export reads one snapshot of the database (a REPEATABLE READ, READ ONLY transaction:
src/services/bulk_export.py says how its transaction time is chosen) and writes, per
resource type, one NDJSON file of the resources the FHIR API serves. Each type is one
statement that PostgreSQL answers with the lines themselves (src/api/export_resources.py),
read as the text of a COPY, a block (BLOCK bytes) at a time: memory holds two blocks,
whatever the population. The types are read at once, in lanes (LANES): the first in the
export's transaction, the others each in a transaction of its own that imports its
snapshot (pg_export_snapshot), so all of them read the same database.

Every block that names patients is recorded in the access log (the job's requester, the
export route, what shaped the export, the patients), with an id derived from the job,
the type, the block and its patients, so a job run again records nothing twice; a
block's entry is committed before the block is written (while the COPY goes on). When
the Patient file holds every patient of the export (no `_since`, no Patient
`_typeFilter`: see `_named_once`), the other types record only the patients it leaves
out for a change after the transaction time (found before the lanes start, and checked
against its count after): every other patient they name is in that file, read on the
same snapshot. They write a block only once the Patients' lane has recorded every
patient it names (`_record`): no file, even one a failed export leaves behind, names a
patient the log lacks. A DELETE cancels the statements under way.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# asyncpg's own uuid.UUID, built in C (0.2 µs against 1.8: a million per export).
from asyncpg.pgproto.pgproto import UUID
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from src.api.access_log import parameter_names
from src.api.export_resources import NAMED_PATIENTS, source_of
from src.api.fhir_query import RESULT, Query
from src.api.fhir_resources import FhirError
from src.services.access_log_service import AccessEntry, AccessLogService
from src.services.bulk_export import (
    CLAIM,
    EXPIRE,
    EXPORT_SNAPSHOT,
    KNOWN,
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
    searches find, with its NDJSON line; NULL in its place when it changed after the
    transaction time (left out, and counted in the notices), and a lone backslash when
    a value FHIR requires is missing (export_resources._object: the export refuses
    it)."""
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
    line = f"CASE WHEN {source.updated} > {at} THEN NULL ELSE coalesce({source.resource}, '\\') END"
    text = f"SELECT {line} FROM {source.rows} WHERE ({where}){window} ORDER BY {table}.id"
    return text, bind.args


def left_out_statement(job: ExportJobRecord, until: datetime.datetime) -> tuple[str, list[Any]]:
    """The patients the job's Patient statement leaves out for a change after the
    transaction time (its NULL lines), found among those created, changed or given a
    care team event after it (a patient's lastUpdated is the latest of these), through
    their own rows: a few, where the Patient statement reads them all."""
    bind = Binder([job.organization_id])
    at = bind(until, "timestamptz")
    candidates = (
        f"(SELECT p.id FROM patients AS p WHERE p.organization_id = $1 AND p.created_at > {at} "
        "UNION SELECT r.record_id FROM record_changes AS r WHERE r.organization_id = $1 "
        f"AND r.record_type = 'patient' AND r.changed_at > {at} "
        "UNION SELECT x.patient_id FROM care_team_events AS x WHERE x.organization_id = $1 "
        f"AND x.occurred_at > {at})"
    )
    source = source_of("Patient", population=candidates)
    where = matching(_searches(job, "Patient"), bind)
    text = (
        f"SELECT patients.id FROM {source.rows} WHERE ({where}) "
        f"AND patients.id IN {candidates} AND {source.updated} > {at}"
    )
    return text, bind.args


# How a type's lines are read: the statement's rows as COPY text (no row is decoded in
# Python), handled BLOCK bytes at a time (memory holds one block, and one row beyond
# it: a Group's row holds every member of its Group). A chunk smaller than SMALL means
# PostgreSQL builds rows more slowly than they are read: waiting WAIT_S lets more of
# them arrive before the next wake of the event loop (measured at 1,000,000 patients, the
# types read one after another: this process's CPU time 12.6 s without the wait, 6.4 s
# with it, for the same export time, PostgreSQL's; the cores it leaves go to the lanes).
BLOCK = 1 << 20
SMALL = 1 << 17
WAIT_S = 0.001


@dataclass
class _Lines:
    """A block of a type's COPY text as its file's lines: `data` (COPY's escaping of
    backslashes undone), how many there are, and how many were left out (NULL: changed
    after the transaction time)."""

    data: bytes
    count: int
    left_out: int


def _lines(block: bytes) -> _Lines:
    """A block of whole rows of COPY text, a line each. A resource's JSON never holds a
    raw newline, tab or control character (JSON escapes them), so COPY's only escape in
    it is a doubled backslash; a line left out is \\N (COPY's NULL), one that cannot be
    built a lone backslash, \\\\ (statement()). A block without a backslash, the
    usual one, is its file's lines as they are."""
    count = block.count(b"\n")
    nulls = 0
    if b"\\" in block:
        nulls = block.count(b"\\N\n")  # a JSON line ends with "}", never with \N
        if block.startswith(b"\\\\\n") or b"\n\\\\\n" in block:
            raise Unbuildable()
        block = block.replace(b"\\N\n", b"").replace(b"\\\\", b"\\")
    return _Lines(block, count - nulls, nulls)


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


def _named_once(job: ExportJobRecord) -> bool:
    """Whether the Patient file holds every patient the other files name, but those the
    Patient statement leaves out for a change after the transaction time: when the job
    writes Patients, with no `_since` and no Patient `_typeFilter` (each CareTeam is one
    of the population's patients', each Group member a patient of the population: its
    periods' foreign key, the same snapshot). Then the other types' lines are recorded
    only for those left out: naming every patient again in their entries took about two
    thirds of an export's time."""
    if "Patient" not in job.types:
        return False
    return job.since is None and not any(f.startswith("Patient?") for f in job.type_filters)


# The types read at once (EXPORT_LANES of these lanes), each lane in a transaction of its
# own on the export's one snapshot (pg_export_snapshot): with three, the large types apart
# and the two small ones before the Groups; with one, the types one after another.
ALL = b"~"  # above every id (hex and dashes): the Patients' lane recorded its whole file
LANES = {
    1: (TYPES,),
    2: (("Patient",), ("Organization", "Practitioner", "CareTeam", "Group")),
    3: (("Patient",), ("CareTeam",), ("Organization", "Practitioner", "Group")),
}


async def _settle(driver: Any) -> None:
    """A transaction of the export: how it runs."""
    # Left out of every horizon (access_log_service.HORIZON): it writes nothing, so it
    # must not hold other exports' transaction time back for its whole run.
    await driver.execute(f"SET LOCAL application_name = '{EXPORT_SNAPSHOT}'")
    # A type is one COPY, one statement for as long as it takes: no statement timeout
    # (a DELETE cancels it through the heartbeat).
    await driver.execute("SET LOCAL statement_timeout = 0")
    # The lanes are the export's parallelism: a parallel plan's workers would compete
    # with them for the same cores.
    await driver.execute("SET LOCAL max_parallel_workers_per_gather = 0")


async def _scans(driver: Any, job: ExportJobRecord) -> None:
    """A transaction of the export: how its statements read their tables."""
    if _reads_every_row(job):
        # Sequential scans and sorts, not index scans: an index in uuid order visits
        # the heap at random, and past the buffer cache that costs more than sorting
        # (measured at 1,000,000 patients: the Patients' statement 28 s against 14 s).
        await driver.execute("SET LOCAL enable_indexscan = off")
        await driver.execute("SET LOCAL enable_bitmapscan = off")


class _Export:
    """One run of a job: its files, written by lanes (LANES) that read one snapshot."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: ExportStorage,
        job: ExportJobRecord,
        *,
        until: datetime.datetime,
        progress: Callable[[str, int], None] | None,
        lanes: int,
    ) -> None:
        self.sessionmaker, self.storage, self.job = sessionmaker, storage, job
        self.lanes = lanes
        self.until, self.progress = until, progress
        self.written: dict[str, int] = {}  # each type's lines so far (the heartbeat's)
        self.later: dict[str, int] = {}  # each type's lines left out (the notices')
        self.stopped = asyncio.Event()  # set by the heartbeat: no longer this attempt's
        # _named_once: the patients the Patient statement leaves out; None: every
        # type's lines are recorded.
        self.left_out: set[bytes] | None = None
        # _named_once: the Patients' lane has recorded every patient up to this id (ALL:
        # its whole file), which the other lanes wait for before writing a block.
        self.recorded_to = b""
        self.advanced = asyncio.Event()
        self.failure: Exception | None = None  # the first lane's failure: the export's

    async def lead(self, driver: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The export's first transaction: its snapshot exported to the other lanes,
        the first lane read on it; (the files, the notices' file)."""
        job = self.job
        await _settle(driver)
        snapshot = await driver.fetchval("SELECT pg_export_snapshot()")
        self.left_out = None
        if _named_once(job):  # a few patients, read through their indexes
            text, args = left_out_statement(job, self.until)
            self.left_out = {str(r[0]).encode() for r in await driver.fetch(text, *args)}
        await _scans(driver, job)
        self.written.clear()
        self.later.clear()
        self.recorded_to = b""
        lanes = [tuple(k for k in kinds if k in job.types) for kinds in LANES[self.lanes]]
        lanes = [kinds for kinds in lanes if kinds] or [()]
        # The first lane on this transaction's connection, the others on their own;
        # each is cancelled if another fails, and the first failure is the export's (not
        # what another lane raised as it was cancelled), with its own cause. (Not the
        # task's cancelling(): the group's own cancel of this task counts there, and a
        # lane's failure was taken for a stop: a test saw a CancelledError.)
        self.failure = None
        try:
            async with asyncio.TaskGroup() as group:
                for kinds in lanes[1:]:
                    group.create_task(self.other_lane(snapshot, kinds))
                await self.lane(driver, lanes[0])
        except ExceptionGroup as failed:
            first = self.failure or failed.exceptions[0]
            raise first from first.__cause__
        output = [
            {"type": kind, "name": _file_name(kind, job.attempts), "count": self.written[kind]}
            for kind in job.types
            if self.written[kind]  # the IG: no output item for a type with no resource
        ]
        return output, await _notices(self.storage, job, self.later)

    async def other_lane(self, snapshot: str, kinds: tuple[str, ...]) -> None:
        async def work(driver: Any) -> None:
            await _settle(driver)
            await _scans(driver, self.job)
            await self.lane(driver, kinds)

        async with self.sessionmaker() as db:
            await run_transaction(
                db,
                operation="bulk_export",
                organization_id=self.job.organization_id,
                work=work,
                snapshot=snapshot,
            )

    async def lane(self, driver: Any, kinds: tuple[str, ...]) -> None:
        try:
            for kind in kinds:
                await self.copy(driver, kind)
                if kind == "Patient" and self.left_out is not None:
                    if self.later["Patient"] != len(self.left_out):
                        # The two statements disagree on which patients changed: the log
                        # could miss some, so the export stops rather than say it is whole.
                        raise RuntimeError("the Patients left out differ from those found before")
                    self._recorded(ALL)
        except Exception as err:
            if self.failure is None:
                self.failure = err
            raise

    def _recorded(self, to: bytes) -> None:
        """The Patients' lane has recorded every patient up to `to`: the lanes waiting
        for it look again (an event per step, no lock: a waiter cancelled because that
        lane failed holds nothing)."""
        self.recorded_to = to
        self.advanced.set()
        self.advanced = asyncio.Event()

    async def _recorded_past(self, last: bytes) -> None:
        """Once the Patients' lane has recorded every patient up to `last`."""
        while self.recorded_to < last:
            await self.advanced.wait()

    async def _record(self, kind: str, number: int, data: bytes) -> None:
        """The access log entry of a block, before it is written: every patient its lines
        name or (_named_once) for the other types, those the Patient file leaves out,
        once the Patients' lane has recorded all the others the block names (a
        CareTeam's come in the Patients' order, id; a Group's members in any: then the
        whole Patient file)."""
        pattern = NAMED_PATIENTS.get(kind)
        if pattern is None or not data:
            return
        if self.left_out is None or kind == "Patient":
            named = pattern.findall(data)
        else:
            last = ALL
            if kind == "CareTeam":  # its last line names its highest patient (id order)
                found = pattern.search(data, data.rfind(b"\n", 0, len(data) - 1) + 1)
                last = found[1] if found else ALL
            await self._recorded_past(last)
            # The whole block looked through only when some patients were left out.
            named = (
                [p for p in pattern.findall(data) if p in self.left_out] if self.left_out else []
            )
        if named:
            patients = [UUID(p.decode()) for p in named]
            await _record_page(self.sessionmaker, self.job, kind, number, patients)
            if kind == "Patient" and self.left_out is not None:
                self._recorded(named[-1])

    async def copy(self, driver: Any, kind: str) -> None:
        """One type's file, from its statement's COPY."""
        job = self.job
        self.written[kind] = self.later[kind] = 0
        text, args = statement(job, kind, self.until)
        writer = self.storage.writer(job.organization_id, job.id, _file_name(kind, job.attempts))
        blocks: list[bytes] = []
        held, number = 0, 0
        # The block before, being recorded and written while the COPY goes on (memory
        # holds two blocks).
        delivering: asyncio.Task[None] | None = None

        async def deliver(lines: _Lines, number: int) -> None:
            # Recorded before it is written: no block leaves unrecorded, even one that
            # is stopped.
            await self._record(kind, number, lines.data)
            if lines.data:
                await asyncio.to_thread(writer.write, lines.data)
            self.written[kind] += lines.count
            if self.progress is not None:
                self.progress(kind, self.written[kind])

        async def flush() -> None:
            nonlocal held, number, delivering
            lines = _lines(b"".join(blocks))
            blocks.clear()
            held = 0
            self.later[kind] += lines.left_out
            if delivering is not None:
                await delivering  # in order; its failure stops the COPY
            if self.stopped.is_set():
                raise Cancelled()
            delivering = asyncio.create_task(deliver(lines, number))
            number += 1

        async def sink(chunk: bytes) -> None:
            nonlocal held
            blocks.append(chunk)
            held += len(chunk)
            if held >= BLOCK:
                await flush()
            elif len(chunk) < SMALL:
                await asyncio.sleep(WAIT_S)

        try:
            await driver.copy_from_query(text, *args, output=sink)
            await flush()
            if delivering is not None:
                await delivering
        finally:
            if delivering is not None and not delivering.done():
                delivering.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await delivering
            await asyncio.to_thread(writer.close)


async def run_export(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ExportStorage,
    job: ExportJobRecord,
    *,
    progress: Callable[[str, int], None] | None = None,
    heartbeat_s: float | None = HEARTBEAT_S,
    lanes: int = 3,
) -> tuple[datetime.datetime, list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the job's files; (transaction time, [{type, name, count}] per file of
    resources, the same for the notices' file: see _notices). Raises
    Cancelled when its heartbeat finds it no longer this attempt's. `progress(type,
    count so far)` is called after every block (the CLI's bar). `heartbeat_s` None: no
    heartbeat (a job that is not in export_jobs: the CLI's). `lanes`: how many
    connections read at once (EXPORT_LANES, LANES)."""
    org = job.organization_id
    async with sessionmaker() as db:
        until = await BulkExportService.transaction_time(db=db, organization_id=org)
    run = _Export(sessionmaker, storage, job, until=until, progress=progress, lanes=lanes)
    beater = None
    if heartbeat_s is not None:
        beater = asyncio.create_task(
            _heartbeat(sessionmaker, job, heartbeat_s, run.written, run.stopped)
        )

    async def export() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with sessionmaker() as db:
            return await run_transaction(
                db, operation="bulk_export", organization_id=org, work=run.lead, snapshot=True
            )

    # Stopped (deleted, or taken for dead) as soon as the heartbeat finds it, whatever a
    # COPY is doing: it is cancelled, not left to run until its next block.
    exporting = asyncio.ensure_future(export())
    stopping = asyncio.ensure_future(run.stopped.wait())
    stopping.add_done_callback(lambda _: exporting.cancel())
    try:
        output, notices = await exporting
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if run.stopped.is_set() and (task is None or not task.cancelling()):
            raise Cancelled() from None
        raise
    finally:
        for side in (beater, stopping):
            if side is not None:
                side.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await side
    return until, output, notices


def _ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in resources)


class ExportRunner:
    """The background runner of one process (see the module docstring)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: ExportStorage,
        *,
        workers: int,
        lanes: int = 3,
        stale_s: float = 30.0,
        poll_s: float = POLL_S,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._storage = storage
        self._workers = workers
        self._lanes = lanes
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
                self._sessionmaker,
                self._storage,
                job,
                heartbeat_s=self._heartbeat_s,
                lanes=self._lanes,
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
