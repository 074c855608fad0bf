"""Scopes: what a credential may do, in SMART on FHIR's syntax (App Launch 2.x).

A scope is `system/<type>.<permissions>`: `<type>` a resource type this API serves
(`CareTeam`, `Patient`, `Practitioner`, `Organization`, `Group`) or `*` for all of them, and
`<permissions>` one or more of `c` (create), `r` (read, vread, a record's history), `u`
(update), `d` (delete), `s` (search, a type's history), in that order
(`system/CareTeam.rs`, `system/*.cruds`). The SMART v1 forms are read as App Launch 2.x
says: `.read` is `.rs`, `.write` is `.cud`, `.*` is `.cruds`. `careteam/admin` is the
administrative scope (key and client management, the access log); no key has it unless
it is asked for.

Scopes are parsed once, here (the CLI and the service check what they are given with
`parse_scopes`), and stored in their v2 form. The scope a route needs is in
src/api/route_scopes.py; `Grants.allows` decides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

ADMIN = "careteam/admin"
RESOURCE_TYPES = ("CareTeam", "Patient", "Practitioner", "Organization", "Group")
PERMISSIONS = "cruds"
ALL_TYPES = "*"

FULL_ACCESS = "system/*.cruds"
# A new key without --scope: every read and write, and not the administrative scope.
DEFAULT_KEY_SCOPES = (FULL_ACCESS,)
# Keys made before scopes existed (revision 20261207_key_scopes): what they could do.
EXISTING_KEY_SCOPES = (FULL_ACCESS, ADMIN)

_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"(?P<context>[A-Za-z]+)/(?P<type>[A-Za-z]+|\*)\.(?P<permissions>[^?]+)")
SHOWN = 80  # at most this much of a refused scope is repeated back


class InvalidScope(ValueError):
    """A scope this API does not grant; the message says why, in one line."""


def parse_scope(text: str) -> str:
    """The scope `text` in its v2 form (`system/*.read` is `system/*.rs`). Raises
    InvalidScope, saying what is wrong."""
    if text == ADMIN:
        return ADMIN
    shown = text[:SHOWN]
    if "?" in text:
        raise InvalidScope(f"scope {shown!r}: scopes with search parameters are not supported")
    match = _SCOPE.fullmatch(text)
    if match is None:
        raise InvalidScope(
            f"scope {shown!r} is not of the form system/<type>.<permissions> "
            f"(e.g. system/CareTeam.rs, system/*.cruds) or {ADMIN}"
        )
    if match["context"] != "system":
        raise InvalidScope(
            f"scope {shown!r}: an API key acts for its organization, so its scopes are "
            "system/ scopes (not patient/ or user/)"
        )
    resource_type = match["type"]
    if resource_type != ALL_TYPES and resource_type not in RESOURCE_TYPES:
        raise InvalidScope(
            f"scope {shown!r}: unknown resource type (one of {', '.join(RESOURCE_TYPES)}, or *)"
        )
    permissions = _V1_PERMISSIONS.get(match["permissions"], match["permissions"])
    if not _in_order(permissions):
        raise InvalidScope(
            f"scope {shown!r}: permissions are one or more of c, r, u, d, s in that order "
            "(or the v1 read, write, *)"
        )
    return f"system/{resource_type}.{permissions}"


def _in_order(permissions: str) -> bool:
    position = 0
    for letter in permissions:
        found = PERMISSIONS.find(letter, position)
        if found < 0:
            return False
        position = found + 1
    return bool(permissions)


def parse_scopes(texts: Iterable[str]) -> tuple[str, ...]:
    """The scopes in their v2 form, each once, sorted. Raises InvalidScope for the first
    malformed one, or when there is none."""
    scopes = sorted({parse_scope(text) for text in texts})
    if not scopes:
        raise InvalidScope("a key or a client needs at least one scope")
    return tuple(scopes)


def _permissions(scopes: Iterable[str]) -> frozenset[tuple[str, str]]:
    granted: set[tuple[str, str]] = set()
    for scope in scopes:
        if scope == ADMIN:
            continue
        resource_type, _, permissions = scope.removeprefix("system/").partition(".")
        granted.update((resource_type, letter) for letter in permissions)
    return frozenset(granted)


@dataclass(frozen=True)
class Grants:
    """What a credential's scopes (v2 form, as stored) allow."""

    scopes: tuple[str, ...]
    _granted: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_granted", _permissions(self.scopes))

    def allows(self, required: str) -> bool:
        """Whether the scopes grant `required`: ADMIN, or one permission of one type
        (`system/Patient.r`), which `system/Patient.rs` and `system/*.cruds` both grant."""
        if required == ADMIN:
            return ADMIN in self.scopes
        resource_type, _, permission = required.removeprefix("system/").partition(".")
        return (resource_type, permission) in self._granted or (
            ALL_TYPES,
            permission,
        ) in self._granted


def _as_scopes(granted: set[tuple[str, str]]) -> tuple[str, ...]:
    """Permissions (type, letter) written as v2 scopes: `system/*.<letters>` for what
    every type has, then `system/<type>.<letters>` for what a type has beyond it."""
    every = {letter for resource_type, letter in granted if resource_type == ALL_TYPES}
    written = []
    if every:
        written.append(f"system/*.{''.join(p for p in PERMISSIONS if p in every)}")
    for resource_type in RESOURCE_TYPES:
        own = {letter for t, letter in granted if t == resource_type} - every
        if own:
            written.append(f"system/{resource_type}.{''.join(p for p in PERMISSIONS if p in own)}")
    return tuple(written)


def intersect(asked: Iterable[str], registered: Iterable[str]) -> tuple[str, ...]:
    """The scopes granted to a SMART client that asks for `asked` (v2 form) and was
    registered with `registered`: each permission asked for of each type, as far as the
    registration grants it, computed per (type, permission) and written in v2 form,
    sorted. `*` asked reaches only what `*` registered grants, or, type by type, what
    each type registered grants: `system/*.rs` asked of `system/Patient.rs` registered is
    `system/Patient.rs`; `system/Patient.rs` asked of `system/*.cruds` registered is
    `system/Patient.rs`; `system/*.cruds` asked of `system/*.rs` and `system/Patient.c`
    registered is `system/*.rs` and `system/Patient.c`. ADMIN only if both have it."""
    asked, registered = tuple(asked), tuple(registered)
    wanted, held = _permissions(asked), _permissions(registered)
    granted: set[tuple[str, str]] = set()
    for resource_type, letter in wanted:
        if resource_type == ALL_TYPES:
            if (ALL_TYPES, letter) in held:
                granted.add((ALL_TYPES, letter))
            else:
                granted.update((t, letter) for t in RESOURCE_TYPES if (t, letter) in held)
        elif (resource_type, letter) in held or (ALL_TYPES, letter) in held:
            granted.add((resource_type, letter))
    scopes = set(_as_scopes(granted))
    if ADMIN in asked and ADMIN in registered:
        scopes.add(ADMIN)
    return tuple(sorted(scopes))
