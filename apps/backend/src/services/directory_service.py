"""Patients and providers of one organization: create, read, correct, list and search,
and the trail of who changed them.

Every method is one transaction under the organization's tenant (RLS applies). Another
organization's ids are answered exactly like ids that do not exist. Every change to a
record is recorded in `record_changes` in the same transaction: the actor and the names
of the fields changed, and the record's version and fields as the change left them (its
snapshot, so that every version can be read back: `get_patient_version`). The snapshot
is health data: it is read back, never logged; the trail (`get_record_changes`) names
fields, never values.
"""

from __future__ import annotations

import datetime
import enum
import functools
import itertools
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from src.models import Gender, RecordAction, RecordType
from src.services.errors import (
    IdentifierTaken,
    InvalidArgument,
    InvalidCursor,
    NpiTaken,
    PatientNotFound,
    PreconditionFailed,
    ProviderHasPatients,
    ProviderNotFound,
    VersionNotKept,
)
from src.services.idempotency import IdempotencyKey, once
from src.services.transaction import RUN_AGAIN, Sql, run_transaction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identifier:
    system: str
    value: str


@dataclass(frozen=True)
class PatientRecord:
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    dob: datetime.date | None
    identifiers: tuple[Identifier, ...]
    version: int  # one more with each change (the ETag)
    created_at: datetime.datetime
    # A Gender value, and when this version was written (FHIR's meta.lastUpdated: the
    # time of the record's latest change; its creation's, for a record never changed).
    # Defaults last: a result the release before stored for an Idempotency-Key, replayed
    # after the upgrade, has neither (None: not known then).
    gender: str = Gender.UNKNOWN.value
    updated_at: datetime.datetime | None = None
    # The patient's primary provider now (None: none), and its care team's version (the
    # number of its last care team event, 0 for none): a read's ETag names both, since
    # the primary is part of what it returns. A result stored for an Idempotency-Key
    # before these existed replays with None and 0.
    primary_provider_id: uuid.UUID | None = None
    team_version: int = 0


@dataclass(frozen=True)
class ProviderRecord:
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    npi: str | None
    active: bool
    panel_capacity: int | None
    panel_size: int  # the patients it is the primary provider of now (of a past
    # version: then, when that version was written)
    version: int
    created_at: datetime.datetime
    updated_at: datetime.datetime | None = None  # as PatientRecord's


@dataclass(frozen=True)
class RecordVersion:
    """One version of a patient or provider record."""

    version: int  # the record's version (its ETag's number, FHIR's meta.versionId)
    changed_at: datetime.datetime  # when it was written
    action: str  # created or updated
    # get_patient_version / get_provider_version can return it: its snapshot was kept,
    # or it is the current version. False for versions written before snapshots were.
    readable: bool


@dataclass(frozen=True)
class RecordChangeRecord:
    id: int  # the record's change number: 1 for its creation, then 2, 3, ...
    action: str
    fields: list[str]
    actor: str
    changed_at: datetime.datetime


class Unchanged(enum.Enum):
    """An argument left as it is (where None is a value: no capacity, no NPI)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED
FIRST = uuid.UUID(int=0)  # below every id: a page from the start


def updated_at_of(table: str, record_type: RecordType) -> str:
    """When the record's current version was written: its latest change's time (one
    probe of the trail's unique index, newest first), else its creation's (SQL over the
    row `table`)."""
    return (
        "coalesce((SELECT r.changed_at FROM record_changes AS r "
        f"WHERE r.organization_id = {table}.organization_id AND r.record_id = {table}.id "
        f"AND r.record_type = '{record_type.value}' ORDER BY r.seq DESC LIMIT 1), "
        f"{table}.created_at)"
    )


PATIENT_COLUMNS = (
    "patients.id, first_name, last_name, dob, gender, version, created_at, "
    "ARRAY(SELECT ARRAY[i.system, i.value] FROM patient_identifiers AS i "
    "WHERE i.organization_id = patients.organization_id AND i.patient_id = patients.id "
    f"ORDER BY i.system, i.value) AS identifiers, "
    f"{updated_at_of('patients', RecordType.PATIENT)} AS updated_at, "
    # The primary: one probe of the unique primary index; the team's version: one of the
    # events' (organization_id, patient_id, seq) index, newest first.
    "(SELECT a.provider_id FROM care_team_assignments AS a "
    "WHERE a.organization_id = patients.organization_id AND a.patient_id = patients.id "
    "AND a.is_primary_provider) AS primary_provider_id, "
    "coalesce((SELECT x.seq FROM care_team_events AS x "
    "WHERE x.organization_id = patients.organization_id AND x.patient_id = patients.id "
    "ORDER BY x.seq DESC LIMIT 1), 0) AS team_version"
)
PROVIDER_COLUMNS = (
    "providers.id, first_name, last_name, npi, active, panel_capacity, version, created_at, "
    "(SELECT count(*) FROM care_team_assignments AS a "
    "WHERE a.organization_id = providers.organization_id AND a.provider_id = providers.id "
    f"AND a.is_primary_provider) AS panel_size, "
    f"{updated_at_of('providers', RecordType.PROVIDER)} AS updated_at"
)

INSERT_PATIENT = Sql(
    "INSERT INTO patients (organization_id, first_name, last_name, dob, gender) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING id",
    "org",
    "first_name",
    "last_name",
    "dob",
    "gender",
)
SELECT_PATIENT = Sql(
    f"SELECT {PATIENT_COLUMNS} FROM patients WHERE organization_id = $1 AND id = $2", "org", "id"
)
LOCK_PATIENT = Sql(
    "SELECT first_name, last_name, dob, gender, version FROM patients "
    "WHERE organization_id = $1 AND id = $2 FOR NO KEY UPDATE",
    "org",
    "id",
)
# The patient's care team version (its last care team event's number), read under the
# patient's lock, which every care team writer takes too.
TEAM_VERSION = Sql(
    "SELECT coalesce(max(seq), 0) FROM care_team_events "
    "WHERE organization_id = $1 AND patient_id = $2",
    "org",
    "id",
)
UPDATE_PATIENT = Sql(
    "UPDATE patients SET first_name = $3, last_name = $4, dob = $5, gender = $6, "
    "version = version + 1 WHERE organization_id = $1 AND id = $2",
    "org",
    "id",
    "first_name",
    "last_name",
    "dob",
    "gender",
)
SELECT_IDENTIFIERS = Sql(
    "SELECT system, value FROM patient_identifiers "
    "WHERE organization_id = $1 AND patient_id = $2 ORDER BY system, value",
    "org",
    "id",
)
DELETE_IDENTIFIERS = Sql(
    "DELETE FROM patient_identifiers WHERE organization_id = $1 AND patient_id = $2",
    "org",
    "id",
)
INSERT_IDENTIFIERS = Sql(
    "INSERT INTO patient_identifiers (organization_id, patient_id, system, value) "
    "SELECT $1, $2, s, v FROM unnest($3::text[], $4::text[]) AS t(s, v)",
    "org",
    "id",
    "systems",
    "values",
)
INSERT_PROVIDER = Sql(
    "INSERT INTO providers (organization_id, first_name, last_name, npi) "
    "VALUES ($1, $2, $3, $4) RETURNING id",
    "org",
    "first_name",
    "last_name",
    "npi",
)
SELECT_PROVIDER = Sql(
    f"SELECT {PROVIDER_COLUMNS} FROM providers WHERE organization_id = $1 AND id = $2", "org", "id"
)
SELECT_PROVIDERS = Sql(
    f"SELECT {PROVIDER_COLUMNS} FROM providers WHERE organization_id = $1 AND id = ANY ($2) "
    "ORDER BY id",
    "org",
    "ids",
)
LOCK_PROVIDER = Sql(
    "SELECT first_name, last_name, npi, active, panel_capacity, version FROM providers "
    "WHERE organization_id = $1 AND id = $2 FOR NO KEY UPDATE",
    "org",
    "id",
)
# Deactivation: the patients whose teams the provider is on, locked first, in id order
# (every writer locks a patient before a provider), then their memberships ended, each
# as careteam_remove_member ends one (its provider_removed event, its period closed),
# with the reason provider_left.
LOCK_MEMBER_PATIENTS = Sql(
    """
    SELECT p.id FROM patients AS p
    WHERE p.organization_id = $1
      AND p.id IN (SELECT a.patient_id FROM care_team_assignments AS a
                   WHERE a.organization_id = $1 AND a.provider_id = $2)
    ORDER BY p.id
    FOR NO KEY UPDATE OF p
""",
    "org",
    "id",
)
END_MEMBERSHIPS = Sql(
    """
    WITH members AS MATERIALIZED (
        SELECT patient_id FROM care_team_assignments
        WHERE organization_id = $1 AND provider_id = $2
        ORDER BY patient_id
    )
    SELECT patient_id, careteam_remove_member($1, patient_id, $2, $3, 'provider_left', NULL)
    FROM members
    ORDER BY patient_id
""",
    "org",
    "id",
    "actor",
)
# The panel size is read in a statement of its own, after the lock: a statement that
# waited for the lock would see the panel as it was when the statement began.
PANEL_SIZE = Sql(
    "SELECT count(*) FROM care_team_assignments "
    "WHERE organization_id = $1 AND provider_id = $2 AND is_primary_provider",
    "org",
    "id",
)
UPDATE_PROVIDER = Sql(
    "UPDATE providers SET first_name = $3, last_name = $4, npi = $5, active = $6, "
    "panel_capacity = $7, version = version + 1 WHERE organization_id = $1 AND id = $2",
    "org",
    "id",
    "first_name",
    "last_name",
    "npi",
    "active",
    "panel_capacity",
)
# A change of a record, numbered per record (the writer holds the record's row lock, or
# has just created it), with the record's version and fields as the change left them
# (read from the row in the same statement: what is stored is what the table holds).
_NEXT_SEQ = (
    "coalesce((SELECT max(r.seq) FROM record_changes AS r "
    "WHERE r.organization_id = $1 AND r.record_id = $2), 0) + 1"
)
RECORD_CHANGE = {
    RecordType.PATIENT: Sql(
        "INSERT INTO record_changes (organization_id, record_type, record_id, seq, action, "
        "fields, actor, version, snapshot) "
        f"SELECT $1, 'patient', p.id, {_NEXT_SEQ}, $3, $4, $5, p.version, "
        "jsonb_build_object('first_name', p.first_name, 'last_name', p.last_name, "
        "'dob', p.dob, 'gender', p.gender, 'identifiers', "
        "coalesce((SELECT jsonb_agg(jsonb_build_array(i.system, i.value) "
        "ORDER BY i.system, i.value) FROM patient_identifiers AS i "
        "WHERE i.organization_id = $1 AND i.patient_id = $2), '[]'::jsonb)) "
        "FROM patients AS p WHERE p.organization_id = $1 AND p.id = $2",
        "org",
        "id",
        "action",
        "fields",
        "actor",
    ),
    RecordType.PROVIDER: Sql(
        "INSERT INTO record_changes (organization_id, record_type, record_id, seq, action, "
        "fields, actor, version, snapshot) "
        f"SELECT $1, 'provider', p.id, {_NEXT_SEQ}, $3, $4, $5, p.version, "
        "jsonb_build_object('first_name', p.first_name, 'last_name', p.last_name, "
        "'npi', p.npi, 'active', p.active, 'panel_capacity', p.panel_capacity, "
        "'panel_size', (SELECT count(*) FROM care_team_assignments AS a "
        "WHERE a.organization_id = $1 AND a.provider_id = $2 AND a.is_primary_provider)) "
        "FROM providers AS p WHERE p.organization_id = $1 AND p.id = $2",
        "org",
        "id",
        "action",
        "fields",
        "actor",
    ),
}
# The record's current version, and the offset of its versions from its changes' numbers
# (`seq`): 0 for a record created since the trail began, 1 for one created before (its
# version 1 has no change). Every version since has exactly one change, so a change
# written before versions were stored in it is version seq + offset.
CURRENT_VERSION = {
    record_type: Sql(
        f"SELECT t.version, t.created_at, t.version - coalesce((SELECT max(r.seq) "
        "FROM record_changes AS r WHERE r.organization_id = $1 AND r.record_id = $2 "
        f"AND r.record_type = '{record_type.value}'), 0) AS version_offset "
        f"FROM {table} AS t WHERE t.organization_id = $1 AND t.id = $2",
        "org",
        "id",
    )
    for record_type, table in ((RecordType.PATIENT, "patients"), (RecordType.PROVIDER, "providers"))
}
SELECT_SNAPSHOT = Sql(
    "SELECT changed_at, snapshot FROM record_changes "
    "WHERE organization_id = $1 AND record_id = $2 AND record_type = $3 "
    "AND coalesce(version, seq + $4) = $5",
    "org",
    "id",
    "type",
    "offset",
    "version",
)
SELECT_VERSIONS = Sql(
    "SELECT coalesce(version, seq + $4) AS version, changed_at, action, "
    "snapshot IS NOT NULL AS readable FROM record_changes "
    "WHERE organization_id = $1 AND record_id = $2 AND record_type = $3 "
    "AND coalesce(version, seq + $4) < $5 ORDER BY seq DESC LIMIT $6",
    "org",
    "id",
    "type",
    "offset",
    "before",
    "limit",
)
SELECT_CHANGES = Sql(
    "SELECT seq AS id, action, fields, actor, changed_at FROM record_changes "
    "WHERE organization_id = $1 AND record_id = $2 AND record_type = $3 AND seq < $4 "
    "ORDER BY seq DESC LIMIT $5",
    "org",
    "id",
    "type",
    "before",
    "limit",
)
RECORD_EXISTS = {
    RecordType.PATIENT: Sql(
        "SELECT 1 FROM patients WHERE organization_id = $1 AND id = $2", "org", "id"
    ),
    RecordType.PROVIDER: Sql(
        "SELECT 1 FROM providers WHERE organization_id = $1 AND id = $2", "org", "id"
    ),
}

# Prefix searches compare the name keys (the names in lower case, kept by a trigger)
# with text_pattern_ops' byte-wise operators, as a range: [prefix, prefix || U+10FFFF).
# Unlike LIKE with a parameter, a range of parameters keeps the index usable by a
# prepared statement (and needs no escaping of % and _); unlike lower(name), a plain
# column keeps it usable under row-level security (only leakproof conditions become
# index conditions there). Names cannot hold U+10FFFF (unassigned: refused).
_PREFIX_END = "chr(1114111)"


def _prefix(column: str, param: str) -> str:
    key = f"{column}_key"
    return f"({key} ~>=~ lower({param}) AND {key} ~<~ (lower({param}) || {_PREFIX_END}))"


def _page_statement(table: str, columns: str, filters: list[tuple[str, str]]) -> Sql:
    """`SELECT columns FROM table` of the organization ($1), after the cursor id ($2;
    the nil UUID, below every id, from the start), in id order, at most $3 rows, with
    each filter: (parameter name, condition with "{}" for its placeholder: $4, $5...).

    A name filter first gathers the ids whose first or last name has the prefix, from
    the name indexes (a MATERIALIZED CTE: planned apart), then pages through them. Left
    to itself the planner cannot tell a rare prefix from a common one in a prepared
    statement, and would walk the organization's ids filtering names: most of the
    organization for a rare prefix."""
    placeholder = {name: f"${4 + n}" for n, (name, _) in enumerate(filters)}
    conditions = [c.format(placeholder[n]) for n, c in filters if n != "name"]
    where = " AND ".join([f"{table}.organization_id = $1", f"{table}.id > $2", *conditions])
    if "name" not in placeholder:
        text = f"SELECT {columns} FROM {table} WHERE {where} ORDER BY {table}.id LIMIT $3"
    else:
        branches = " UNION ".join(
            f"SELECT id FROM {table} WHERE organization_id = $1 AND id > $2 "
            f"AND {_prefix(column, placeholder['name'])}"
            for column in ("last_name", "first_name")
        )
        text = (
            f"WITH matches AS MATERIALIZED ({branches}) "
            f"SELECT {columns} FROM matches JOIN {table} ON {table}.id = matches.id "
            f"WHERE {where} ORDER BY matches.id LIMIT $3"
        )
    return Sql(text, "org", "after", "limit", *(name for name, _ in filters))


NAME_FILTER = ("name", "")  # the prefix of the first or last name: see _page_statement
PATIENT_FILTERS = {
    "id": ("id", "patients.id = {}"),
    "name": NAME_FILTER,
    "dob": ("dob", "dob = {}"),
    # The identifier is one parameter: "system|value" split by the database.
    "identifier": (
        "identifier",
        "patients.id IN (SELECT patient_id FROM patient_identifiers AS i "
        "WHERE i.organization_id = $1 AND i.system = split_part({0}, '|', 1) "
        "AND i.value = substr({0}, length(split_part({0}, '|', 1)) + 2))",
    ),
}
PROVIDER_FILTERS = {
    "id": ("id", "providers.id = {}"),
    "name": NAME_FILTER,
    "npi": ("npi", "npi = {}"),
    "active": ("active", "active = {}"),
}


def _searches(
    table: str, columns: str, filters: dict[str, tuple[str, str]]
) -> dict[frozenset[str], Sql]:
    """A statement for every combination of the filters, prepared once each."""
    names = list(filters)
    return {
        frozenset(chosen): _page_statement(table, columns, [filters[n] for n in chosen])
        for size in range(len(names) + 1)
        for chosen in itertools.combinations(names, size)
    }


PATIENT_SEARCHES = _searches("patients", PATIENT_COLUMNS, PATIENT_FILTERS)
PROVIDER_SEARCHES = _searches("providers", PROVIDER_COLUMNS, PROVIDER_FILTERS)


# Sorted patient lists (`sort`, `primary`): each order's keys, every one backed by an
# index leading with organization_id (revision 20261207_patient_primary_sort), written as
# the index is. Names sort by their keys (lower case; an absent name as "") byte-wise
# (COLLATE "C": the same order on every server, whatever its locale), then by id. A CASE,
# not coalesce(): under row-level security only a condition PostgreSQL knows cannot leak
# becomes an index condition, and it knows CASE, not COALESCE.
def _name_key(column: str) -> str:
    key = f"patients.{column}_key"
    return f"(CASE WHEN {key} IS NULL THEN '' ELSE {key} END) COLLATE \"C\""


NAME_KEYS = (_name_key("last_name"), _name_key("first_name"), "patients.id")
CREATED_KEYS = ("patients.created_at", "patients.id")
PATIENT_SORTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "id": (("patients.id",), False),
    "name": (NAME_KEYS, False),
    "-name": (NAME_KEYS, True),
    "created": (CREATED_KEYS, False),
    "-created": (CREATED_KEYS, True),
}
NO_PRIMARY = "none"  # `primary`: patients without a primary provider
# Where a later page starts: the keys of the patient the previous page ended at, read in
# the page's transaction (the cursor holds its id and version, never a name).
PAGE_ANCHOR = Sql(
    "SELECT version, created_at, coalesce(last_name_key, '') AS last_key, "
    "coalesce(first_name_key, '') AS first_key FROM patients "
    "WHERE organization_id = $1 AND id = $2",
    "org",
    "id",
)


@functools.cache
def _sorted_page_statement(
    sort: str, primary: str | None, filters: frozenset[str], after: bool
) -> Sql:
    """A page of patients in `sort` order (PATIENT_SORTS), those with no primary
    (`primary` NO_PRIMARY) or whose primary is the parameter `primary` ("provider"),
    with the PATIENT_FILTERS named, after the keys of the previous page's last patient
    (`after`). Built once per combination; parameters by name."""
    names: list[str] = []

    def bind(name: str) -> str:
        names.append(name)
        return f"${len(names)}"

    org = bind("org")
    keys, descending = PATIENT_SORTS[sort]
    conditions = [f"patients.organization_id = {org}"]
    if after:
        anchor = {"patients.id": "after"}
        anchor.update({NAME_KEYS[0]: "last_key", NAME_KEYS[1]: "first_key"})
        anchor["patients.created_at"] = "created_at"
        position = ", ".join(bind(anchor[k]) for k in keys)
        conditions.append(f"({', '.join(keys)}) {'<' if descending else '>'} ({position})")
    if primary == NO_PRIMARY:
        conditions.append(
            "NOT EXISTS (SELECT 1 FROM care_team_assignments AS a "
            f"WHERE a.organization_id = {org} AND a.patient_id = patients.id "
            "AND a.is_primary_provider)"
        )
    elif primary is not None:
        conditions.append(
            "patients.id IN (SELECT a.patient_id FROM care_team_assignments AS a "
            f"WHERE a.organization_id = {org} AND a.provider_id = {bind('primary')} "
            "AND a.is_primary_provider)"
        )
    source = "patients"
    for name in sorted(filters):
        param, condition = PATIENT_FILTERS[name]
        if name == "name":
            placeholder = bind(param)
            branches = " UNION ".join(
                f"SELECT id FROM patients WHERE organization_id = {org} "
                f"AND {_prefix(column, placeholder)}"
                for column in ("last_name", "first_name")
            )
            source = (
                f"(WITH matches AS MATERIALIZED ({branches}) SELECT patients.* FROM matches "
                "JOIN patients ON patients.id = matches.id) AS patients"
            )
        else:
            conditions.append(condition.format(bind(param)))
    order = ", ".join(f"{k} DESC" if descending else k for k in keys)
    text = (
        f"SELECT {PATIENT_COLUMNS} FROM {source} WHERE {' AND '.join(conditions)} "
        f"ORDER BY {order} LIMIT {bind('limit')}"
    )
    return Sql(text, *names)


def patient_of_row(row: Any) -> PatientRecord:
    data = dict(row)
    data["identifiers"] = tuple(Identifier(s, v) for s, v in data["identifiers"] or ())
    return PatientRecord(**data)


def provider_of_row(row: Any) -> ProviderRecord:
    return ProviderRecord(**dict(row))


def _unique_identifiers(identifiers: Sequence[Identifier]) -> tuple[Identifier, ...]:
    unique = tuple(dict.fromkeys(identifiers))
    if len(unique) != len(identifiers):
        raise InvalidArgument("an identifier is given twice", field="identifiers")
    return unique


async def _record_change(
    driver: Any,
    *,
    org: uuid.UUID,
    record_type: RecordType,
    record_id: uuid.UUID,
    action: RecordAction,
    fields: Sequence[str],
    actor: str,
) -> None:
    """After the change itself: the trail's entry, with the record's snapshot."""
    await RECORD_CHANGE[record_type].execute(
        driver,
        {
            "org": org,
            "id": record_id,
            "action": action.value,
            "fields": list(fields),
            "actor": actor,
        },
    )


def _patient_version(
    current: PatientRecord, version: int, changed_at: datetime.datetime, snapshot: Any
) -> PatientRecord:
    data = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
    dob = data["dob"]
    return PatientRecord(
        id=current.id,
        first_name=data["first_name"],
        last_name=data["last_name"],
        dob=None if dob is None else datetime.date.fromisoformat(dob),
        identifiers=tuple(Identifier(s, v) for s, v in data["identifiers"]),
        version=version,
        created_at=current.created_at,
        gender=data["gender"],
        updated_at=changed_at,
    )


def _provider_version(
    current: ProviderRecord, version: int, changed_at: datetime.datetime, snapshot: Any
) -> ProviderRecord:
    data = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
    return ProviderRecord(
        id=current.id,
        first_name=data["first_name"],
        last_name=data["last_name"],
        npi=data["npi"],
        active=data["active"],
        panel_capacity=data["panel_capacity"],
        panel_size=data["panel_size"],
        version=version,
        created_at=current.created_at,
        updated_at=changed_at,
    )


async def _version(
    driver: Any,
    *,
    org: uuid.UUID,
    record_type: RecordType,
    record_id: uuid.UUID,
    version: int,
) -> tuple[datetime.datetime, Any] | None:
    """(changed_at, snapshot) of the record's version, if it is a past one (None if the
    record never had it). Raises the record's NotFound, VersionNotKept."""
    params = {"org": org, "id": record_id}
    current = await CURRENT_VERSION[record_type].fetchrow(driver, params)
    if current is None:
        if record_type is RecordType.PATIENT:
            raise PatientNotFound(record_id)
        raise ProviderNotFound(record_id)
    if not 1 <= version < current["version"]:
        return None
    row = await SELECT_SNAPSHOT.fetchrow(
        driver,
        {
            **params,
            "type": record_type.value,
            "offset": current["version_offset"],
            "version": version,
        },
    )
    if row is None or row["snapshot"] is None:
        raise VersionNotKept(record_type.value, record_id, version)
    return row["changed_at"], row["snapshot"]


async def _versions(
    driver: Any,
    *,
    org: uuid.UUID,
    record_type: RecordType,
    record_id: uuid.UUID,
    limit: int,
    before: int | None,
) -> list[RecordVersion]:
    params = {"org": org, "id": record_id}
    current = await CURRENT_VERSION[record_type].fetchrow(driver, params)
    if current is None:
        if record_type is RecordType.PATIENT:
            raise PatientNotFound(record_id)
        raise ProviderNotFound(record_id)
    below = current["version"] + 1 if before is None else before
    rows = await SELECT_VERSIONS.fetch(
        driver,
        {
            **params,
            "type": record_type.value,
            "offset": current["version_offset"],
            "before": below,
            "limit": limit,
        },
    )
    found = [
        RecordVersion(
            version=row["version"],
            changed_at=row["changed_at"],
            action=row["action"],
            readable=row["readable"] or row["version"] == current["version"],
        )
        for row in rows
    ]
    # A record created before the trail began: its creation (version 1) has no change.
    if current["version_offset"] >= 1 and below > 1 and len(found) < limit:
        found.append(
            RecordVersion(
                version=1,
                changed_at=current["created_at"],
                action=RecordAction.CREATED.value,
                readable=current["version"] == 1,
            )
        )
    return found


async def _write_identifiers(
    driver: Any, org: uuid.UUID, patient: uuid.UUID, identifiers: Sequence[Identifier]
) -> None:
    """The patient's identifiers become exactly these (IdentifierTaken if another patient
    of the organization holds one)."""
    await DELETE_IDENTIFIERS.execute(driver, {"org": org, "id": patient})
    if not identifiers:
        return
    try:
        await INSERT_IDENTIFIERS.execute(
            driver,
            {
                "org": org,
                "id": patient,
                "systems": [i.system for i in identifiers],
                "values": [i.value for i in identifiers],
            },
        )
    except asyncpg.UniqueViolationError:
        raise IdentifierTaken() from None


def _changes(current: Any, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The record's new values (given ones, the current ones where UNCHANGED), and the
    names of the fields whose value changes."""
    new = {k: current[k] if isinstance(v, Unchanged) else v for k, v in given.items()}
    return new, [k for k in given if new[k] != current[k]]


def _gender(value: str | Unchanged) -> str | Unchanged:
    """A Gender value, checked (InvalidArgument otherwise)."""
    if isinstance(value, Unchanged) or value in {g.value for g in Gender}:
        return value
    allowed = ", ".join(g.value for g in Gender)
    raise InvalidArgument(f"gender must be one of {allowed}", field="gender")


def _check_version(expected: int | None, current: int, what: str) -> None:
    if expected is not None and expected != current:
        raise PreconditionFailed(what)


class DirectoryService:
    """The organization's patients and providers."""

    @staticmethod
    async def create_patient(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        first_name: str,
        last_name: str,
        dob: datetime.date,
        gender: str = Gender.UNKNOWN.value,
        identifiers: Sequence[Identifier] = (),
        actor: str = "system",
        idempotency: IdempotencyKey | None = None,
    ) -> PatientRecord:
        """`gender`: a Gender value. Raises IdentifierTaken, InvalidArgument (an
        identifier given twice, a gender that is not one)."""
        wanted = _unique_identifiers(identifiers)
        _gender(gender)

        async def work(driver: Any) -> PatientRecord:
            params = {"org": organization_id}
            patient = await INSERT_PATIENT.fetchval(
                driver,
                {
                    **params,
                    "first_name": first_name,
                    "last_name": last_name,
                    "dob": dob,
                    "gender": gender,
                },
            )
            await _write_identifiers(driver, organization_id, patient, wanted)
            fields = [
                "first_name",
                "last_name",
                "dob",
                *(["gender"] if gender != Gender.UNKNOWN else []),
                *(["identifiers"] if wanted else []),
            ]
            await _record_change(
                driver,
                org=organization_id,
                record_type=RecordType.PATIENT,
                record_id=patient,
                action=RecordAction.CREATED,
                fields=fields,
                actor=actor,
            )
            return patient_of_row(await SELECT_PATIENT.fetchrow(driver, {**params, "id": patient}))

        # A create whose COMMIT is lost cannot be checked (its id is unknown): it raises
        # OutcomeUnknown, unless it has an Idempotency-Key (src/services/idempotency.py):
        # then it runs again, and its key's claim finds it if it committed.
        record = await run_transaction(
            db,
            operation="create_patient",
            organization_id=organization_id,
            work=lambda driver: once(driver, organization_id, idempotency, PatientRecord, work),
            verify=None if idempotency is None else RUN_AGAIN,
        )
        logger.info("patient created organization_id=%s patient_id=%s", organization_id, record.id)
        return record

    @staticmethod
    async def get_patient(
        *, db: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID
    ) -> PatientRecord:
        """Raises PatientNotFound."""

        async def work(driver: Any) -> PatientRecord:
            row = await SELECT_PATIENT.fetchrow(driver, {"org": organization_id, "id": patient_id})
            if row is None:
                raise PatientNotFound(patient_id)
            return patient_of_row(row)

        return await run_transaction(
            db, operation="get_patient", organization_id=organization_id, work=work, read_only=True
        )

    @staticmethod
    async def update_patient(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        first_name: str | Unchanged = UNCHANGED,
        last_name: str | Unchanged = UNCHANGED,
        dob: datetime.date | Unchanged = UNCHANGED,
        gender: str | Unchanged = UNCHANGED,
        identifiers: Sequence[Identifier] | Unchanged = UNCHANGED,
        if_version: int | None = None,
        if_team_version: int | None = None,
        actor: str = "system",
        idempotency: IdempotencyKey | None = None,
    ) -> PatientRecord:
        """Change what is given (`identifiers`: the whole list, replacing it). With
        `if_version` (and `if_team_version`: the read's ETag names both), only if the
        record (and its care team) are still at that version (PreconditionFailed
        otherwise, nothing changed). Records which fields changed. Raises PatientNotFound,
        PreconditionFailed, IdentifierTaken, InvalidArgument."""
        wanted = None if isinstance(identifiers, Unchanged) else _unique_identifiers(identifiers)
        _gender(gender)

        async def work(driver: Any) -> PatientRecord:
            params = {"org": organization_id, "id": patient_id}
            current = await LOCK_PATIENT.fetchrow(driver, params)
            if current is None:
                raise PatientNotFound(patient_id)
            _check_version(if_version, current["version"], f"patient {patient_id}")
            if if_team_version is not None:
                team = await TEAM_VERSION.fetchval(driver, params)
                _check_version(if_team_version, int(team), f"patient {patient_id}")
            given = {
                "first_name": first_name,
                "last_name": last_name,
                "dob": dob,
                "gender": gender,
            }
            new, fields = _changes(current, given)
            if wanted is not None:
                had = tuple(
                    Identifier(**dict(r)) for r in await SELECT_IDENTIFIERS.fetch(driver, params)
                )
                if set(had) != set(wanted):
                    await _write_identifiers(driver, organization_id, patient_id, wanted)
                    fields.append("identifiers")
            if fields:
                await UPDATE_PATIENT.execute(driver, {**params, **new})
                await _record_change(
                    driver,
                    org=organization_id,
                    record_type=RecordType.PATIENT,
                    record_id=patient_id,
                    action=RecordAction.UPDATED,
                    fields=fields,
                    actor=actor,
                )
            return patient_of_row(await SELECT_PATIENT.fetchrow(driver, params))

        record = await run_transaction(
            db,
            operation="update_patient",
            organization_id=organization_id,
            work=lambda driver: once(driver, organization_id, idempotency, PatientRecord, work),
            verify=None if idempotency is None else RUN_AGAIN,
        )
        logger.info(
            "patient updated organization_id=%s patient_id=%s version=%s",
            organization_id,
            patient_id,
            record.version,
        )
        return record

    @staticmethod
    async def list_patients(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        name: str | None = None,
        dob: datetime.date | None = None,
        identifier: Identifier | None = None,
        patient_id: uuid.UUID | None = None,
        primary: uuid.UUID | str | None = None,
        sort: str = "id",
        limit: int = 50,
        after: uuid.UUID | None = None,
        after_version: int | None = None,
    ) -> list[PatientRecord]:
        """Patients in `sort` order (PATIENT_SORTS: id, name, -name, created, -created)
        after the patient `after`, at most `limit`: those whose first or last name starts
        with `name` (any case), born on `dob`, holding `identifier`, with the id
        `patient_id`, and whose primary provider is `primary` (NO_PRIMARY: who have none;
        a provider of another organization: nobody).

        In an order other than id, a later page starts after the keys of `after`, read in
        the same transaction: InvalidCursor if that patient is gone, or (by name) if its
        version is no longer `after_version` (its name may have moved it: the page could
        skip or repeat patients)."""
        if sort not in PATIENT_SORTS:
            raise InvalidArgument(f"sort must be one of {', '.join(PATIENT_SORTS)}", field="sort")
        given = {
            "id": patient_id,
            "name": name,
            "dob": dob,
            "identifier": None if identifier is None else f"{identifier.system}|{identifier.value}",
        }
        chosen = frozenset(k for k, v in given.items() if v is not None)
        params: dict[str, Any] = {"org": organization_id, "limit": limit, **given}
        keyset = not (sort == "id" and primary is None)  # else the plain id-order search
        if not keyset:
            statement = PATIENT_SEARCHES[chosen]
            params["after"] = after or FIRST
        else:
            kind = None if primary is None else NO_PRIMARY if primary == NO_PRIMARY else "one"
            statement = _sorted_page_statement(sort, kind, chosen, after is not None)
            params["primary"] = None if kind != "one" else primary

        async def work(driver: Any) -> list[PatientRecord]:
            if keyset and after is not None:
                anchor = await PAGE_ANCHOR.fetchrow(driver, {"org": organization_id, "id": after})
                if anchor is None or (sort.endswith("name") and anchor["version"] != after_version):
                    raise InvalidCursor(
                        "cursor: the patient the previous page ended at has changed since "
                        "(its place in this order may have moved): start the list again"
                    )
                params.update(dict(anchor), after=after)
            return [patient_of_row(row) for row in await statement.fetch(driver, params)]

        return await run_transaction(
            db,
            operation="list_patients",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def create_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        first_name: str,
        last_name: str,
        npi: str | None = None,
        actor: str = "system",
        idempotency: IdempotencyKey | None = None,
    ) -> ProviderRecord:
        """Raises NpiTaken."""

        async def work(driver: Any) -> ProviderRecord:
            params = {"org": organization_id}
            try:
                provider = await INSERT_PROVIDER.fetchval(
                    driver, {**params, "first_name": first_name, "last_name": last_name, "npi": npi}
                )
            except asyncpg.UniqueViolationError:
                raise NpiTaken() from None
            fields = ["first_name", "last_name", *(["npi"] if npi else [])]
            await _record_change(
                driver,
                org=organization_id,
                record_type=RecordType.PROVIDER,
                record_id=provider,
                action=RecordAction.CREATED,
                fields=fields,
                actor=actor,
            )
            return provider_of_row(
                await SELECT_PROVIDER.fetchrow(driver, {**params, "id": provider})
            )

        record = await run_transaction(
            db,
            operation="create_provider",
            organization_id=organization_id,
            work=lambda driver: once(driver, organization_id, idempotency, ProviderRecord, work),
            verify=None if idempotency is None else RUN_AGAIN,
        )
        logger.info(
            "provider created organization_id=%s provider_id=%s", organization_id, record.id
        )
        return record

    @staticmethod
    async def get_provider(
        *, db: AsyncSession, organization_id: uuid.UUID, provider_id: uuid.UUID
    ) -> ProviderRecord:
        """Raises ProviderNotFound."""

        async def work(driver: Any) -> ProviderRecord:
            row = await SELECT_PROVIDER.fetchrow(
                driver, {"org": organization_id, "id": provider_id}
            )
            if row is None:
                raise ProviderNotFound(provider_id)
            return provider_of_row(row)

        return await run_transaction(
            db,
            operation="get_provider",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def get_providers(
        *, db: AsyncSession, organization_id: uuid.UUID, provider_ids: Sequence[uuid.UUID]
    ) -> list[ProviderRecord]:
        """These providers of the organization (unknown ids left out), in id order; one
        statement."""
        if not provider_ids:
            return []

        async def work(driver: Any) -> list[ProviderRecord]:
            rows = await SELECT_PROVIDERS.fetch(
                driver, {"org": organization_id, "ids": list(provider_ids)}
            )
            return [provider_of_row(row) for row in rows]

        return await run_transaction(
            db,
            operation="get_providers",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def update_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        provider_id: uuid.UUID,
        first_name: str | Unchanged = UNCHANGED,
        last_name: str | Unchanged = UNCHANGED,
        npi: str | Unchanged | None = UNCHANGED,
        active: bool | None = None,
        panel_capacity: int | Unchanged | None = UNCHANGED,
        if_version: tuple[int, ...] | None = None,
        actor: str = "system",
        idempotency: IdempotencyKey | None = None,
    ) -> ProviderRecord:
        """Change what is given: names, `npi` (None removes it), `active`,
        `panel_capacity` (None: no limit; below the panel's size it only stops new
        assignments).

        Deactivating (`active=False`): a provider who is still some patient's primary is
        refused (ProviderHasPatients, with the count): transfer the panel first. Every
        team the provider is a secondary member of loses it in the same transaction
        (provider_removed events and closed periods, reason provider_left), so no open
        membership points at an inactive provider; an inactive provider cannot join a
        team. `active=False` on a provider inactive already ends any membership left
        (from before this rule). The patients of those teams are locked first, then the
        provider's row, so no assignment to it can slip in between the check and the
        change. With `if_version` (version, panel size), only if the
        record and its panel size are still those (the provider's ETag). Raises
        ProviderNotFound, ProviderHasPatients, NpiTaken, PreconditionFailed,
        InvalidArgument."""
        if isinstance(panel_capacity, int) and panel_capacity < 0:
            raise InvalidArgument("panel_capacity must be 0 or more", field="panel_capacity")

        async def work(driver: Any) -> ProviderRecord:
            params = {"org": organization_id, "id": provider_id}
            if active is False:
                await LOCK_MEMBER_PATIENTS.execute(driver, params)
            current = await LOCK_PROVIDER.fetchrow(driver, params)
            if current is None:
                raise ProviderNotFound(provider_id)
            if if_version is not None:
                size = int(await PANEL_SIZE.fetchval(driver, params))
                if (current["version"], size) != if_version:
                    raise PreconditionFailed(f"provider {provider_id}")
            if active is False:
                patients = int(await PANEL_SIZE.fetchval(driver, params))
                if patients:
                    raise ProviderHasPatients(provider_id, patients)
                await END_MEMBERSHIPS.execute(driver, {**params, "actor": actor})
            given = {
                "first_name": first_name,
                "last_name": last_name,
                "npi": npi,
                "active": UNCHANGED if active is None else active,
                "panel_capacity": panel_capacity,
            }
            new, fields = _changes(current, given)
            if fields:
                try:
                    await UPDATE_PROVIDER.execute(driver, {**params, **new})
                except asyncpg.UniqueViolationError:
                    raise NpiTaken() from None
                await _record_change(
                    driver,
                    org=organization_id,
                    record_type=RecordType.PROVIDER,
                    record_id=provider_id,
                    action=RecordAction.UPDATED,
                    fields=fields,
                    actor=actor,
                )
            return provider_of_row(await SELECT_PROVIDER.fetchrow(driver, params))

        record = await run_transaction(
            db,
            operation="update_provider",
            organization_id=organization_id,
            work=lambda driver: once(driver, organization_id, idempotency, ProviderRecord, work),
            verify=None if idempotency is None else RUN_AGAIN,
        )
        logger.info(
            "provider updated organization_id=%s provider_id=%s active=%s version=%s",
            organization_id,
            provider_id,
            record.active,
            record.version,
        )
        return record

    @staticmethod
    async def list_providers(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        name: str | None = None,
        npi: str | None = None,
        active: bool | None = None,
        provider_id: uuid.UUID | None = None,
        limit: int = 50,
        after: uuid.UUID | None = None,
    ) -> list[ProviderRecord]:
        """Providers in id order after `after`, at most `limit`: those whose first or last
        name starts with `name` (any case), with this `npi`, active or not, with the id
        `provider_id`."""
        given = {"id": provider_id, "name": name, "npi": npi, "active": active}
        statement = PROVIDER_SEARCHES[frozenset(k for k, v in given.items() if v is not None)]
        params = {"org": organization_id, "after": after or FIRST, "limit": limit, **given}

        async def work(driver: Any) -> list[ProviderRecord]:
            return [provider_of_row(row) for row in await statement.fetch(driver, params)]

        return await run_transaction(
            db,
            operation="list_providers",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def get_record_changes(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        record_type: RecordType,
        record_id: uuid.UUID,
        limit: int = 50,
        before: int | None = None,
    ) -> list[RecordChangeRecord]:
        """Who changed the record and when, newest first, at most `limit`, before the
        change numbered `before`. Raises PatientNotFound or ProviderNotFound."""

        async def work(driver: Any) -> list[RecordChangeRecord]:
            params = {"org": organization_id, "id": record_id}
            if await RECORD_EXISTS[record_type].fetchval(driver, params) is None:
                if record_type is RecordType.PATIENT:
                    raise PatientNotFound(record_id)
                raise ProviderNotFound(record_id)
            rows = await SELECT_CHANGES.fetch(
                driver,
                {
                    **params,
                    "type": record_type.value,
                    "before": before if before is not None else 2**63 - 1,
                    "limit": limit,
                },
            )
            return [RecordChangeRecord(**dict(row)) for row in rows]

        return await run_transaction(
            db,
            operation="get_record_changes",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def get_patient_version(
        *, db: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID, version: int
    ) -> PatientRecord | None:
        """The patient as it was at `version` (FHIR's vread), with `updated_at` when that
        version was written; None if the patient never had that version. Raises
        PatientNotFound, VersionNotKept (a past version written before versions were
        kept: its values are not known)."""

        async def work(driver: Any) -> PatientRecord | None:
            params = {"org": organization_id, "id": patient_id}
            row = await SELECT_PATIENT.fetchrow(driver, params)
            if row is None:
                raise PatientNotFound(patient_id)
            current = patient_of_row(row)
            if version == current.version:
                return current
            past = await _version(
                driver,
                org=organization_id,
                record_type=RecordType.PATIENT,
                record_id=patient_id,
                version=version,
            )
            return None if past is None else _patient_version(current, version, *past)

        return await run_transaction(
            db,
            operation="get_patient_version",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def get_provider_version(
        *, db: AsyncSession, organization_id: uuid.UUID, provider_id: uuid.UUID, version: int
    ) -> ProviderRecord | None:
        """The provider as it was at `version`, as get_patient_version (`panel_size`: its
        panel's size when that version was written). Raises ProviderNotFound,
        VersionNotKept."""

        async def work(driver: Any) -> ProviderRecord | None:
            params = {"org": organization_id, "id": provider_id}
            row = await SELECT_PROVIDER.fetchrow(driver, params)
            if row is None:
                raise ProviderNotFound(provider_id)
            current = provider_of_row(row)
            if version == current.version:
                return current
            past = await _version(
                driver,
                org=organization_id,
                record_type=RecordType.PROVIDER,
                record_id=provider_id,
                version=version,
            )
            return None if past is None else _provider_version(current, version, *past)

        return await run_transaction(
            db,
            operation="get_provider_version",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def patient_versions(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        limit: int = 50,
        before: int | None = None,
    ) -> list[RecordVersion]:
        """The patient's versions, newest first, at most `limit`, below version `before`
        (FHIR's _history): when each was written, by which action, and whether
        get_patient_version can return it. Raises PatientNotFound."""

        async def work(driver: Any) -> list[RecordVersion]:
            return await _versions(
                driver,
                org=organization_id,
                record_type=RecordType.PATIENT,
                record_id=patient_id,
                limit=limit,
                before=before,
            )

        return await run_transaction(
            db,
            operation="patient_versions",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def provider_versions(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        provider_id: uuid.UUID,
        limit: int = 50,
        before: int | None = None,
    ) -> list[RecordVersion]:
        """The provider's versions, as patient_versions. Raises ProviderNotFound."""

        async def work(driver: Any) -> list[RecordVersion]:
            return await _versions(
                driver,
                org=organization_id,
                record_type=RecordType.PROVIDER,
                record_id=provider_id,
                limit=limit,
                before=before,
            )

        return await run_transaction(
            db,
            operation="provider_versions",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )
