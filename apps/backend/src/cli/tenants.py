"""Organizations (tenants) and their API keys: org create, key create, key revoke."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from src.cli.common import console, fail, owner_call, parse_uuid
from src.services.organization_service import IssuedApiKey, OrganizationService

org_app = typer.Typer(help="Organizations (tenants).", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)


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
    issued = owner_call(lambda db: OrganizationService.create_organization(db=db, name=name))
    _print_key(issued, as_json)


@key_app.command("create")
def key_create(
    organization_id: Annotated[str, typer.Argument(metavar="ORG_ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue another API key for an organization; print it once."""
    org = parse_uuid(organization_id, "ORG_ID")
    issued = owner_call(lambda db: OrganizationService.create_api_key(db=db, organization_id=org))
    _print_key(issued, as_json)


@key_app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(metavar="KEY_ID")]) -> None:
    """Revoke an API key; it stops working at once."""
    key = parse_uuid(key_id, "KEY_ID")
    revoked = owner_call(lambda db: OrganizationService.revoke_api_key(db=db, key_id=key))
    org = revoked.organization_id
    if revoked.already_revoked:
        console.print(
            f"API key {key} of organization {org} was already revoked "
            f"({revoked.revoked_at.isoformat(timespec='seconds')}); nothing changed.",
            highlight=False,
        )
    else:
        console.print(f"API key {key} of organization {org} revoked.", highlight=False)
