"""`careteam export`: a FHIR Bulk Data export from the command line, into a directory.

The same export as `GET /fhir/R4/$export` (or `Group/{id}/$export` with --group): one
snapshot of the database, the FHIR API's resources, one NDJSON file per type, with
progress on stderr (a line per type on a terminal; without one, plain lines as it goes).
It runs here, not in the server's background, and is not kept as a job. The operator
acts as no API credential: the access log records each page of patients as the
operator's (`operator`: user@host of this shell; route `careteam export`), as it records
a client's. It logs one line with the organization, the group,
the counts and the directory (ids only).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pwd
import socket
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from src.cli.common import (
    CommandFailed,
    errors,
    parse_uuid,
    require_head,
    run,
    usage_error,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


logger = logging.getLogger(__name__)
PROGRESS_EVERY = 100_000  # resources between two progress lines, without a terminal


class _OutDirectory:
    """The export's files straight into the directory the operator named."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def writer(self, organization_id: uuid.UUID, job_id: uuid.UUID, name: str) -> object:
        from src.services.export_storage import FILE_NAME, _FileWriter

        if not FILE_NAME.fullmatch(name):
            raise ValueError(name)
        # The server's store names a file for its attempt too (Patient-1.ndjson): here,
        # by its type alone.
        return _FileWriter(self.root / f"{name.rsplit('-', 1)[0]}.ndjson")


class _Progress:
    """The export's progress on stderr: on a terminal, a line per type that counts up;
    without one (a log, CI), plain lines instead of a bar's glyphs: a type's count so
    far every PROGRESS_EVERY resources (the types are read at once, so these lines
    interleave), then each type's count, in the export's order, once all are done."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.terminal = sys.stderr.isatty()
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,} resources"),
            TimeElapsedColumn(),
            console=errors,
            transient=False,
            disable=not self.terminal,
        )
        self.tasks = {kind: self.bar.add_task(kind, total=None) for kind in kinds}
        self.counts: dict[str, int] = {}
        self.printed: dict[str, int] = {}

    def __enter__(self) -> _Progress:
        self.bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.bar.stop()

    def update(self, kind: str, count: int) -> None:
        self.bar.update(self.tasks[kind], completed=count)
        self.counts[kind] = count
        if not self.terminal and count - self.printed.get(kind, 0) >= PROGRESS_EVERY:
            print(f"  {kind}: {count:,} resources so far", file=sys.stderr, flush=True)
            self.printed[kind] = count

    def done(self) -> None:
        if self.terminal:
            return
        for kind in self.tasks:  # 0 for a type with no resource
            count = self.counts.get(kind, 0)
            said = f"{count:,} resource{'' if count == 1 else 's'}"
            print(f"  {kind}: {said}", file=sys.stderr, flush=True)


def export(
    organization: Annotated[
        str, typer.Option("--organization", metavar="ORG_ID", help="The organization (a UUID).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Where to write the NDJSON files (created if missing; files of the same "
            "names are replaced).",
        ),
    ],
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            metavar="PROVIDER_ID",
            help="Only the Group of this provider: the patients ever attributed to them, "
            "their care teams and the practitioners those name (default: the whole "
            "organization).",
        ),
    ] = None,
    types: Annotated[
        str | None,
        typer.Option(
            "--type",
            metavar="TYPES",
            help="Resource types, comma-separated (as _type; default: all).",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="INSTANT",
            help="Only resources changed after this instant (as _since), e.g. the "
            "transactionTime of the last export.",
        ),
    ] = None,
) -> None:
    """Export an organization (or one provider's Group) as FHIR NDJSON files."""
    from src.api.bulk_export import LEVEL_TYPES, Unbuildable, run_export
    from src.config import get_settings
    from src.db import open_database
    from src.services.bulk_export import unkept_job
    from src.services.export_storage import ExportStorageError
    from src.services.fhir_search import by_ids, run_search
    from src.services.organization_service import OrganizationService

    org = parse_uuid(organization, "ORG_ID")
    provider = None if group is None else parse_uuid(group, "PROVIDER_ID")
    level = "system" if provider is None else "group"
    after = _since(since)
    if out.exists() and not out.is_dir():
        usage_error(f"--out {out}: not a directory")
    chosen = _chosen(types, LEVEL_TYPES[level])
    job = unkept_job(
        organization_id=org,
        requester=f"operator:{operator()}",
        request="careteam export",
        level=level,
        group_id=provider,
        types=chosen,
        since=after,
    )

    async def work(engine: AsyncEngine, url: str) -> tuple[datetime.datetime, Output, Output]:
        from sqlalchemy.ext.asyncio import AsyncSession

        from src.services.errors import CareTeamError

        await require_head(engine)
        async with AsyncSession(engine) as owner:
            try:
                await OrganizationService.require_organization(db=owner, organization_id=org)
            except CareTeamError as err:
                raise CommandFailed(err.message) from None
        settings = get_settings()
        # Its own pool, sized for its lanes (it serves nothing else).
        database = open_database(
            settings.model_copy(update={"db_pool_size": settings.export_pool_size}), url
        )
        try:
            if provider is not None:
                async with database.sessionmaker() as db:
                    page = await run_search(
                        db=db, organization_id=org, search=by_ids("Practitioner", [provider])
                    )
                if not page.found or not page.found[0].record.active:
                    raise CommandFailed(
                        f"provider {provider} is not an active provider of organization {org}"
                    )
            out.mkdir(parents=True, exist_ok=True)
            # The last run's manifest goes first: files written by a run that then fails
            # are never described by an older manifest.
            (out / "manifest.json").unlink(missing_ok=True)
            with _Progress(chosen) as shown:
                try:
                    finished = await run_export(
                        database.sessionmaker,
                        _OutDirectory(out),  # type: ignore[arg-type]
                        job,
                        progress=shown.update,
                        heartbeat_s=None,
                        lanes=settings.export_lanes,
                    )
                    shown.done()
                    return finished
                except Unbuildable as err:
                    raise CommandFailed(f"{err} (no manifest.json was written)") from None
                except ExportStorageError as err:  # full, read-only, a name taken
                    raise CommandFailed(
                        f"could not write the export into {out}: {err} (no manifest.json "
                        "was written)"
                    ) from None
        finally:
            await database.dispose()

    until, output, notices = run(work)
    _report(out, org, group, until, output, notices)


def _report(
    out: Path, org: uuid.UUID, group: str | None, until: datetime.datetime, *files: Output
) -> None:
    output, notices = files
    logger.info(
        "export of organization %s written to %s",
        org,
        out,
        extra={"event": "cli_export", "organization_id": str(org), "group": group},
    )
    at = _write_manifest(out, until, output, notices)
    total = sum(int(str(o["count"])) for o in output)
    typer.echo(
        f"exported {total:,} resources to {out} (transactionTime {at}; manifest.json lists "
        "the files)"
    )


Output = list[dict[str, Any]]


def operator() -> str:
    """Who runs this command, as the access log names an operator: user@host, the user
    being the account name of this process's uid (not $USER, which anyone sets; the uid
    itself when it has no account), and under sudo, who ran sudo as well."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = f"uid {os.getuid()}"
    by = os.environ.get("SUDO_USER")
    name = f"{user}@{socket.gethostname()}" + (f" (sudo by {by})" if by and by != user else "")
    return name[:200]


def _since(since: str | None) -> datetime.datetime | None:
    from src.values import parse_instant

    if since is None:
        return None
    try:
        return parse_instant(since)
    except ValueError as err:
        usage_error(f"--since {err}")


def _chosen(types: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if types is None:
        return allowed
    named = [t.strip() for t in types.split(",") if t.strip()]
    unknown = [t for t in named if t not in allowed]
    if unknown or not named:
        usage_error(f"--type: {', '.join(unknown) or '(none)'}: choose among {', '.join(allowed)}")
    return tuple(t for t in allowed if t in named)


def _write_manifest(out: Path, until: datetime.datetime, output: Output, notices: Output) -> str:
    """manifest.json beside the files, as the status URL's manifest (file names for URLs)."""
    at = until.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
    manifest = {
        "transactionTime": at,
        "request": "careteam export",
        "output": [
            {"type": o["type"], "url": f"{o['type']}.ndjson", "count": o["count"]} for o in output
        ],
        "error": [
            {"type": o["type"], "url": f"{o['type']}.ndjson", "count": o["count"]} for o in notices
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return at
