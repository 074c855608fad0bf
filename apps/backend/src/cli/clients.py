"""SMART Backend Services clients: client register, list and revoke (owner sessions)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from src.cli.common import JsonOption, console, owner_call, parse_uuid, print_json, usage_error

client_app = typer.Typer(
    help="SMART Backend Services clients (their public keys, never a secret).",
    no_args_is_help=True,
)

OrgId = Annotated[str, typer.Argument(metavar="ORG_ID", help="The organization's id (a UUID).")]


def _when(value: datetime.datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds")


def _read_jwks(path: Path) -> dict[str, Any]:
    from src.services.smart_keys import MAX_JWKS_BYTES, InvalidJwks, parse_jwks

    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_JWKS_BYTES + 1)
    except OSError as err:
        usage_error(f"--jwks-file: cannot read {path}: {err.strerror or err}")
    try:
        return parse_jwks(text)
    except InvalidJwks as err:
        usage_error(f"--jwks-file: {err}")


@client_app.command("register")
def client_register(
    organization_id: OrgId,
    *,
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="What the client is (e.g. the service).")
    ],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help=(
                "What the client may be granted, in SMART v2 syntax (system/CareTeam.rs, "
                "system/*.rs) or v1 (system/*.read), or careteam/admin; repeat for more."
            ),
        ),
    ],
    jwks_file: Annotated[
        Path | None,
        typer.Option(
            "--jwks-file",
            metavar="FILE",
            help="The client's public keys: a JWK Set (RSA 2048+ or EC P-384, each with a kid).",
        ),
    ] = None,
    jwks_url: Annotated[
        str | None,
        typer.Option(
            "--jwks-url",
            metavar="URL",
            help="Where the token endpoint fetches the client's JWK Set: https (http only "
            "for 127.0.0.1 or localhost).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a SMART Backend Services client of an organization; print its client_id."""
    from src.scopes import InvalidScope, parse_scopes
    from src.services.smart_keys import InvalidJwks, check_jwks_url
    from src.services.smart_service import NAME_MAX, SmartService

    org = parse_uuid(organization_id, "ORG_ID")
    label = name.strip()
    if not 1 <= len(label) <= NAME_MAX:
        usage_error(f"--name must be 1 to {NAME_MAX} characters")
    if (jwks_file is None) == (jwks_url is None):
        usage_error("give exactly one of --jwks-file and --jwks-url")
    try:
        scopes = parse_scopes(scope)
    except InvalidScope as err:
        usage_error(f"--scope: {err}")
    jwks = None if jwks_file is None else _read_jwks(jwks_file)
    if jwks_url is not None:
        try:
            check_jwks_url(jwks_url)
        except InvalidJwks as err:
            usage_error(f"--jwks-url: {err}")
    client = owner_call(
        lambda db: SmartService.register_client(
            db=db, organization_id=org, name=label, scopes=scopes, jwks=jwks, jwks_url=jwks_url
        )
    )
    if as_json:
        print_json(
            {
                "client_id": client.id,
                "organization_id": client.organization_id,
                "name": client.name,
                "jwks_url": client.jwks_url,
                "scopes": list(client.scopes),
                "created_at": client.created_at,
            }
        )
        return
    console.print(
        f"client_id:       {client.id}\norganization_id: {client.organization_id}\n"
        f"keys:            {client.jwks_url or 'registered (JWKS file)'}\n"
        f"scopes:          {' '.join(client.scopes)}",
        highlight=False,
    )


@client_app.command("list")
def client_list(organization_id: OrgId, as_json: JsonOption = False) -> None:
    """An organization's clients: id, name, keys, scopes, registered, revoked."""
    from src.services.smart_service import SmartService

    org = parse_uuid(organization_id, "ORG_ID")
    clients = owner_call(lambda db: SmartService.list_clients(db=db, organization_id=org))
    if as_json:
        print_json({"organization_id": org, "items": clients})
        return
    table = Table("id", "name", "keys", "scopes", "registered", "revoked", show_edge=False)
    for c in clients:
        keys = c.jwks_url or f"{c.keys} key(s)"
        table.add_row(
            str(c.id),
            c.name,
            keys,
            " ".join(c.scopes),
            _when(c.created_at),
            _when(c.revoked_at),
        )
    console.print(table)


@client_app.command("revoke")
def client_revoke(
    client_id: Annotated[
        str, typer.Argument(metavar="CLIENT_ID", help="The client's id (a UUID).")
    ],
    as_json: JsonOption = False,
) -> None:
    """Revoke a client: its tokens stop working at once, and it gets no more."""
    from src.services.smart_service import SmartService

    client = parse_uuid(client_id, "CLIENT_ID")
    revoked = owner_call(lambda db: SmartService.revoke_client(db=db, client_id=client))
    org = revoked.organization_id
    if as_json:
        print_json(
            {
                "client_id": client,
                "organization_id": org,
                "revoked_at": revoked.revoked_at,
                "already_revoked": revoked.already_revoked,
                "tokens_revoked": revoked.tokens_revoked,
            }
        )
    elif revoked.already_revoked:
        console.print(
            f"SMART client {client} of organization {org} was already revoked "
            f"({revoked.revoked_at.isoformat(timespec='seconds')}); nothing changed.",
            highlight=False,
        )
    else:
        console.print(
            f"SMART client {client} of organization {org} revoked "
            f"({revoked.tokens_revoked} live token(s) revoked with it).",
            highlight=False,
        )
