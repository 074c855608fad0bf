"""The `careteam` command (run `uv run careteam --help` from apps/backend).

Every command uses DATABASE_URL, or the embedded PostgreSQL when it is unset. Errors
are one line on stderr and a non-zero exit, never a traceback. One module per group of
commands; this one lists them all, in the order `--help` shows them.
"""

from __future__ import annotations

import importlib.metadata
import signal
from typing import Annotated, Any

import typer

from src.cli import access_log, care_team, clients, export, schema, server, tenants
from src.cli.common import usage_error
from src.config import ConfigurationError


class _Commands(typer.core.TyperGroup):
    """Every command, with a configuration error said in one line (exit 2) wherever in
    the command it is found (a package installed without its checkout, say), and a
    refused value said without pydantic's "Value error, " in front of it."""

    def invoke(self, ctx: Any) -> object:  # click's Context
        try:
            return super().invoke(ctx)
        except ConfigurationError as err:
            usage_error(str(err))
        except typer.BadParameter as err:  # typer words an enum's refusal as pydantic does
            if not err.message.startswith("Value error, "):
                raise
            message = err.message.removeprefix("Value error, ")
            raise typer.BadParameter(message, ctx=err.ctx, param=err.param) from None


app = typer.Typer(
    name="careteam",
    cls=_Commands,
    help="Care team backend: the HTTP API, migrations, checks, care teams, panels, tenants, "
    "keys and SMART clients. Exit codes: 0 done, 1 failed, 2 usage error (check: 0 clean, "
    "1 violations found, 2 could not check).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help, as click writes it, for every command (check's argparse help is written
    # in the same style: src/diagnostics.py): no boxes, no type names for flags.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"careteam {importlib.metadata.version('careteam-backend')}")
        raise typer.Exit(0)


@app.callback()
def _every_command(
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    # SIGTERM (what systemd and container runtimes send) stops a command as Ctrl-C
    # does: by KeyboardInterrupt, so that it cleans up (and stops the embedded server it
    # started) instead of dying on the spot.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


app.command()(server.serve)
app.command()(schema.migrate)
app.command()(schema.status)
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)(schema.check)
app.command()(care_team.team)
app.add_typer(care_team.panel_app, name="panel")
app.add_typer(care_team.report_app, name="report")
app.add_typer(tenants.org_app, name="org")
app.add_typer(tenants.key_app, name="key")
app.add_typer(clients.client_app, name="client")
app.add_typer(access_log.access_log_app, name="access-log")
app.command()(export.export)
app.command("db-url")(server.db_url)
app.command("db-stop")(server.db_stop)
