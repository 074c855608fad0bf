"""The README says what the code does: every setting, migration and command is in it."""

from __future__ import annotations

import re

import typer
from alembic.script import ScriptDirectory

from src.config import BACKEND_DIR, Settings
from src.migration_runner import alembic_config

README = (BACKEND_DIR.parent.parent / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match is not None, f"README has no section {title!r}"
    return match.group(1)


def test_every_setting_is_in_the_settings_table():
    table = section("Settings")
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M))
    assert listed == {name.upper() for name in Settings.model_fields}


def test_every_migration_is_named():
    scripts = ScriptDirectory.from_config(alembic_config())
    for revision in scripts.walk_revisions():
        if revision.revision != "20260113_initial_schema":
            assert f"`{revision.revision}`" in README, revision.revision


def command_name(command: typer.models.CommandInfo) -> str:
    assert command.callback is not None
    return command.name or command.callback.__name__.replace("_", "-")


def test_the_runbook_names_the_current_head_where_it_says_head():
    """`(head)` in the runbook's commands names the head revision (it named an older one
    after a later revision landed)."""
    runbook = (BACKEND_DIR.parent.parent / "docs" / "PRIMARY_PROVIDER_CONSTRAINT.md").read_text()
    named = re.findall(r"# (\S+) \(head\)", runbook)
    assert named, "the runbook shows the head revision somewhere"
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert set(named) == {head}


def test_every_command_is_in_the_command_table():
    from src.cli import app  # noqa: PLC0415  (the Typer app, only for its command names)

    table = section("The `careteam` command")
    names = {command_name(c) for c in app.registered_commands} | {
        f"{group.name} {command_name(c)}"
        for group in app.registered_groups
        for c in group.typer_instance.registered_commands  # type: ignore[union-attr]
    }
    assert len(names) >= 9
    for name in names:
        assert f"careteam {name}" in table, name


def test_the_event_table_names_every_event_type_once():
    from src.models import EventType  # noqa: PLC0415

    table = README.split("### Care team events", 1)[1].split("###", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert sorted(listed) == sorted(e.value for e in EventType)


# Answers no operation of the OpenAPI document states, each answered by a layer around
# the operations: the HTTP server (bad_request), CORS preflights, routing (not_found for
# an unknown path, method_not_allowed), and the last resort of a bug (500s).
ANSWERED_AROUND_OPERATIONS = {
    "400": {"bad_request", "cors_refused"},
    "404": {"not_found"},
    "405": {"method_not_allowed"},
    "500": {"internal_error", "database_error"},
}


def test_the_error_table_lists_every_code_the_api_answers_and_no_other():
    from src.api.app import create_app  # noqa: PLC0415

    answered: dict[str, set[str]] = {
        status: set(codes) for status, codes in ANSWERED_AROUND_OPERATIONS.items()
    }
    for operations in create_app().openapi()["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get("application/problem+json")
                if content:
                    codes = content["schema"]["allOf"][1]["properties"]["error"]["enum"]
                    answered.setdefault(status, set()).update(codes)
    table = README.split("| status | when | codes |", 1)[1].split("\n\n", 1)[0]
    listed = {
        status: set(re.findall(r"`([a-z_]+)`", codes))
        for status, codes in re.findall(r"^\| (\d{3}) \|.*\| (`[^|]*) \|$", table, re.M)
    }
    assert listed == answered
