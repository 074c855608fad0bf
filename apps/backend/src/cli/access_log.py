"""The access log from the command line: print a patient's (or an organization's)
entries, and prune old ones.

`careteam access-log --patient ID` reads as the application does (the application role,
one organization's rows; the organization found from the patient as the owner, unless
--organization names it). `careteam access-log prune --older-than 2190d` deletes as the
owner (the application role cannot): a dry run that counts unless --execute, in batches,
each its own transaction, with progress. Neither is recorded in the log itself (no API
key acts: the operator does).
"""

from __future__ import annotations

import datetime
import re
import sys
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from src.cli.care_team import OrganizationOption, as_tenant
from src.cli.common import (
    JsonOption,
    console,
    errors,
    owner_call,
    parse_uuid,
    print_json,
    usage_error,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

access_log_app = typer.Typer(
    help="The access log: who read or changed which patient's data. Without a command: "
    "print entries (--patient or --organization).",
    invoke_without_command=True,
)

DEFAULT_LIMIT = 100
_AGE = re.compile(r"([1-9][0-9]{0,5})d")
MAX_DAYS = 36_500  # a century: older than that is older than any entry (and any date)


def _instant(value: str | None) -> datetime.datetime | None:
    if value is None:
        return None
    from src.values import parse_instant

    try:
        return parse_instant(value)
    except ValueError as err:
        usage_error(f"--after {err}")


def _who(entry: Any) -> str:
    if entry.client_id is not None:
        return f"client {entry.client_id}"
    if entry.operator is not None:  # an operator's command, no credential
        return f"operator {entry.operator}"
    return f"key {entry.api_key_id}"


@access_log_app.callback(invoke_without_command=True)
def access_log(
    ctx: typer.Context,
    *,
    patient: Annotated[
        str | None,
        typer.Option(
            "--patient", metavar="PATIENT_ID", help="Only the requests that named this patient."
        ),
    ] = None,
    organization: OrganizationOption = None,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            metavar="INSTANT",
            help="Only entries recorded after this RFC 3339 instant (e.g. 2026-12-01T00:00:00Z).",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many entries (oldest first).")
    ] = DEFAULT_LIMIT,
    as_json: JsonOption = False,
) -> None:
    """Print the access log, oldest first: each request that read or changed patient data
    (when, the route, the status, who asked, the patients it named)."""
    if ctx.invoked_subcommand is not None:
        if patient or organization or after or as_json or limit != DEFAULT_LIMIT:
            usage_error("access-log's options go with printing entries, not with a command")
        return
    from src.services.access_log_service import MAX_PAGE, AccessLogService

    if patient is None and organization is None:
        usage_error("give --patient PATIENT_ID or --organization ORG_ID (or both)")
    patient_id = None if patient is None else parse_uuid(patient, "PATIENT_ID")
    since = _instant(after)
    start = None if since is None else (since, uuid.UUID(int=(1 << 128) - 1))

    async def read(db: AsyncSession, org: uuid.UUID) -> list[Any]:
        found: list[Any] = []
        position = start
        while len(found) < limit:
            wanted = min(MAX_PAGE, limit - len(found))
            page = await AccessLogService.list_entries(
                db=db, organization_id=org, patient_id=patient_id, after=position, limit=wanted
            )
            found += page
            if len(page) < wanted:
                break
            position = (page[-1].recorded_at, page[-1].id)
        return found

    lookup = None if patient_id is None else {"patient_id": patient_id}
    org, items = as_tenant(organization, lookup, read)
    if as_json:
        print_json({"organization_id": org, "patient_id": patient_id, "items": items})
        return
    what = f"patient {patient_id}" if patient_id else "every patient"
    console.print(
        f"Access log of organization {org}, {what}: {len(items)} entr"
        + ("y" if len(items) == 1 else "ies")
        + (f" (the first {limit}: --limit for more)" if len(items) == limit else ""),
        highlight=False,
        soft_wrap=True,
    )
    if not items:
        return
    table = Table("recorded", "route", "status", "who", "patients", "results")
    for e in items:
        patients = ", ".join(str(p) for p in e.patient_ids[:3]) + (
            f" (+{len(e.patient_ids) - 3})" if len(e.patient_ids) > 3 else ""
        )
        table.add_row(
            e.recorded_at.isoformat(),
            e.route,
            str(e.status),
            _who(e),
            patients,
            "" if e.result_count is None else str(e.result_count),
        )
    console.print(table)


@access_log_app.command("prune")
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Entries recorded more than AGE ago, in days: 2190d is six years.",
        ),
    ],
    execute: Annotated[
        bool, typer.Option("--execute", help="Delete them (without it: a dry run that counts).")
    ] = False,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=100_000, help="Entries per transaction.")
    ] = 10_000,
    as_json: JsonOption = False,
) -> None:
    """Delete the access log entries older than AGE, every organization's, as the owner:
    in batches (each its own transaction: an interrupted prune keeps what it deleted and
    finishes when run again), with progress. A dry run unless --execute."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from src.services.access_log_service import AccessLogService

    match = _AGE.fullmatch(older_than)
    if match is None:
        usage_error(f"--older-than is a number of days such as 2190d, got {older_than[:40]!r}")
    days = int(match.group(1))
    if days > MAX_DAYS:
        usage_error(f"--older-than is at most {MAX_DAYS}d (a century), got {days}d")
    cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days)
    show_progress = execute and not as_json and sys.stderr.isatty()
    progress = Progress(
        TextColumn("pruning the access log"),
        BarColumn(),
        MofNCompleteColumn(),
        console=errors,
        disable=not show_progress,
    )
    task = progress.add_task("prune", total=None)

    async def work(db: AsyncSession) -> tuple[int, int]:
        counts = await AccessLogService.count_older(db=db, cutoff=cutoff)
        total = sum(counts.values())
        if not execute or not total:
            return total, 0
        progress.update(task, total=total)

        def report(deleted: int) -> None:
            progress.update(task, completed=deleted)
            if not show_progress and not as_json:
                print(f"  deleted {deleted:,} of {total:,}", file=sys.stderr, flush=True)

        deleted = await AccessLogService.prune(
            db=db, cutoff=cutoff, batch_size=batch, progress=report
        )
        return total, deleted

    with progress:
        total, deleted = owner_call(work)
    if as_json:
        print_json({"cutoff": cutoff, "dry_run": not execute, "older": total, "deleted": deleted})
    elif not execute:
        console.print(
            f"DRY RUN: {total:,} access log entr{'y' if total == 1 else 'ies'} recorded before "
            f"{cutoff.isoformat()} ({days} days ago). Add --execute to delete them.",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"Deleted {deleted:,} access log entr{'y' if deleted == 1 else 'ies'} recorded "
            f"before {cutoff.isoformat()} ({days} days ago).",
            highlight=False,
            soft_wrap=True,
        )
