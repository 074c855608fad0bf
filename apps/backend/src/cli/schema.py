"""Schema and data checks: migrate, status, check."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from sqlalchemy import text

from src.cli.common import JsonOption, console, errors, print_json, run, usage_error

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from src import database_code

COUNTED_TABLES = (
    "organizations",
    "patients",
    "providers",
    "care_team_assignments",
    "care_team_events",
)


def _revision_order() -> list[str]:
    """Revisions from base to head."""
    from alembic.script import ScriptDirectory

    from src import migration_runner

    scripts = ScriptDirectory.from_config(migration_runner.alembic_config())
    return [rev.revision for rev in reversed(list(scripts.walk_revisions()))]


async def _counts(engine: AsyncEngine) -> dict[str, int]:
    counts = {}
    async with engine.connect() as conn:
        for name in COUNTED_TABLES:
            if (await conn.execute(text("SELECT to_regclass(:t)"), {"t": name})).scalar():
                counts[name] = (
                    await conn.execute(text(f"SELECT count(*) FROM {name}"))
                ).scalar_one()
    return counts


async def _drift(engine: AsyncEngine) -> database_code.Drift:
    from src import database_code

    async with engine.connect() as conn:
        return await database_code.find_drift(conn)


def _drift_json(drift: database_code.Drift | None) -> dict[str, object]:
    if drift is None:
        return {"checked": False, "matches": None, "differ": [], "missing": []}
    return {
        "checked": True,
        "matches": drift.matches,
        "differ": drift.differ,
        "missing": drift.missing,
    }


def _print_drift(drift: database_code.Drift | None) -> None:
    """One line: whether every function runs its newest file in sql/ (at head only)."""
    if drift is None:
        console.print("Database code: not checked (the database is not at head)")
    elif drift.matches:
        console.print(
            f"Database code: [green]each of the {drift.compared} functions runs its newest "
            "file in sql/[/green]",
            highlight=False,
        )
    else:
        from src import database_code

        latest = database_code.latest_versions()
        found = [f"{name} differs from sql/{latest[name]}" for name in drift.differ]
        found += [f"{name} is missing" for name in drift.missing]
        console.print(
            f"Database code: [red]drift: {'; '.join(found)}[/red] (at head, yet not what its "
            f"revisions install; what it runs, in psql: \\sf {(drift.differ or drift.missing)[0]})",
            highlight=False,
            soft_wrap=True,
        )


async def _report_status(engine: AsyncEngine, url: str, *, as_json: bool = False) -> None:
    """Schema revision, whether the functions are those of sql/ (at head), row counts,
    then the primary-provider check (20 of each kind); as JSON, the revision, the
    functions' comparison and the counts (`careteam check --json` has the check's).
    A report: it exits 0 whatever it finds."""
    from src import diagnostics, migration_runner

    revision = await migration_runner.current_revision(engine)
    head = migration_runner.head_revision()
    counts = {} if revision is None else await _counts(engine)
    drift = await _drift(engine) if revision == head else None
    if as_json:
        print_json(
            {
                "revision": revision,
                "head": head,
                "at_head": revision == head,
                "database_code": _drift_json(drift),
                "rows": counts,
            }
        )
        return
    mark = (
        "[green]at head[/green]"
        if revision == head
        else f"[yellow](not at head: head is {head})[/yellow]"
    )
    console.print(f"Schema revision: {revision or '(empty database)'} {mark}", highlight=False)
    _print_drift(drift)
    if revision is None:
        return
    table = Table("table", "rows", show_edge=False)
    for name, rows in counts.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    sys.stdout.flush()
    await diagnostics.run_check(url, diagnostics.Options(limit=20), sys.stdout)


def migrate(
    to: Annotated[str, typer.Option("--to", metavar="REV", help="Target revision.")] = "head",
    as_json: JsonOption = False,
) -> None:
    """Migrate the database to head (or --to REV, up or down), then report its state
    (with --json: progress on stderr, the state as JSON)."""
    from src import migration_runner

    order = _revision_order()
    if to not in ("head", "base") and to not in order:
        usage_error(f"unknown revision {to!r}; known: {', '.join(order)}")
    say = errors if as_json else console

    async def work(engine: AsyncEngine, url: str) -> None:
        current = await migration_runner.current_revision(engine)
        position = {rev: i for i, rev in enumerate(order)}
        target = order[-1] if to == "head" else to
        if current == target or (to == "base" and current is None):
            say.print(f"Already at {to} ({current or 'empty'}): nothing to do.")
        elif to == "base" or (current is not None and position[target] < position[current]):
            say.print(f"Downgrading {current} -> {to} ...")
            await migration_runner.downgrade(engine, to)
        else:
            say.print(f"Upgrading {current or '(empty)'} -> {target} ...")
            await migration_runner.upgrade(engine, target)
        await _report_status(engine, url, as_json=as_json)

    run(work)


def status(as_json: JsonOption = False) -> None:
    """Report the schema revision, whether the database runs the functions in sql/
    (at head), row counts and the primary-provider check (exit 0 whatever it finds)."""
    run(lambda engine, url: _report_status(engine, url, as_json=as_json))


def check(ctx: typer.Context) -> None:
    """Check the care teams: the rule, the periods, inactive members, identifiers (exit 0
    clean, 1 violations found, 2 error).

    The same program, with the same options, as scripts/check_primary_provider_violations.py:
    `careteam check --help` lists them (--json, --organization, --limit, --fix, --execute).
    """
    from src import diagnostics

    raise typer.Exit(diagnostics.main(ctx.args, prog="careteam check"))
