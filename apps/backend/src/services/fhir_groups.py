"""Providers' attributed panels (FHIR Group, docs/FHIR.md "Group") for callers other than
the FHIR routes: a bulk exporter reads one Group, or every Group of an organization page
by page, with the same SQL the FHIR read and search run (src/services/fhir_search.py,
GROUPS), under the organization's row-level security.

- `group_of`: one provider's Group (None for an inactive, unknown or other
  organization's provider).
- `group_page`: a page of the organization's Groups in provider id order, and where the
  next one starts; `iter_groups` reads every page.

`since` keeps the members whose primary period opened or closed at or after it, by the
period's own instants (`lower(valid)`, `upper(valid)`: the start of the transaction that
opened or closed it, moved later only where needed to keep the patient's periods in
order); the Group's other elements (quantity, name, NPI, version) are always whole. At
or after, not after: a change at the very instant of an earlier export's horizon is
given again rather than missed.
Each call is one read-only transaction of one statement per page (the members come in
the same statement as their Group), whatever the number of members.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.services.access_log_service import HORIZON
from src.services.fhir_search import (
    GROUPS,
    GroupMember,
    GroupRecord,
    group_members,
    group_of_row,
)
from src.services.transaction import run_transaction

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "GroupMember",
    "GroupPage",
    "GroupRecord",
    "group_of",
    "group_page",
    "iter_groups",
]

DEFAULT_PAGE_SIZE = 50  # Groups per page; each brings all its members
MAX_PAGE_SIZE = 1000

_ONE = (
    f"{GROUPS} SELECT groups.*, {group_members('$3::timestamptz')} FROM groups WHERE groups.id = $2"
)
_PAGE = (
    f"{GROUPS} SELECT groups.*, {group_members('$4::timestamptz')} FROM groups "
    "WHERE groups.id > $2 ORDER BY groups.id LIMIT $3"
)
_FIRST = uuid.UUID(int=0)  # below every id: a first page starts after it


@dataclass(frozen=True)
class GroupPage:
    """A page of Groups, in provider id order. `after`: pass it to group_page for the
    next page (None: this was the last). `horizon`: the page's transaction start, or the
    start of the oldest transaction still open then if earlier (HORIZON); a change
    made after it may be missing from the page, none made before it is. The first
    page's horizon is the `since` to give the next export."""

    groups: list[GroupRecord]
    after: uuid.UUID | None
    horizon: datetime.datetime


async def group_of(
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    provider_id: uuid.UUID,
    since: datetime.datetime | None = None,
) -> GroupRecord | None:
    """The Group of `provider_id`: its whole attribution history, or with `since` only
    the members whose primary period opened or closed after it. None when the provider
    is inactive, unknown or another organization's. One statement, one transaction."""

    async def work(driver: Any) -> GroupRecord | None:
        row = await driver.fetchrow(_ONE, organization_id, provider_id, since)
        return None if row is None else group_of_row(row)

    return await run_transaction(
        db, operation="read_group", organization_id=organization_id, work=work, read_only=True
    )


async def group_page(
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    after: uuid.UUID | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    since: datetime.datetime | None = None,
) -> GroupPage:
    """The organization's Groups after provider id `after` (None: from the first), at
    most `limit` (1 to MAX_PAGE_SIZE; ValueError otherwise), members filtered by `since`
    as group_of does. A page is one read-only transaction: its Groups are one state of
    the database; pages are not (a provider deactivated between pages is not read)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1 to {MAX_PAGE_SIZE}")

    async def work(driver: Any) -> GroupPage:
        horizon = await driver.fetchval(f"SELECT {HORIZON}")
        rows = await driver.fetch(_PAGE, organization_id, after or _FIRST, limit + 1, since)
        groups = [group_of_row(row) for row in rows[:limit]]
        more = len(rows) > limit
        return GroupPage(groups, groups[-1].id if more else None, horizon)

    return await run_transaction(
        db, operation="read_groups", organization_id=organization_id, work=work, read_only=True
    )


async def iter_groups(
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    since: datetime.datetime | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> AsyncIterator[GroupRecord]:
    """Every Group of the organization, in provider id order, read group_page by
    group_page (one transaction each; see there)."""
    after: uuid.UUID | None = None
    while True:
        page = await group_page(
            db, organization_id=organization_id, after=after, limit=page_size, since=since
        )
        for group in page.groups:
            yield group
        if page.after is None:
            return
        after = page.after
