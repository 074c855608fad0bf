"""The `careteam` command (run `uv run careteam --help` from apps/backend).

Every command uses DATABASE_URL, or the embedded PostgreSQL when it is unset. Errors
are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import uvicorn
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from src import diagnostics, migration_runner
from src.api.app import create_app
from src.api.http_protocol import HeadLimitedHttpToolsProtocol
from src.config import ConfigurationError, Settings, get_settings
from src.db import create_engine, open_database
from src.embedded import (
    EmbeddedServerError,
    ServerInUse,
    is_running,
    release_database,
    resolve_database_url,
    stop_embedded_server,
    supervised,
)
from src.log_config import configure_logging
from src.services.care_team_service import CareTeamService
from src.services.directory_service import DirectoryService
from src.services.errors import CareTeamError
from src.services.organization_service import IssuedApiKey, OrganizationService

app = typer.Typer(
    name="careteam",
    help="Care team backend: the HTTP API, migrations, checks, tenants and keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)


@app.callback()
def _every_command() -> None:
    # SIGTERM (what systemd and container runtimes send) stops a command as Ctrl-C
    # does: by KeyboardInterrupt, so that it cleans up (and stops the embedded server it
    # started) instead of dying on the spot.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


T = TypeVar("T")

COUNTED_TABLES = (
    "organizations",
    "patients",
    "providers",
    "care_team_assignments",
    "care_team_events",
)


def fail(message: str, code: int = 2) -> NoReturn:
    errors.print(f"[red]❌ ERROR:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(work: Callable[[AsyncEngine, str], Awaitable[T]]) -> T:
    """Run `work(owner engine, its libpq URL)`; turn every expected failure into one line."""

    async def main() -> T:
        settings = get_settings()
        url = resolve_database_url(settings)
        engine = create_engine(url, settings)
        try:
            return await work(engine, url)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except BrokenPipeError:  # the reader went away (`| head`): not a database error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except (ConfigurationError, diagnostics.CannotRun) as err:
        fail(str(err))
    except CommandError as err:
        fail(f"migration failed: {err}")
    except (*diagnostics.DATABASE_ERRORS, SQLAlchemyError) as err:
        fail(f"database error: {diagnostics.describe_connection_error(err)}")


def _revision_order() -> list[str]:
    """Revisions from base to head."""
    scripts = ScriptDirectory.from_config(migration_runner.alembic_config())
    return [rev.revision for rev in reversed(list(scripts.walk_revisions()))]


async def _report_status(engine: AsyncEngine, url: str) -> None:
    """Schema revision, row counts, then the primary-provider check (20 of each kind)."""
    revision = await migration_runner.current_revision(engine)
    head = migration_runner.head_revision()
    mark = "[green]at head[/green]" if revision == head else f"[yellow]head is {head}[/yellow]"
    console.print(f"Schema revision: {revision or '(empty database)'} {mark}", highlight=False)
    if revision is None:
        return
    table = Table("table", "rows", show_edge=False)
    async with engine.connect() as conn:
        for name in COUNTED_TABLES:
            if (await conn.execute(text("SELECT to_regclass(:t)"), {"t": name})).scalar():
                rows = (await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one()
                table.add_row(name, f"{rows:,}")
    console.print(table)
    sys.stdout.flush()
    await diagnostics.run_check(url, diagnostics.Options(limit=20), sys.stdout)


@app.command()
def migrate(
    to: Annotated[str, typer.Option("--to", help="Target revision (default: head).")] = "head",
) -> None:
    """Migrate the database to head (or --to REV, up or down), then report its state."""
    order = _revision_order()
    if to not in ("head", "base") and to not in order:
        fail(f"unknown revision {to!r}; known: {', '.join(order)}")

    async def work(engine: AsyncEngine, url: str) -> None:
        current = await migration_runner.current_revision(engine)
        position = {rev: i for i, rev in enumerate(order)}
        target = order[-1] if to == "head" else to
        if current == target or (to == "base" and current is None):
            console.print(f"Already at {to} ({current or 'empty'}): nothing to do.")
        elif to == "base" or (current is not None and position[target] < position[current]):
            console.print(f"Downgrading {current} -> {to} ...")
            await migration_runner.downgrade(engine, to)
        else:
            console.print(f"Upgrading {current or '(empty)'} -> {target} ...")
            await migration_runner.upgrade(engine, target)
        await _report_status(engine, url)

    run(work)


@app.command()
def status() -> None:
    """Report the schema revision, row counts and the primary-provider check."""
    run(_report_status)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def check(ctx: typer.Context) -> None:
    """Find patients with more than one primary provider (exit 0 clean, 1 found, 2 error).

    The same program, with the same options, as scripts/check_primary_provider_violations.py:
    `careteam check --help` lists them (--json, --organization, --limit, --fix, --execute).
    """
    raise typer.Exit(diagnostics.main(ctx.args, prog="careteam check"))


def _parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        fail(f"{what} must be a UUID, got {value!r}")


def _owner_call(action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run a service call on an owner session (organizations and keys span tenants)."""

    async def work(engine: AsyncEngine, _url: str) -> T:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            return await action(session)

    try:
        return run(work)
    except CareTeamError as err:
        fail(err.message)


@dataclass(frozen=True)
class DemoSeed:
    issued: IssuedApiKey
    provider_ids: list[uuid.UUID]
    patient_ids: list[uuid.UUID]  # the first has a team: providers 1 (primary) and 2

    def describe(self, base_url: str) -> str:
        """Every id it made, the key (shown once), and a request to try."""
        lines = [
            f"Demo organization {self.issued.organization_id} created.",
            f"API key id: {self.issued.id}",
            f"API key (shown once, keep it): [bold]{self.issued.key}[/bold]",
        ]
        lines += [f"Provider {i}: {p}" for i, p in enumerate(self.provider_ids, 1)]
        lines += [f"Patient {i}: {p}" for i, p in enumerate(self.patient_ids, 1)]
        lines.append(
            "  (patient 1's care team: provider 1 primary, provider 2 secondary; "
            "patient 2 has none yet)"
        )
        lines.append(
            f"Try: curl -H 'Authorization: Bearer {self.issued.key}' "
            f"{base_url}/v1/patients/{self.patient_ids[0]}/care-team"
        )
        return "\n".join(lines)


async def _seed_demo(engine: AsyncEngine, url: str) -> DemoSeed | None:
    """On an empty database: a demo organization, three providers, two patients, and a
    care team for the first patient. Returns what it made, or None."""
    async with engine.connect() as conn:
        if (await conn.execute(text("SELECT count(*) FROM organizations"))).scalar_one():
            return None
    async with AsyncSession(engine, expire_on_commit=False) as owner:
        issued = await OrganizationService.create_organization(db=owner, name="Demo Clinic")
    org = issued.organization_id
    database = open_database(get_settings(), url)
    try:
        async with database.sessionmaker() as db:
            providers = [
                await DirectoryService.create_provider(
                    db=db, organization_id=org, first_name="Demo", last_name=f"Provider {i}"
                )
                for i in (1, 2, 3)
            ]
            patients = [
                await DirectoryService.create_patient(
                    db=db,
                    organization_id=org,
                    first_name="Demo",
                    last_name=f"Patient {i}",
                    dob=datetime.date(1970 + i, 1, 1),
                )
                for i in (1, 2)
            ]
            await CareTeamService.assign_primary_provider(
                db=db,
                organization_id=org,
                patient_id=patients[0].id,
                provider_id=providers[0].id,
                actor="demo-seed",
            )
            await CareTeamService.add_secondary_provider(
                db=db,
                organization_id=org,
                patient_id=patients[0].id,
                provider_id=providers[1].id,
                actor="demo-seed",
            )
    finally:
        await database.dispose()
    return DemoSeed(issued, [p.id for p in providers], [p.id for p in patients])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (default: LOG_LEVEL).")
    ] = None,
    migrate: Annotated[
        bool,
        typer.Option(
            help="With DATABASE_URL: migrate to head first (otherwise the schema must be "
            "at head already). The embedded server is always migrated."
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(min=1, max=64, help="Worker processes (one per core is the usual choice)."),
    ] = 1,
) -> None:
    """Serve the HTTP API (Ctrl-C or SIGTERM stops it, and the embedded server if it
    started it).

    On the embedded server it migrates to head first, and on an empty database creates a
    demo organization and prints its ids and API key once; while it serves, it restarts
    the embedded server if that dies. With DATABASE_URL, migrations are a release step
    (`careteam migrate`, or `--migrate`): it refuses to serve a schema that is not at
    head. With several workers, each is a process of its own on the one database (and
    the one embedded server, started once here).
    """
    settings = _settings_or_fail()
    level = (log_level or settings.log_level).upper()
    configure_logging(level, settings.log_format)
    embedded = settings.database_url is None

    async def prepare(engine: AsyncEngine, url: str) -> tuple[str, DemoSeed | None]:
        if embedded or migrate:
            await migration_runner.upgrade(engine)
        else:
            current, head = (
                await migration_runner.current_revision(engine),
                migration_runner.head_revision(),
            )
            if current != head:
                raise ConfigurationError(
                    f"the database's schema is at {current or '(empty)'}, this release needs "
                    f"{head}: run `careteam migrate` first (a release step), or serve with "
                    "--migrate"
                )
        return url, (await _seed_demo(engine, url) if embedded else None)

    try:
        url, demo = run(prepare)
        if demo is not None:
            console.print(demo.describe(f"http://{host}:{port}"), highlight=False, soft_wrap=True)
        console.print(
            f"Serving the care team API on http://{host}:{port} (docs at /docs)", highlight=False
        )
        # The supervisor runs here, in the parent process, not in the app's lifespan:
        # with several workers there must be one, beside the one embedded server.
        with supervised(settings):
            if workers == 1:
                target: Any = create_app(database_url=url)
            else:
                # Worker processes import the app themselves: they find the database (the
                # embedded server started here) and the log settings in the environment.
                os.environ.update(DATABASE_URL=url, LOG_LEVEL=level)
                target = "src.api.app:create_worker_app"
            uvicorn.run(
                target,
                factory=workers > 1,
                workers=workers if workers > 1 else None,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                http=HeadLimitedHttpToolsProtocol,
                log_level=level.lower(),
            )
    except KeyboardInterrupt:  # uvicorn re-raises the signal it has already shut down on
        pass
    finally:
        # A second Ctrl-C or SIGTERM must not interrupt stopping the embedded server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        release_database(settings)
    except (EmbeddedServerError, OSError) as err:
        fail(str(err))
    if settings.database_url is None and is_running(settings.careteam_data_dir):
        console.print(
            "Stopped. The embedded PostgreSQL keeps running: another careteam process uses "
            "it, or db-url started it (`careteam db-stop` stops it)."
        )
    else:
        console.print("Stopped.")


org_app = typer.Typer(help="Organizations (tenants).", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(org_app, name="org")
app.add_typer(key_app, name="key")


def _print_key(issued: IssuedApiKey, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "organization_id": str(issued.organization_id),
                    "api_key_id": str(issued.id),
                    "api_key": issued.key,
                }
            )
            + "\n"
        )
        return
    console.print(
        f"organization_id: {issued.organization_id}\napi_key_id:      {issued.id}\n"
        f"api_key:         {issued.key}   (shown once; only its hash is stored)",
        highlight=False,
    )


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(help="The organization's name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an organization and its first API key; print them once."""
    name = name.strip()
    if not name or len(name) > 200:
        fail("NAME must be 1 to 200 characters")
    issued = _owner_call(lambda db: OrganizationService.create_organization(db=db, name=name))
    _print_key(issued, as_json)


@key_app.command("create")
def key_create(
    organization_id: Annotated[str, typer.Argument(metavar="ORG_ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue another API key for an organization; print it once."""
    org = _parse_uuid(organization_id, "ORG_ID")
    issued = _owner_call(lambda db: OrganizationService.create_api_key(db=db, organization_id=org))
    _print_key(issued, as_json)


@key_app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(metavar="KEY_ID")]) -> None:
    """Revoke an API key; it stops working at once."""
    key = _parse_uuid(key_id, "KEY_ID")
    revoked = _owner_call(lambda db: OrganizationService.revoke_api_key(db=db, key_id=key))
    org = revoked.organization_id
    if revoked.already_revoked:
        console.print(
            f"API key {key} of organization {org} was already revoked "
            f"({revoked.revoked_at.isoformat(timespec='seconds')}); nothing changed.",
            highlight=False,
        )
    else:
        console.print(f"API key {key} of organization {org} revoked.", highlight=False)


def _settings_or_fail() -> Settings:
    try:
        return get_settings()
    except ConfigurationError as err:
        fail(str(err))


@app.command("db-url")
def db_url() -> None:
    """Print the libpq URL of the database in use: psql "$(uv run careteam db-url)".

    With the embedded server, starts it if needed and leaves it running (stop it with
    `careteam db-stop`); a server that `serve` started still stops with `serve`.
    """
    try:
        url = resolve_database_url(_settings_or_fail(), keep_running=True)
    except ConfigurationError as err:
        fail(str(err))
    sys.stdout.write(url + "\n")


@app.command("db-stop")
def db_stop(
    force: Annotated[
        bool, typer.Option("--force", help="Stop it even while other careteam processes use it.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for a clean stop, then for a hard one.")
    ] = 30,
) -> None:
    """Stop the embedded PostgreSQL server (a no-op with DATABASE_URL).

    Says it stopped only once the server's process is gone (exit 0). Refuses while
    another careteam process (e.g. serve) uses it, naming its PID, unless --force
    (exit 1); exit 2 if it does not stop.
    """
    settings = _settings_or_fail()
    if settings.database_url is not None:
        console.print("DATABASE_URL is set: no embedded server to stop.")
        return
    try:
        stopped = stop_embedded_server(settings.careteam_data_dir, force=force, timeout_s=timeout)
    except ServerInUse as err:
        fail(f"{err}; stop them first, or use --force (their connections then fail)", code=1)
    except EmbeddedServerError as err:
        fail(str(err))
    console.print(
        "Embedded PostgreSQL stopped." if stopped else "Embedded PostgreSQL was not running."
    )


if __name__ == "__main__":
    app()
