"""The `careteam` command (run `uv run careteam --help` from apps/backend).

Every command uses DATABASE_URL, or the embedded PostgreSQL when it is unset. Errors
are one line on stderr and a non-zero exit, never a traceback. One module per group of
commands; this one lists them all, in the order `--help` shows them.
"""

from __future__ import annotations

import signal

import typer

from src.cli import care_team, schema, server, tenants

app = typer.Typer(
    name="careteam",
    help="Care team backend: the HTTP API, migrations, checks, care teams, panels, tenants "
    "and keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _every_command() -> None:
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
app.command("db-url")(server.db_url)
app.command("db-stop")(server.db_stop)
