"""A bulk export's resources, built as JSON text by PostgreSQL: one statement per type
that reads the organization's rows once, joined set-wise (the last record change, the
last care team event, the primary, the identifiers of every patient, each in one pass
in id order), and returns each resource as one line of NDJSON.

They are the resources the FHIR API serves (src/api/fhir_resources.py builds those in
Python, from the search's statements): the same elements, values and order, which
tests/api/test_export_resources.py holds line by line against the API's own for every
shape (no name, no identifier, no primary, ended periods, secondaries, no NPI, an
instant with and without microseconds, text that JSON escapes). A change to one
builder is a change to both.

The search's conditions apply unchanged (fhir_search.matching: a _typeFilter's clauses,
the export's population), so each statement reads its type's rows under the search's
own name for them: `patients`, `providers`, `teams`, `groups`.

Why here and not in fhir_resources.py's Python: an export's time was four fifths
Python building each resource and one statement per page probing each row's record
change, event and primary (docs/PERFORMANCE.md, "Bulk Data export").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from src.api.fhir_resources import (
    NPI_SYSTEM,
    PRIMARY_ROLE,
    SECONDARY_ROLE,
    SUBSETTED,
    US_CORE_PATIENT,
)
from src.services.fhir_search import GROUP_NAME_PREFIX

# --- JSON text in SQL ------------------------------------------------------------------
# Each helper returns an SQL expression whose value is JSON text (NULL: the element is
# absent, for an optional member).


def _text(text: str) -> str:
    """Text as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _literal(value: Any) -> str:
    """A constant's JSON, as an SQL string literal."""
    return _text(json.dumps(value, separators=(",", ":")))


def _string(sql: str) -> str:
    """Text that may need escaping (a name, an identifier), as a JSON string."""
    return f"to_json(({sql})::text)::text"


def _plain(sql: str) -> str:
    """A value whose text needs no escaping (a uuid, a number, an instant), as a JSON
    string."""
    return f"('\"' || ({sql}) || '\"')"


def _reference(kind: str, sql: str) -> str:
    return f"('{{\"reference\":\"{kind}/' || ({sql}) || '\"}}')"


def _instant(sql: str) -> str:
    """A timestamptz as fhir_resources._instant writes it: UTC, "Z", and microseconds
    only when there are any (Python's isoformat)."""
    utc = f"(({sql}) AT TIME ZONE 'UTC')"
    return _plain(
        f"to_char({utc}, CASE WHEN date_part('microseconds', {utc})::bigint % 1000000 = 0 "
        """THEN 'YYYY-MM-DD"T"HH24:MI:SS"Z"' ELSE 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"' END)"""
    )


def _object(*members: tuple[str, str] | tuple[str, str, bool]) -> str:
    """An object of (key, JSON text) members in this order; a member marked optional
    (a third item True) is left out when its value is NULL. The first is required. A
    required member that is NULL makes the whole object NULL (never a line that is not
    JSON: the export refuses it, src/api/bulk_export.py)."""
    parts = []
    for n, (key, value, *optional) in enumerate(members):
        head = _text(("{" if n == 0 else ",") + json.dumps(key) + ":")
        if optional and optional[0]:
            parts.append(f"coalesce({head} || {value}, '')")
        else:
            parts.append(f"{head} || {value}")
    return "(" + " || ".join([*parts, "'}'"]) + ")"


def _array(sql: str) -> str:
    """Comma-joined JSON texts (an aggregate's), as an array; NULL stays NULL."""
    return f"('[' || {sql} || ']')"


def _named(first: str, last: str) -> str:
    """Whether _name has a value: either part is non-empty."""
    return f"(nullif({last}, '') IS NOT NULL OR nullif({first}, '') IS NOT NULL)"


def _name(first: str, last: str) -> str:
    """fhir_resources._name: [{use, family?, given?}] when either is non-empty."""
    family, given = f"nullif({last}, '')", f"nullif({first}, '')"
    entry = _object(
        ("use", _literal("official")),
        ("family", _string(family), True),
        ("given", _array(_string(given)), True),
    )
    return f"(CASE WHEN {_named(first, last)} THEN '[' || {entry} || ']' END)"


def _among(column: str, population: str | None) -> str:
    """The condition that keeps a subquery to the export's population (a Group-level
    export's members: src/api/bulk_export.py), so that it reads those patients' rows
    through their indexes and not the organization's; none for the whole organization."""
    return "" if population is None else f" AND {column} IN {population}"


def _last_change(record_type: str, population: str | None = None) -> str:
    """Each record's latest change (record_changes: one pass in record id order)."""
    return (
        "(SELECT DISTINCT ON (r.record_id) r.record_id, r.changed_at FROM record_changes AS r "
        f"WHERE r.organization_id = $1 AND r.record_type = '{record_type}'"
        f"{_among('r.record_id', population)} ORDER BY r.record_id, r.seq DESC)"
    )


def _last_event(population: str | None) -> str:
    """Each patient's latest care team event (its number is the team's version)."""
    return (
        "(SELECT DISTINCT ON (x.patient_id) x.patient_id, x.seq, x.occurred_at "
        f"FROM care_team_events AS x WHERE x.organization_id = $1"
        f"{_among('x.patient_id', population)} ORDER BY x.patient_id, x.seq DESC)"
    )


def _npi(table: str) -> str:
    """The NPI as the only identifier, when there is one."""
    entry = _object(("system", _literal(NPI_SYSTEM)), ("value", _string(f"{table}.npi")))
    return f"(CASE WHEN {table}.npi <> '' THEN {_array(entry)} END)"


@dataclass(frozen=True)
class Source:
    """One type's statement parts: FROM (its rows under the search's name for them,
    with what they are built of), when each changed (meta.lastUpdated), the resource."""

    rows: str
    updated: str
    resource: str


# The patients each type's lines name, for the access log, as the builders below write
# them: a Patient's id (the member after resourceType), a CareTeam's subject, a Group
# member's entity. Nothing else matches (a quote inside a JSON string is escaped), and
# each pattern starts with text to look for (a scan of a block's bytes, not a try at
# each of them: 20 times faster).
NAMED_PATIENTS = {
    "Patient": re.compile(rb'\{"resourceType":"Patient","id":"([0-9a-f-]{36})"'),
    "CareTeam": re.compile(rb'"subject":\{"reference":"Patient/([0-9a-f-]{36})"'),
    "Group": re.compile(rb'"entity":\{"reference":"Patient/([0-9a-f-]{36})"'),
}


# --- Patient (fhir_resources.patient_resource) ------------------------------------------

_IDENTIFIER = _object(("system", _string("i.system")), ("value", _string("i.value")))
_PATIENT_NAME = _name("patients.first_name", "patients.last_name")
_PATIENT_UPDATED = "greatest(coalesce(changed.changed_at, patients.created_at), event.occurred_at)"
_PATIENT = _object(
    ("resourceType", _literal("Patient")),
    ("id", _plain("patients.id")),
    (
        "meta",
        _object(
            ("versionId", _plain("patients.version || '.' || coalesce(event.seq, 0)")),
            ("lastUpdated", _instant(_PATIENT_UPDATED)),
            (
                "profile",
                # The name's condition, not the name (built once, for `name`).
                "(CASE WHEN ids.list IS NOT NULL AND "
                f"{_named('patients.first_name', 'patients.last_name')} "
                f"THEN {_literal([US_CORE_PATIENT])} END)",
                True,
            ),
        ),
    ),
    ("identifier", _array("ids.list"), True),
    ("name", _PATIENT_NAME, True),
    ("gender", _string("patients.gender")),
    ("birthDate", _plain("to_char(patients.dob, 'YYYY-MM-DD')"), True),
    ("generalPractitioner", _array(_reference("Practitioner", "a.provider_id")), True),
    ("managingOrganization", _reference("Organization", "patients.organization_id")),
)


def patient_source(population: str | None = None) -> Source:
    """Patients; `population`: the subquery of a Group-level export's patients (None: the
    organization's)."""
    identifiers = (
        f"(SELECT i.patient_id, string_agg({_IDENTIFIER}, ',' ORDER BY i.system, i.value) "
        "AS list FROM patient_identifiers AS i WHERE i.organization_id = $1"
        f"{_among('i.patient_id', population)} GROUP BY i.patient_id)"
    )
    return Source(
        rows=(
            f"patients LEFT JOIN {_last_change('patient', population)} AS changed "
            "ON changed.record_id = patients.id "
            f"LEFT JOIN {_last_event(population)} AS event ON event.patient_id = patients.id "
            "LEFT JOIN care_team_assignments AS a ON a.organization_id = $1 "
            "AND a.patient_id = patients.id AND a.is_primary_provider "
            f"LEFT JOIN {identifiers} AS ids ON ids.patient_id = patients.id"
        ),
        updated=_PATIENT_UPDATED,
        resource=_PATIENT,
    )


# --- Practitioner (fhir_resources.practitioner_resource) --------------------------------

_PROVIDER_UPDATED = "coalesce(changed.changed_at, providers.created_at)"
PRACTITIONER = Source(
    rows=(
        f"providers LEFT JOIN {_last_change('provider')} AS changed "
        "ON changed.record_id = providers.id"
    ),
    updated=_PROVIDER_UPDATED,
    resource=_object(
        ("resourceType", _literal("Practitioner")),
        ("id", _plain("providers.id")),
        (
            "meta",
            _object(
                ("versionId", _plain("providers.version")),
                ("lastUpdated", _instant(_PROVIDER_UPDATED)),
            ),
        ),
        (
            "identifier",
            _npi("providers"),
            True,
        ),
        ("active", "(CASE WHEN providers.active THEN 'true' ELSE 'false' END)"),
        ("name", _name("providers.first_name", "providers.last_name"), True),
    ),
)

# --- CareTeam (fhir_resources.care_team_resource) ---------------------------------------


def _period(start: str, end: str) -> str:
    return _object(("start", _instant(start)), ("end", _instant(end), True))


def _role(coding: dict[str, str]) -> str:
    return _literal([{"coding": [coding], "text": coding["display"]}])


_PARTICIPANT = _object(
    (
        "role",
        f"(CASE WHEN q.role = 'primary' THEN {_role(PRIMARY_ROLE)} "
        f"ELSE {_role(SECONDARY_ROLE)} END)",
    ),
    ("member", _reference("Practitioner", "q.provider_id")),
    ("period", _period("lower(q.valid)", "upper(q.valid)")),
)
_CARE_TEAM = _object(
    ("resourceType", _literal("CareTeam")),
    ("id", _plain("teams.id")),
    (
        "meta",
        _object(
            ("versionId", _plain("teams.version")),
            ("lastUpdated", _instant("teams.updated_at")),
        ),
    ),
    ("status", "(CASE WHEN teams.active THEN '\"active\"' ELSE '\"inactive\"' END)"),
    ("name", _literal("Care team")),
    ("subject", _reference("Patient", "teams.id")),
    ("period", _period("teams.start", "teams.end_")),
    ("participant", _array("teams.participants")),
    ("managingOrganization", _array(_reference("Organization", "$1"))),
)


def care_team_source(population: str | None = None) -> Source:
    """CareTeams: fhir_search.TEAMS's columns, from one pass over the periods grouped by
    patient; `population` as patient_source's."""
    teams = f"""(
    SELECT s.id, s.start, s.end_, s.active, coalesce(event.seq, 0) AS version,
           coalesce(event.occurred_at, greatest(s.last_start, s.last_end)) AS updated_at,
           s.participants
    FROM (
        SELECT q.patient_id AS id, min(lower(q.valid)) AS start,
               CASE WHEN bool_or(upper_inf(q.valid)) THEN NULL ELSE max(upper(q.valid)) END
                   AS end_,
               bool_or(upper_inf(q.valid)) AS active,
               max(lower(q.valid)) AS last_start, max(upper(q.valid)) AS last_end,
               string_agg({_PARTICIPANT}, ',' ORDER BY lower(q.valid), q.provider_id)
                   AS participants
        FROM care_team_periods AS q
        WHERE q.organization_id = $1{_among("q.patient_id", population)}
        GROUP BY q.patient_id
    ) AS s
    LEFT JOIN {_last_event(population)} AS event ON event.patient_id = s.id
) AS teams"""
    return Source(
        rows=teams,
        updated="teams.updated_at",
        resource=_CARE_TEAM,
    )


# --- Group (fhir_resources.group_resource) ----------------------------------------------

_MEMBER = _object(
    ("entity", _reference("Patient", "q.patient_id")),
    ("period", _period("lower(q.valid)", "upper(q.valid)")),
    ("inactive", "(CASE WHEN upper_inf(q.valid) THEN 'false' ELSE 'true' END)"),
)


# A Group's member, in a Group-level export with _since: its patient's attribution to the
# provider changed in the window (a care team event on that patient naming the provider,
# as the Group's version counts them: a period opened, ended or changed).
_MEMBER_CHANGED = (
    "EXISTS (SELECT 1 FROM care_team_events AS x WHERE x.organization_id = $1 "
    "AND x.patient_id = q.patient_id AND (x.provider_id = q.provider_id "
    "OR x.previous_primary_provider_id = q.provider_id) "
    "AND x.occurred_at > {since} AND x.occurred_at <= {until})"
)


def _groups(changed: tuple[str, str] | None) -> str:
    """fhir_search.GROUPS's columns, from one pass over the primary periods grouped by
    provider, and one over those patients' events. `changed`: (since, until), the
    placeholders of a window that keeps only the members changed in it (a Group-level
    export's _since, up to its transaction time); None: every member."""
    kept = ""
    if changed is not None:
        since, until = changed
        kept = f" FILTER (WHERE {_MEMBER_CHANGED.format(since=since, until=until)})"
    return f"""(
    SELECT providers.id, providers.npi, providers.version AS record_version,
           '{GROUP_NAME_PREFIX}' || coalesce(
               nullif(concat_ws(' ', providers.first_name, providers.last_name), ''),
               'Practitioner/' || providers.id) AS name,
           coalesce(panel.quantity, 0) AS quantity, panel.members,
           coalesce(event.seq, 0) AS team_version,
           greatest(coalesce(changed.changed_at, providers.created_at), event.occurred_at)
               AS updated_at
    FROM providers
    LEFT JOIN {_last_change("provider")} AS changed ON changed.record_id = providers.id
    LEFT JOIN (
        SELECT q.provider_id, count(*) FILTER (WHERE upper_inf(q.valid)) AS quantity,
               string_agg({_MEMBER}, ',' ORDER BY lower(q.valid), q.patient_id){kept}
                   AS members
        FROM care_team_periods AS q WHERE q.organization_id = $1 AND q.role = 'primary'
        GROUP BY q.provider_id
    ) AS panel ON panel.provider_id = providers.id
    LEFT JOIN (
        SELECT DISTINCT ON (m.provider_id) m.provider_id, x.seq, x.occurred_at
        FROM (SELECT DISTINCT q.provider_id, q.patient_id FROM care_team_periods AS q
              WHERE q.organization_id = $1 AND q.role = 'primary') AS m
        JOIN care_team_events AS x ON x.organization_id = $1 AND x.patient_id = m.patient_id
             AND (x.provider_id = m.provider_id OR x.previous_primary_provider_id = m.provider_id)
        ORDER BY m.provider_id, x.seq DESC
    ) AS event ON event.provider_id = providers.id
    WHERE providers.organization_id = $1 AND providers.active
) AS groups"""


def group_source(changed: tuple[str, str] | None) -> Source:
    """A Group; with `changed`, only the members changed in that window (see _groups),
    and marked SUBSETTED as fhir_resources.shaped marks a resource that is not
    whole: a client merges it, rather than replacing its copy and losing the others."""
    meta = [
        ("versionId", _plain("groups.record_version || '.' || groups.team_version")),
        ("lastUpdated", _instant("groups.updated_at")),
    ]
    if changed is not None:
        meta.append(("tag", _literal([SUBSETTED])))
    return Source(
        rows=_groups(changed),
        updated="groups.updated_at",
        resource=_object(
            ("resourceType", _literal("Group")),
            ("id", _plain("groups.id")),
            ("meta", _object(*meta)),
            (
                "identifier",
                _npi("groups"),
                True,
            ),
            ("active", _literal(True)),
            ("type", _literal("person")),
            ("actual", _literal(True)),
            ("name", _string("groups.name")),
            ("quantity", "groups.quantity::text"),
            ("managingEntity", _reference("Practitioner", "groups.id")),
            ("member", _array("groups.members"), True),
        ),
    )


# --- Organization (fhir_resources.organization_resource) --------------------------------

ORGANIZATION = Source(
    rows="organizations",
    updated="organizations.created_at",
    resource=_object(
        ("resourceType", _literal("Organization")),
        ("id", _plain("organizations.id")),
        (
            "meta",
            _object(
                ("versionId", _literal("1")),
                ("lastUpdated", _instant("organizations.created_at")),
            ),
        ),
        ("active", _literal(True)),
        ("name", _string("organizations.name")),
    ),
)


def source_of(
    kind: str, *, population: str | None = None, changed: tuple[str, str] | None = None
) -> Source:
    """`kind`'s statement parts; `population`: see patient_source; `changed`: see
    group_source."""
    if kind == "Patient":
        return patient_source(population)
    if kind == "CareTeam":
        return care_team_source(population)
    if kind == "Group":
        return group_source(changed)
    return {"Organization": ORGANIZATION, "Practitioner": PRACTITIONER}[kind]
