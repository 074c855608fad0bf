"""Paging: every list answers `next_cursor`, sealed for the caller's organization and
the list (src/values.py, Cursors), and reads it back only for that list: a cursor of
another organization or list, a forged one, or one of the release before is 422
`invalid_cursor`, never a page."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import Query, Request

from src.api.auth import credential_of
from src.api.deps import database_of
from src.services.errors import InvalidCursor
from src.services.secret_service import SecretService
from src.values import CURSOR_MAX_LENGTH, CURSOR_PATTERN, Cursors, Position, UnknownCursor

CURSOR_KEY_STATE = "cursor_key"

# A list's `cursor` query parameter.
CursorParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=CURSOR_MAX_LENGTH,
        pattern=CURSOR_PATTERN,
        description="next_cursor of the previous page of this very list (opaque)",
    ),
]


async def cursors_of(request: Request) -> Cursors:
    """The caller's cursors (the key is read from the database once per process)."""
    state = request.app.state
    key: bytes | None = getattr(state, CURSOR_KEY_STATE, None)
    if key is None:
        async with database_of(request).sessionmaker() as db:
            key = await SecretService.cursor_key(db=db)
        setattr(state, CURSOR_KEY_STATE, key)
    return Cursors(key, credential_of(request.scope).organization_id)


def open_cursor(
    cursors: Cursors, list_key: str, cursor: str, *kinds: type[Position], field: str = "cursor"
) -> tuple[Position, ...]:
    """The position `cursor` holds for this list; InvalidCursor (422) otherwise."""
    try:
        return cursors.open(list_key, cursor, *kinds)
    except UnknownCursor as err:
        raise InvalidCursor(f"{field} {err}", field=field) from None


def list_key(kind: str, **filters: object) -> str:
    """What names a list for its cursors: its kind (with the record it belongs to) and
    the filters given, so that a cursor of `?name=A` is not read by `?name=B`."""
    given = {name: str(value) for name, value in filters.items() if value is not None}
    return kind + json.dumps(given, sort_keys=True, ensure_ascii=False)
