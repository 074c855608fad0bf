"""The `careteam` command (run `uv run careteam --help` from apps/backend).

Every command uses DATABASE_URL, or the embedded PostgreSQL when it is unset. Errors
are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from src import diagnostics, schema
from src.config import ConfigurationError, get_settings
from src.db import create_engine, resolve_database_url
from src.embedded import stop_embedded_server

app = typer.Typer(
    name="careteam",
    help="Care team backend: migrations, checks and database access.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")

COUNTED_TABLES = (
    "organizations",
    "patients",
    "providers",
    "care_team_assignments",
    "care_team_events",
)


def fail(message: str, code: int = 2) -> NoReturn:
    errors.print(f"[red]❌ ERROR:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def run(work: Callable[[AsyncEngine], Awaitable[T]], *, keep_running: bool = False) -> T:
    """Run `work` on an owner engine; turn every expected failure into one line."""

    async def main() -> T:
        settings = get_settings()
        engine = create_engine(resolve_database_url(settings, keep_running=keep_running), settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (ConfigurationError, diagnostics.CannotRun) as err:
        fail(str(err))
    except CommandError as err:
        fail(f"migration failed: {err}")
    except diagnostics.DATABASE_ERRORS as err:
        fail(f"database error: {diagnostics.describe_connection_error(err)}")


def _revision_order() -> list[str]:
    """Revisions from base to head."""
    scripts = ScriptDirectory.from_config(schema.alembic_config())
    return [rev.revision for rev in reversed(list(scripts.walk_revisions()))]


async def _status(engine: AsyncEngine) -> dict[str, Any]:
    revision = await schema.current_revision(engine)
    counts: dict[str, int] = {}
    report = None
    if revision is not None:
        async with engine.connect() as conn:
            for table in COUNTED_TABLES:
                if (await conn.execute(text("SELECT to_regclass(:t)"), {"t": table})).scalar():
                    counts[table] = (
                        await conn.execute(text(f"SELECT count(*) FROM {table}"))
                    ).scalar_one()
        report = await diagnostics.run_check(engine)
    return {"revision": revision, "counts": counts, "report": report}


def print_status(status: dict[str, Any]) -> None:
    head = schema.head_revision()
    revision = status["revision"] or "(empty database)"
    mark = (
        "[green]at head[/green]"
        if status["revision"] == head
        else f"[yellow]head is {head}[/yellow]"
    )
    console.print(f"Schema revision: {revision} {mark}", highlight=False)
    if status["counts"]:
        table = Table("table", "rows", title=None, show_edge=False)
        for name, rows in status["counts"].items():
            table.add_row(name, f"{rows:,}")
        console.print(table)
    report: diagnostics.Report | None = status["report"]
    if report is not None:
        diagnostics.print_report(report, echo=lambda line: console.print(line, highlight=False))


@app.command()
def migrate(
    to: Annotated[str, typer.Option("--to", help="Target revision (default: head).")] = "head",
) -> None:
    """Migrate the database to head (or --to REV, up or down), then report its state."""
    order = _revision_order()
    if to not in ("head", "base") and to not in order:
        fail(f"unknown revision {to!r}; known: {', '.join(order)}")

    async def work(engine: AsyncEngine) -> dict[str, Any]:
        current = await schema.current_revision(engine)
        position = {rev: i for i, rev in enumerate(order)}
        target = order[-1] if to == "head" else to
        if to == "base" or (current is not None and position[target] < position[current]):
            console.print(f"Downgrading {current} -> {to} ...")
            await schema.downgrade(engine, to)
        else:
            console.print(f"Upgrading {current or '(empty)'} -> {target} ...")
            await schema.upgrade(engine, target)
        return await _status(engine)

    print_status(run(work))


@app.command()
def status() -> None:
    """Report the schema revision, row counts and the primary-provider check."""
    print_status(run(_status))


@app.command()
def check() -> None:
    """Find patients with more than one primary provider (exit 0 clean, 1 found, 2 error)."""
    report = run(diagnostics.run_check)
    diagnostics.print_report(report, echo=lambda line: console.print(line, highlight=False))
    raise typer.Exit(report.exit_code)


@app.command("db-url")
def db_url() -> None:
    """Print the libpq URL of the database in use: psql "$(uv run careteam db-url)".

    With the embedded server, starts it if needed and leaves it running
    (stop it with `careteam db-stop`).
    """
    try:
        settings = get_settings()
        url = resolve_database_url(settings, keep_running=True)
    except ConfigurationError as err:
        fail(str(err))
    sys.stdout.write(url + "\n")


@app.command("db-stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (a no-op with DATABASE_URL)."""
    try:
        settings = get_settings()
    except ConfigurationError as err:
        fail(str(err))
    if settings.database_url is not None:
        console.print("DATABASE_URL is set: no embedded server to stop.")
        return
    stopped = stop_embedded_server(settings.careteam_data_dir)
    console.print(
        "Embedded PostgreSQL stopped." if stopped else "Embedded PostgreSQL was not running."
    )


if __name__ == "__main__":
    app()
