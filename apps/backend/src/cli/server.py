"""Serving the API and the embedded PostgreSQL: serve, db-url, db-stop."""

from __future__ import annotations

import datetime
import errno
import logging
import os
import signal
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy import text

from src.cli.common import (
    CommandFailed,
    JsonOption,
    console,
    fail,
    print_json,
    run,
    settings_or_fail,
    usage_error,
)
from src.config import ConfigurationError, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from src.services.organization_service import IssuedApiKey


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


DEMO_MRN_SYSTEM = "urn:example:clinic:mrn"


async def _seed_demo(engine: AsyncEngine, url: str) -> DemoSeed | None:
    """On an empty database: a demo organization, three providers, two patients (medical
    record numbers MRN-0001 and MRN-0002), and a care team for the first patient.
    Returns what it made, or None."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from src.db import open_database
    from src.services.care_team_service import CareTeamService
    from src.services.directory_service import DirectoryService, Identifier
    from src.services.organization_service import OrganizationService

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
                    # What the README's FHIR search by identifier finds.
                    identifiers=[Identifier(DEMO_MRN_SYSTEM, f"MRN-000{i}")],
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


def serve(
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, metavar="PORT", help="Port to listen on.")
    ] = 8000,
    log_level: Annotated[
        str | None,
        typer.Option(metavar="LEVEL", help="debug, info, warning or error (default: LOG_LEVEL)."),
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
        typer.Option(
            min=1, max=64, metavar="N", help="Worker processes (one per core is the usual choice)."
        ),
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
    import uvicorn

    from src import migration_runner
    from src.api.app import create_app
    from src.api.http_protocol import HeadLimitedHttpToolsProtocol
    from src.embedded import EmbeddedServerError, is_running, release_database, supervised
    from src.log_config import configure_logging

    settings = settings_or_fail()
    level = (log_level or settings.log_level).upper()
    configure_logging(level, settings.log_format)
    embedded = settings.database_url is None
    refused = _cannot_listen(host, port)
    if refused:
        fail(refused)  # before anything starts or says it serves
    if not settings.public_base_url:
        logging.getLogger(__name__).warning(PUBLIC_BASE_URL_UNSET)

    async def prepare(engine: AsyncEngine, url: str) -> tuple[str, DemoSeed | None]:
        if embedded or migrate:
            await migration_runner.upgrade(engine)
        else:
            current, head = (
                await migration_runner.current_revision(engine),
                migration_runner.head_revision(),
            )
            if current != head:
                raise CommandFailed(
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
            f"Serving the care team API on http://{host}:{port} (docs at /docs; the console, "
            f"for care coordinators: http://{host}:{port}/console, signed in with an API key)",
            highlight=False,
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


# The token endpoint's `aud` is its own URL: without PUBLIC_BASE_URL that is made of each
# request's Host, which the caller chooses (README, Settings and SMART Backend Services).
PUBLIC_BASE_URL_UNSET = (
    "PUBLIC_BASE_URL is not set: the SMART token endpoint checks a client assertion's aud "
    "against a URL made of each request's Host header, so an assertion made for another "
    "server could be replayed here by sending that server's Host; set PUBLIC_BASE_URL "
    "(https://api.example.org) in production, and ALLOWED_HOSTS"
)


def _cannot_listen(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (in use, not an address of this machine),
    or None: checked by binding it, as uvicorn will, then letting it go."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"cannot listen on {host}:{port}: {err.strerror}"
    family, kind, proto, _, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is in use by another process: stop it, or serve "
                    "on another port (--port)"
                )
            return f"cannot listen on {host}:{port}: {err.strerror}"
    return None


def db_url(as_json: JsonOption = False) -> None:
    """Print the libpq URL of the database in use: psql "$(uv run careteam db-url)".

    With the embedded server, starts it if needed and leaves it running (stop it with
    `careteam db-stop`); a server that `serve` started still stops with `serve`.
    """
    from src.embedded import resolve_database_url

    try:
        url = resolve_database_url(settings_or_fail(), keep_running=True)
    except ConfigurationError as err:
        usage_error(str(err))
    if as_json:
        print_json({"url": url})
    else:
        sys.stdout.write(url + "\n")


def db_stop(
    force: Annotated[
        bool, typer.Option("--force", help="Stop it even while other careteam processes use it.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=1, metavar="S", help="Seconds to wait for a clean stop, then for a hard one."
        ),
    ] = 30,
) -> None:
    """Stop the embedded PostgreSQL server (a no-op with DATABASE_URL).

    Says it stopped only once the server's process is gone (exit 0). Refuses while
    another careteam process (e.g. serve) uses it, naming its PID, unless --force
    (exit 1); exit 1 as well if it does not stop.
    """
    from src.embedded import EmbeddedServerError, ServerInUse, stop_embedded_server

    settings = settings_or_fail()
    if settings.database_url is not None:
        console.print("DATABASE_URL is set: no embedded server to stop.")
        return
    try:
        stopped = stop_embedded_server(settings.careteam_data_dir, force=force, timeout_s=timeout)
    except ServerInUse as err:
        fail(f"{err}; stop them first, or use --force (their connections then fail)")
    except EmbeddedServerError as err:
        fail(str(err))
    console.print(
        "Embedded PostgreSQL stopped." if stopped else "Embedded PostgreSQL was not running."
    )
