"""What every command shares: the consoles, one-line failures, the database runner.

`careteam` imports only what building its command tree needs (typer, rich's console, the
settings, the enums that options take); each command imports the rest (SQLAlchemy's
engine, alembic, the services, the API app) when it runs, so every command, and --help,
starts without loading what only the others use.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from src.config import ConfigurationError, Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

# Not a terminal (a pipe, a file, a log): wide enough that no id or time in a table is cut.
console = Console(width=None if sys.stdout.isatty() else 240)
errors = Console(stderr=True)

T = TypeVar("T")


# Exit codes of every command: 0 done, 1 failed, 2 usage error (arguments or settings
# the command cannot work with; typer's own usage errors are 2 as well). `careteam
# check` keeps its documented codes: 0 clean, 1 violations found, 2 could not check.
FAILED, USAGE = 1, 2


class CommandFailed(Exception):
    """The command cannot go on; the message says why (exit 1)."""


def fail(message: str, code: int = FAILED) -> NoReturn:
    errors.print(f"[red]❌ ERROR:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    fail(message, USAGE)


def print_json(value: Any) -> None:
    """One JSON document on stdout (ids and instants as strings)."""

    def default(item: object) -> Any:
        if isinstance(item, datetime.datetime | datetime.date):
            return item.isoformat()
        if isinstance(item, uuid.UUID):
            return str(item)
        if is_dataclass(item) and not isinstance(item, type):
            return asdict(item)
        raise TypeError(type(item).__name__)

    sys.stdout.write(json.dumps(value, default=default) + "\n")


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def run(work: Callable[[AsyncEngine, str], Awaitable[T]]) -> T:
    """Run `work(owner engine, its libpq URL)`; turn every expected failure into one line."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from src import diagnostics
    from src.db import create_engine
    from src.embedded import resolve_database_url

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
    except ConfigurationError as err:
        usage_error(str(err))
    except (CommandFailed, diagnostics.CannotRun) as err:
        fail(str(err))
    except CommandError as err:
        fail(f"migration failed: {err}")
    except (*diagnostics.DATABASE_ERRORS, SQLAlchemyError) as err:
        fail(f"database error: {diagnostics.describe_connection_error(err)}")


async def require_head(engine: AsyncEngine) -> None:
    """Commands that read or write the data need this release's schema: say so plainly
    (a database not migrated would refuse their statements with a bare SQLSTATE)."""
    from src import migration_runner

    current, head = (
        await migration_runner.current_revision(engine),
        migration_runner.head_revision(),
    )
    if current != head:
        raise CommandFailed(
            f"the database's schema is at {current or '(empty)'}, this release needs {head}: "
            "run `careteam migrate` first"
        )


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        usage_error(f"{what} must be a UUID, got {value!r}")


def owner_call(action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run a service call on an owner session (organizations and keys span tenants)."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from src.services.errors import CareTeamError

    async def work(engine: AsyncEngine, _url: str) -> T:
        await require_head(engine)
        async with AsyncSession(engine, expire_on_commit=False) as session:
            return await action(session)

    try:
        return run(work)
    except CareTeamError as err:
        fail(err.message)


def settings_or_fail() -> Settings:
    try:
        return get_settings()
    except ConfigurationError as err:
        usage_error(str(err))
