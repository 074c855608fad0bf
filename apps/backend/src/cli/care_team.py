"""Care teams and panels from the command line: team, panel transfer, report panels.

They run as the application does (the application role, one organization's rows) with
the service's own calls, so they answer exactly what the API answers. The organization
is found from the patient or provider given (as the owner), unless --organization
names it.
"""

from __future__ import annotations

import datetime
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from src.cli.common import (
    JsonOption,
    console,
    errors,
    fail,
    parse_uuid,
    print_json,
    require_head,
    run,
    usage_error,
)
from src.config import get_settings
from src.models import ChangeReason  # --reason's choices: typer reads them for every command

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

T = TypeVar("T")

ACTOR = "careteam-cli"

panel_app = typer.Typer(help="Providers' panels: transfer one to another provider.")
report_app = typer.Typer(help="Reports on an organization's panels.")

OrganizationOption = Annotated[
    str | None,
    typer.Option(
        "--organization",
        metavar="ORG_ID",
        help="The organization (default: found from the id given).",
    ),
]


def as_tenant(
    organization: str | None,
    owner_lookup: dict[str, uuid.UUID] | None,
    action: Callable[[AsyncSession, uuid.UUID], Awaitable[T]],
) -> tuple[uuid.UUID, T]:
    """Run `action(session, organization)` on an application session of the organization:
    the one given (it must exist), or the one of the record `owner_lookup` names
    (`{"patient_id": id}` or `{"provider_id": id}`), found as the owner."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from src.db import open_database
    from src.services.errors import CareTeamError
    from src.services.organization_service import OrganizationService

    given = None if organization is None else parse_uuid(organization, "ORG_ID")

    async def work(engine: AsyncEngine, url: str) -> tuple[uuid.UUID, T]:
        await require_head(engine)
        async with AsyncSession(engine) as owner:
            if given is not None:
                await OrganizationService.require_organization(db=owner, organization_id=given)
                org = given
            else:
                assert owner_lookup is not None
                try:
                    org = await OrganizationService.organization_of(db=owner, **owner_lookup)
                except CareTeamError as err:  # looked for in every organization
                    err.message = err.message.replace("in this organization", "in any organization")
                    raise
        database = open_database(get_settings(), url)
        try:
            async with database.sessionmaker() as session:
                return org, await action(session, org)
        finally:
            await database.dispose()

    try:
        return run(work)
    except CareTeamError as err:
        fail(err.message)


def _instant(value: str | None) -> datetime.datetime | None:
    if value is None:
        return None
    from src.values import parse_instant

    try:
        return parse_instant(value)
    except ValueError as err:
        usage_error(f"--as-of {err}")


def _when(at: datetime.datetime | None) -> str:
    return "" if at is None else at.isoformat()


def team(
    patient_id: Annotated[
        str, typer.Argument(metavar="PATIENT_ID", help="The patient's id (a UUID).")
    ],
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="INSTANT",
            help="The team as it stood then: RFC 3339 with its offset, e.g. "
            "2026-03-01T09:30:00Z (default: now).",
        ),
    ] = None,
    periods: Annotated[
        bool, typer.Option("--periods", help="Every period instead: who held which role when.")
    ] = False,
    organization: OrganizationOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a patient's care team (now or --as-of an instant), or all its periods."""
    from src.services.care_team_service import MAX_PERIODS_PAGE, CareTeamService

    patient = parse_uuid(patient_id, "PATIENT_ID")
    instant = _instant(as_of)
    if periods and instant is not None:
        usage_error("--periods lists every period; it takes no --as-of")

    if periods:

        async def all_periods(db: AsyncSession, org: uuid.UUID) -> list[Any]:
            found: list[Any] = []
            while True:
                page = await CareTeamService.get_care_team_periods(
                    db=db,
                    organization_id=org,
                    patient_id=patient,
                    limit=MAX_PERIODS_PAGE,
                    after=(found[-1].valid_from, found[-1].provider_id) if found else None,
                )
                found += page
                if len(page) < MAX_PERIODS_PAGE:
                    return found

        org, items = as_tenant(organization, {"patient_id": patient}, all_periods)
        if as_json:
            print_json({"organization_id": org, "patient_id": patient, "items": items})
            return
        table = Table("provider", "role", "from", "to", "started because", "ended because")
        for p in items:
            table.add_row(
                str(p.provider_id),
                p.role,
                _when(p.valid_from),
                _when(p.valid_to) or "(open)",
                p.start_reason,
                p.end_reason or "",
            )
        console.print(
            f"Care team periods of patient {patient} (organization {org}):", soft_wrap=True
        )
        console.print(table)
        return

    async def read(db: AsyncSession, org: uuid.UUID) -> Any:
        return await CareTeamService.get_care_team(
            db=db, organization_id=org, patient_id=patient, as_of=instant
        )

    org, care_team = as_tenant(organization, {"patient_id": patient}, read)
    members = [
        {"provider_id": m.provider_id, "role": m.role.value, "since": m.since}
        for m in care_team.members
    ]
    if as_json:
        print_json(
            {
                "organization_id": org,
                "patient_id": patient,
                "as_of": instant,
                "primary_provider_id": care_team.primary_provider_id,
                "members": members,
            }
        )
        return
    when = f"as of {_when(instant)}" if instant else "now"
    console.print(f"Care team of patient {patient} (organization {org}), {when}:", soft_wrap=True)
    if not members:
        console.print("  (no members)")
        return
    table = Table("provider", "role", "since")
    for m in members:
        table.add_row(str(m["provider_id"]), str(m["role"]), _when(m["since"]))
    console.print(table)


@panel_app.command("transfer")
def panel_transfer(
    from_provider: Annotated[
        str, typer.Argument(metavar="FROM_PROVIDER_ID", help="The provider whose panel moves.")
    ],
    to_provider: Annotated[
        str, typer.Argument(metavar="TO_PROVIDER_ID", help="The provider who takes it.")
    ],
    *,
    reason: Annotated[
        ChangeReason,
        typer.Option(
            metavar="REASON",
            help="Why the patients move (stored on every event and period): "
            + ", ".join(r.value for r in ChangeReason)
            + ".",
        ),
    ],
    note: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT", help="Free text stored with the change (never logged), at most 500."
        ),
    ] = None,
    remove_previous: Annotated[
        bool,
        typer.Option(
            "--remove-previous",
            help="Take FROM off the teams (default: it stays on them as a secondary).",
        ),
    ] = False,
    execute: Annotated[
        bool, typer.Option("--execute", help="Do it (without it: a dry run that says what).")
    ] = False,
    organization: OrganizationOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make TO the primary provider of every patient whose primary is FROM, in batches,
    within TO's capacity. A dry run unless --execute; safe to run again (it moves only
    what is left), and an interrupted run resumes where it stopped."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from src.services.panel_service import PanelService, PreviousProvider

    source = parse_uuid(from_provider, "FROM_PROVIDER_ID")
    target = parse_uuid(to_provider, "TO_PROVIDER_ID")
    previous = PreviousProvider.REMOVE if remove_previous else PreviousProvider.KEEP_AS_SECONDARY
    show_progress = execute and not as_json and sys.stderr.isatty()
    progress = Progress(
        TextColumn("moving patients"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        disable=not show_progress,
    )
    task = progress.add_task("transfer", total=None)
    printed = [0]

    def report(moved: int, total: int) -> None:
        progress.update(task, completed=moved, total=total)
        if not show_progress and not as_json and moved - printed[0] >= 1000:
            # Without a terminal (a log, CI): a line per thousand instead of a bar.
            print(f"  moved {moved:,} of {total:,}", file=sys.stderr, flush=True)
            printed[0] = moved

    async def transfer(db: AsyncSession, org: uuid.UUID) -> Any:
        return await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=source,
            to_provider_id=target,
            reason=reason,
            note=note,
            previous_provider=previous,
            dry_run=not execute,
            actor=ACTOR,
            progress=report,
        )

    with progress:
        org, result = as_tenant(organization, {"provider_id": source}, transfer)
    if as_json:
        print_json({"organization_id": org, **asdict(result)})
    elif result.dry_run:
        console.print(
            f"DRY RUN (organization {org}): {result.moved:,} of "
            f"{result.moved + result.remaining:,} patient(s) "
            f"would move from provider {source} to provider {target}"
            + (
                f"; {result.refused_capacity:,} would not fit its capacity"
                if result.refused_capacity
                else ""
            )
            + ". Add --execute to move them.",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"Moved {result.moved:,} patient(s) from provider {source} to provider {target} "
            f"(organization {org}); {result.remaining:,} left"
            + (
                f", of which {result.refused_capacity:,} did not fit its capacity (raise it, "
                "then run again)"
                if result.refused_capacity
                else ""
            )
            + ".",
            highlight=False,
            soft_wrap=True,
        )
    if result.remaining and not result.dry_run:  # with --json too
        raise typer.Exit(1)


@report_app.command("panels")
def report_panels(
    organization: Annotated[
        str, typer.Option("--organization", metavar="ORG_ID", help="The organization's id.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Every provider's panel size and capacity, and the patients without a primary
    provider (with a care team or none at all)."""
    from src.services.panel_service import PanelService

    async def read(db: AsyncSession, org: uuid.UUID) -> Any:
        return await PanelService.report_panels(db=db, organization_id=org)

    org, report = as_tenant(organization, None, read)
    if as_json:
        print_json({"organization_id": org, **asdict(report)})
        return
    table = Table("provider", "active", "panel size", "capacity", "room")
    for p in report.providers:
        room = "" if p.panel_capacity is None else f"{max(0, p.panel_capacity - p.panel_size):,}"
        table.add_row(
            str(p.provider_id),
            "yes" if p.active else "no",
            f"{p.panel_size:,}",
            "no limit" if p.panel_capacity is None else f"{p.panel_capacity:,}",
            room,
        )
    console.print(f"Panels of organization {org}:")
    console.print(table)
    console.print(
        f"Patients without a primary provider: {report.patients_without_primary:,} "
        "(with a care team or none at all)"
    )
