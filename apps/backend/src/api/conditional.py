"""Conditional requests: ETags on reads, If-None-Match (304) and If-Match (412).

An ETag names a version of what a read returns:
- a patient: `"p<version>.<team>"` (its record's version, one more with each change,
  and its care team's: the number of its last care team event, since a read shows its
  `primary_provider_id`, which care team writes change without touching the record);
- a provider: `"v<version>.<panel size>"` (its record's version and its panel's size,
  which assignments change without touching the record);
- a care team: `"t<n>.<m>"` (n: the number of the patient's last care team event; m:
  the sum of its members' record versions, so that renaming or deactivating a member
  changes it too).

A write with If-Match goes ahead only if what it changes is still at that version,
checked under the same lock as the change itself; otherwise 412 and nothing changed. An
ETag that is malformed, or of another kind, matches nothing (412 when no tag of the list
matches). `If-Match: *` only asks that the resource exists.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Header, Request, Response
from pydantic.json_schema import SkipJsonSchema

from src.services.errors import InvalidArgument

NOT_MATCHING = -1  # a version no resource has: a write with it is refused (412)
MAX_VERSION = 2**63 - 1  # versions are bigints: a larger number names none
_TAG = re.compile(r'^(?:W/)?"([^"]*)"$')

# Optional headers: absent or a string (never null, so not in their schema).
IfMatch = Annotated[
    str | SkipJsonSchema[None],
    Header(
        description='Only if the resource is still at this ETag (412 otherwise); "*": if it exists',
    ),
]
# If-None-Match is read by conditional_read, from the request itself: a declared header
# parameter costs every read FastAPI's validation of it (about a twentieth of a care-team
# read's CPU). A read's route states it in its OpenAPI operation instead
# (`openapi_extra=IF_NONE_MATCH`).
IF_NONE_MATCH: dict[str, Any] = {
    "parameters": [
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "description": "304 Not Modified if the resource is at one of these ETags",
            "schema": {"type": "string"},
        }
    ]
}


def patient_etag(version: int, team_version: int) -> str:
    return f'"p{version}.{team_version}"'


def provider_etag(version: int, panel_size: int) -> str:
    return f'"v{version}.{panel_size}"'


def team_etag(version: tuple[int, int]) -> str:
    return f'"t{version[0]}.{version[1]}"'


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _opaque(tag: str) -> str | None:
    match = _TAG.fullmatch(tag)
    return None if match is None else match.group(1)


def _version(tag: str, kind: str, parts: int) -> tuple[int, ...] | None:
    """The version numbers of one of this resource's strong ETags; None for any other."""
    value = None if tag.startswith("W/") else _opaque(tag)  # strong comparison
    if value is None or not value.startswith(kind):
        return None
    numbers = value[len(kind) :].split(".")
    if len(numbers) != parts or not all(n.isdigit() and n.isascii() for n in numbers):
        return None
    values = tuple(int(n) for n in numbers)
    return None if any(v > MAX_VERSION for v in values) else values


def expected(if_match: str | None, kind: str, parts: int = 1) -> tuple[int, ...] | None:
    """The version numbers If-Match names, for a resource whose ETags are `kind` then
    `parts` numbers joined by "." (`p1`, `v3.12`, `t40`): None without If-Match or with
    `*`. If-Match is a list, met when any of its tags matches (RFC 9110 13.1.1): tags
    that are malformed, weak or of another kind match nothing and are passed over; none
    left gives NOT_MATCHING numbers (the write is refused, 412). Several versions of this
    resource is InvalidArgument (422): the write is checked against one, under its lock."""
    if if_match is None or if_match.strip() == "*":
        return None
    versions = {_version(tag, kind, parts) for tag in _tags(if_match)} - {None}
    if not versions:
        return (NOT_MATCHING,) * parts
    if len(versions) > 1:
        refused = InvalidArgument(
            "If-Match names several versions of this resource: name the one you read",
            field="If-Match",
        )
        refused.location = "header"
        raise refused
    (version,) = versions
    return version


def conditional_read(request: Request, etag: str) -> Response | None:
    """304 if If-None-Match names `etag` (or is `*`); None: send the full response."""
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    tags = _tags(header)
    wanted = _opaque(etag)
    if "*" in tags or any(_opaque(tag) == wanted for tag in tags):
        return Response(status_code=304, headers={"ETag": etag})
    return None
