"""Organizations (tenants) and their API keys: org create and list, key create, list and
revoke."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from src.cli.common import (
    JsonOption,
    console,
    owner_call,
    parse_uuid,
    print_json,
    usage_error,
)

if TYPE_CHECKING:
    from src.services.organization_service import IssuedApiKey

org_app = typer.Typer(help="Organizations (tenants).", no_args_is_help=True)
key_app = typer.Typer(help="API keys (only their hashes are stored).", no_args_is_help=True)

OrgId = Annotated[str, typer.Argument(metavar="ORG_ID", help="The organization's id (a UUID).")]
NAME_MAX = 200


def _name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > NAME_MAX:
        usage_error(f"{what} must be 1 to {NAME_MAX} characters")
    return value


def _when(value: datetime.datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


def _print_key(issued: IssuedApiKey, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "organization_id": issued.organization_id,
                "api_key_id": issued.id,
                "api_key": issued.key,
                "scopes": list(issued.scopes),
            }
        )
        return
    console.print(
        f"organization_id: {issued.organization_id}\napi_key_id:      {issued.id}\n"
        f"api_key:         {issued.key}   (shown once; only its hash is stored)\n"
        f"scopes:          {' '.join(issued.scopes)}",
        highlight=False,
    )


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The organization's name.")],
    as_json: JsonOption = False,
) -> None:
    """Create an organization and its first API key; print them once."""
    from src.services.organization_service import OrganizationService

    name = _name(name, "NAME")
    issued = owner_call(lambda db: OrganizationService.create_organization(db=db, name=name))
    _print_key(issued, as_json)


@org_app.command("list")
def org_list(as_json: JsonOption = False) -> None:
    """Every organization: id, name, created, live (unrevoked) keys."""
    from src.services.organization_service import OrganizationService

    organizations = owner_call(lambda db: OrganizationService.list_organizations(db=db))
    if as_json:
        print_json({"items": organizations})
        return
    table = Table("id", "name", "created", "live keys", show_edge=False)
    for o in organizations:
        table.add_row(str(o.id), o.name, _when(o.created_at), str(o.live_keys))
    console.print(table)


@key_app.command("create")
def key_create(
    organization_id: OrgId,
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="NAME", help="What the key is for (e.g. the integration)."),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help=(
                "What the key may do, in SMART v2 syntax (system/CareTeam.rs, system/*.cruds) "
                "or v1 (system/*.read, system/*.write), or careteam/admin; repeat for more. "
                "Default: system/*.cruds (every read and write, not careteam/admin)."
            ),
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Issue another API key for an organization, with its scopes; print it once."""
    from src.scopes import DEFAULT_KEY_SCOPES, InvalidScope, parse_scopes
    from src.services.organization_service import OrganizationService

    org = parse_uuid(organization_id, "ORG_ID")
    label = None if name is None else _name(name, "--name")
    try:
        scopes = parse_scopes(scope) if scope else DEFAULT_KEY_SCOPES
    except InvalidScope as err:
        usage_error(f"--scope: {err}")
    issued = owner_call(
        lambda db: OrganizationService.create_api_key(
            db=db, organization_id=org, name=label, scopes=scopes
        )
    )
    _print_key(issued, as_json)


@key_app.command("list")
def key_list(organization_id: OrgId, as_json: JsonOption = False) -> None:
    """An organization's keys: id, name, scopes, created, revoked (never a secret)."""
    from src.services.organization_service import OrganizationService

    org = parse_uuid(organization_id, "ORG_ID")
    keys = owner_call(lambda db: OrganizationService.list_api_keys(db=db, organization_id=org))
    if as_json:
        print_json({"organization_id": org, "items": keys})
        return
    table = Table("id", "name", "scopes", "created", "revoked", show_edge=False)
    for k in keys:
        table.add_row(
            str(k.id), k.name or "", " ".join(k.scopes), _when(k.created_at), _when(k.revoked_at)
        )
    console.print(table)


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (a UUID).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke an API key; it stops working at once."""
    from src.services.organization_service import OrganizationService

    key = parse_uuid(key_id, "KEY_ID")
    revoked = owner_call(lambda db: OrganizationService.revoke_api_key(db=db, key_id=key))
    org = revoked.organization_id
    if as_json:
        print_json(
            {
                "api_key_id": key,
                "organization_id": org,
                "revoked_at": revoked.revoked_at,
                "already_revoked": revoked.already_revoked,
            }
        )
    elif revoked.already_revoked:
        console.print(
            f"API key {key} of organization {org} was already revoked "
            f"({revoked.revoked_at.isoformat(timespec='seconds')}); nothing changed.",
            highlight=False,
        )
    else:
        console.print(f"API key {key} of organization {org} revoked.", highlight=False)
