"""FHIR R4 search as SQL: the search parameters each resource type declares, what each
one means (FHIR R4's search page, section by section), and the statement a search
becomes. src/api/fhir_query.py reads a query string into a `Search`; this module runs
it, under the organization's row-level security like every other read.

Every parameter, modifier and prefix here means what the specification says:

- Values of one parameter separated by commas are an OR; a parameter given twice is an
  AND ("Combining values", 3.1.1.1.5).
- Dates (3.1.1.4.5): a search value is the range its precision covers (a year, a month,
  a day, a minute, a second...), and a target is a range too (a Period, a date's day, an
  instant). `eq` means the search range contains the target, `ne` that it does not,
  `gt`/`lt` that the target reaches above/below it, `ge`/`le` either of those or `eq`,
  `sa`/`eb` that the target starts after/ends before it, `ap` that they overlap once the
  search range is widened by a tenth of its distance from now (at least a day). A
  resource without a value never matches a date; `:missing` finds those.
- Tokens (3.1.1.4.10): `code` in any system, `system|code`, `|code` with no system,
  `system|` any code of the system. `:not` is every resource without a matching value.
- Strings (3.1.1.4.13): the start of a value, ignoring case and accents; `:exact` the
  whole value as written; `:contains` anywhere in it, ignoring case and accents.
- References (3.1.1.4.11): `id`, `Type/id` or the absolute URL of one of ours; `:Type`
  names the type. An id that is not one of ours (or a type we do not hold) matches
  nothing.
- `:missing=true|false` on every parameter: the resources without (with) a value.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.models import RecordType
from src.services.access_log_service import ENTRY_COLUMNS, HORIZON, AccessRecord
from src.services.care_team_service import CareTeamPeriodRecord
from src.services.directory_service import (
    PATIENT_COLUMNS,
    PROVIDER_COLUMNS,
    DirectoryService,
    PatientRecord,
    ProviderRecord,
    patient_of_row,
    provider_of_row,
    updated_at_of,
)
from src.services.transaction import run_statement, run_transaction

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
CARE_TEAM_STATUS_SYSTEM = "http://hl7.org/fhir/care-team-status"
GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
SPECIAL_VALUES = "http://hl7.org/fhir/special-values"  # true and false (a boolean's tokens)
SEARCH_PARAMETER = "http://hl7.org/fhir/SearchParameter/"
# The most resources one search may return with its matches (_include, _revinclude):
# more is refused, never cut short.
MAX_INCLUDED = 1000


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A token value: `system` None is any system, "" no system; `code` None any code."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class DateRange:
    """A date search value: its prefix and the instants its precision covers,
    [start, end)."""

    prefix: str
    start: datetime.datetime
    end: datetime.datetime


@dataclass(frozen=True)
class Ref:
    """A reference value: the type named (by `Type/id` or `:Type`; None: the parameter's
    own) and the id as written."""

    kind: str | None
    id: str


@dataclass(frozen=True)
class Clause:
    """One parameter as given: its values (an OR) under one modifier ("" for none; a
    resource type for a reference's type modifier). `:missing` has one bool value."""

    param: Param
    modifier: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Sort:
    param: Param
    descending: bool


@dataclass
class Binder:
    """The statement's arguments: `bind` adds one and gives its placeholder."""

    args: list[Any] = field(default_factory=list)

    def __call__(self, value: Any, cast: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{cast}"


# --- parameters ----------------------------------------------------------------------------

Compile = Callable[[Clause, Binder], str]


@dataclass(frozen=True)
class Param:
    """A search parameter a resource type declares: its FHIR type, the definition it
    implements, the SQL that decides a clause (`compile`), the SQL that says whether a
    resource has a value (`present`), and (for `_sort`) its sort key."""

    name: str
    type: str  # token, string, reference, date
    definition: str
    documentation: str
    compile: Compile
    present: str = "TRUE"
    sort_key: str | None = None
    # A reference's target types the specification allows, and the one we hold.
    targets: tuple[str, ...] = ()
    holds: str = ""
    # A token's codes (None: any), for a clear 400 on a code its value set lacks.
    codes: frozenset[str] | None = None


def _or(parts: list[str]) -> str:
    return "(" + " OR ".join(parts) + ")" if parts else "FALSE"


def ids_of(clause: Clause) -> list[uuid.UUID]:
    """The ids of ours an `_id` clause (tokens) or a reference clause names: an id that
    is not ours, a token with a system, or a reference to another type names none."""
    ids = []
    for value in clause.values:
        if isinstance(value, Token):
            text, fits = value.code, value.system is None
        else:
            text = value.id
            fits = (clause.modifier or value.kind or clause.param.holds) == clause.param.holds
        if fits and text is not None and _is_ours(text):
            ids.append(uuid.UUID(text))
    return ids


def _ids(clause: Clause, bind: Binder, column: str) -> str:
    """`column` among the clause's ids."""
    return f"{column} = ANY({bind(ids_of(clause), 'uuid[]')})"


def _is_ours(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def id_param(column: str) -> Param:
    return Param(
        "_id",
        "token",
        SEARCH_PARAMETER + "Resource-id",
        "The resource's id",
        lambda clause, bind: _ids(clause, bind, column),
        sort_key=column,
    )


def _codes(column: str, system: str) -> Compile:
    """A token whose codes all belong to `system` (a status, a boolean, a gender)."""

    def compile_(clause: Clause, bind: Binder) -> str:
        codes: list[str] = []
        anything = False
        for token in clause.values:
            if token.system not in (None, system):  # "" (no system) included: none
                continue
            if token.code is None:
                anything = True
            else:
                codes.append(token.code)
        if anything:
            return f"{column} IS NOT NULL"
        return f"{column} = ANY({bind(codes, 'text[]')})"

    return compile_


def token_param(
    name: str,
    definition: str,
    doc: str,
    column: str,
    *,
    system: str,
    codes: frozenset[str] | None,
) -> Param:
    return Param(
        name,
        "token",
        definition,
        doc,
        _codes(column, system),
        present=f"{column} IS NOT NULL",
        codes=codes,
    )


def _identifiers(holding: Callable[[str], str]) -> Compile:
    """Identifier tokens; `holding(condition)` is the SQL that some identifier of the
    resource meets `condition` (on columns `system` and `value`)."""

    def compile_(clause: Clause, bind: Binder) -> str:
        parts = []
        for token in clause.values:
            conditions = []
            if token.system == "":
                conditions.append("system IS NULL")
            elif token.system is not None:
                conditions.append(f"system = {bind(token.system, 'text')}")
            if token.code is not None:
                conditions.append(f"value = {bind(token.code, 'text')}")
            parts.append(" AND ".join(conditions) or "TRUE")
        return holding(_or(parts))

    return compile_


# The combining diacritical marks (Unicode's blocks of them) that string searches ignore:
# a name is decomposed (NFD) and these are dropped, so that "nunez" finds "Núñez".
# fhir_query.fold treats a search's value alike.
COMBINING_MARKS = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF),
                   (0xFE20, 0xFE2F))  # fmt: skip
_MARKS = "[" + "".join(f"\\u{a:04X}-\\u{b:04X}" for a, b in COMBINING_MARKS) + "]"


def is_mark(char: str) -> bool:
    return any(a <= ord(char) <= b for a, b in COMBINING_MARKS)


def _normalized(column: str) -> str:
    """A name as string searches compare it: decomposed, without its combining marks,
    in lower case."""
    return f"lower(regexp_replace(normalize({column}, NFD), '{_MARKS}', '', 'g'))"


def _strings(columns: tuple[str, ...]) -> Compile:
    """String values against any of `columns`: the start (default), the whole as
    written (:exact), anywhere (:contains). src/api/fhir_query.py gives the values
    already folded (fold_text) unless :exact."""

    def compile_(clause: Clause, bind: Binder) -> str:
        parts = []
        for value in clause.values:
            for column in columns:
                if clause.modifier == "exact":
                    parts.append(f"{column} = {bind(value, 'text')}")
                else:
                    pattern = _like_escaped(value) + "%"
                    if clause.modifier == "contains":
                        pattern = "%" + pattern
                    parts.append(f"{_normalized(column)} LIKE {bind(pattern, 'text')}")
        return _or(parts)

    return compile_


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def string_param(name: str, definition: str, doc: str, *columns: str) -> Param:
    return Param(
        name,
        "string",
        definition,
        doc,
        _strings(columns),
        present=_or([f"{c} IS NOT NULL" for c in columns]),
        sort_key=f"lower({columns[0]})" if len(columns) == 1 else None,
    )


def _references(holding: Callable[[str], str]) -> Compile:
    """Reference values: `holding(ids)` is the SQL that the resource refers to one of
    the uuid[] placeholder `ids`."""

    def compile_(clause: Clause, bind: Binder) -> str:
        return holding(bind(ids_of(clause), "uuid[]"))

    return compile_


def reference_param(
    name: str,
    definition: str,
    doc: str,
    holding: Callable[[str], str],
    *,
    targets: tuple[str, ...],
    holds: str,
    present: str,
) -> Param:
    return Param(
        name,
        "reference",
        definition,
        doc,
        _references(holding),
        present=present,
        targets=targets,
        holds=holds,
    )


def _dates(lower: str, upper: str) -> Compile:
    """Date values against the target range [lower, upper) (upper NULL: open, to
    infinity); a resource whose `lower` is NULL has no value and never matches."""
    hi = f"coalesce({upper}, 'infinity')"

    def compile_(clause: Clause, bind: Binder) -> str:
        parts = []
        for value in clause.values:
            start, end = value.start, value.end
            if value.prefix == "ap":
                start, end = approximately(value)
            prefix = value.prefix
            # Only what the prefix compares is bound (an unused argument has no type).
            s = bind(start, "timestamptz") if prefix not in ("gt", "sa") else ""
            e = bind(end, "timestamptz") if prefix not in ("lt", "eb") else ""
            inside = f"({lower} >= {s} AND {hi} <= {e})"
            parts.append(
                {
                    "eq": inside,
                    "ne": f"NOT {inside}",
                    "gt": f"{hi} > {e}",
                    "lt": f"{lower} < {s}",
                    "ge": f"({hi} > {e} OR {inside})",
                    "le": f"({lower} < {s} OR {inside})",
                    "sa": f"{lower} >= {e}",
                    "eb": f"{hi} <= {s}",
                    "ap": f"({lower} < {e} AND {hi} > {s})",
                }[prefix]
            )
        return f"({lower} IS NOT NULL AND {_or(parts)})"

    return compile_


def approximately(value: DateRange) -> tuple[datetime.datetime, datetime.datetime]:
    """`ap`: the search range widened on each side by a tenth of the time between now
    and it, and by at least a day (the specification leaves the amount to the server),
    within the calendar (years 1 to 9999)."""
    now = datetime.datetime.now(datetime.UTC)
    gap = max(abs(now - value.start), abs(now - value.end)) / 10
    widen = max(gap, datetime.timedelta(days=1))
    first = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    last = datetime.datetime.max.replace(tzinfo=datetime.UTC)
    start = first if value.start - first < widen else value.start - widen
    end = last if last - value.end < widen else value.end + widen
    return start, end


def date_param(name: str, definition: str, doc: str, lower: str, upper: str) -> Param:
    return Param(
        name,
        "date",
        definition,
        doc,
        _dates(lower, upper),
        present=f"{lower} IS NOT NULL",
        sort_key=lower,
    )


# --- the resource types --------------------------------------------------------------------

_BIRTH = "(patients.dob::timestamp AT TIME ZONE 'UTC')"


def _patient_identifier(condition: str) -> str:
    return (
        "EXISTS (SELECT 1 FROM patient_identifiers AS i WHERE i.organization_id = "
        f"patients.organization_id AND i.patient_id = patients.id AND {condition})"
    )


def _npi_of(table: str) -> Callable[[str], str]:
    """The NPI of `table`'s row (a provider, or its Group) as an identifier: its system
    is NPI_SYSTEM (a constant, not a column)."""

    def holding(condition: str) -> str:
        return (
            f"EXISTS (SELECT 1 FROM (SELECT '{NPI_SYSTEM}'::text AS system, {table}.npi AS "
            f"value) AS i WHERE i.value IS NOT NULL AND {condition})"
        )

    return holding


def _primary_among(ids: str) -> str:
    return (
        "EXISTS (SELECT 1 FROM care_team_assignments AS a WHERE a.organization_id = "
        "patients.organization_id AND a.patient_id = patients.id AND a.is_primary_provider "
        f"AND a.provider_id = ANY({ids}))"
    )


_HAS_PRIMARY = _primary_among("ARRAY[a.provider_id]")


def _member_among(ids: str) -> str:
    return (
        "EXISTS (SELECT 1 FROM care_team_periods AS m WHERE m.organization_id = $1 "
        f"AND m.patient_id = teams.id AND m.provider_id = ANY({ids}))"
    )


def _last_team_event(column: str) -> str:
    """The patient's latest care team event's `column` (NULL: none)."""
    return (
        f"(SELECT x.{column} FROM care_team_events AS x WHERE x.organization_id = "
        "patients.organization_id AND x.patient_id = patients.id ORDER BY x.seq DESC LIMIT 1)"
    )


# A Patient's content is its record and its primary provider (generalPractitioner): it
# changes when either does, so its version and time follow both (PatientView).
PATIENT_UPDATED = (
    f"greatest({updated_at_of('patients', RecordType.PATIENT)}, {_last_team_event('occurred_at')})"
)
PROVIDER_UPDATED = updated_at_of("providers", RecordType.PROVIDER)


def _last_updated(column: str) -> Param:
    return date_param(
        "_lastUpdated",
        SEARCH_PARAMETER + "Resource-lastUpdated",
        "When the resource last changed (meta.lastUpdated)",
        column,
        f"({column} + interval '1 microsecond')",
    )


def _names(kind: str) -> list[Param]:
    individual = SEARCH_PARAMETER + "individual-"
    return [
        string_param(
            "name",
            SEARCH_PARAMETER + f"{kind}-name",
            "The start of the family or given name, ignoring case and accents",
            f"{kind.lower()}s.last_name" if kind == "Patient" else "providers.last_name",
            f"{kind.lower()}s.first_name" if kind == "Patient" else "providers.first_name",
        ),
        string_param(
            "family",
            individual + "family",
            "The start of the family name, ignoring case and accents",
            "patients.last_name" if kind == "Patient" else "providers.last_name",
        ),
        string_param(
            "given",
            individual + "given",
            "The start of the given name, ignoring case and accents",
            "patients.first_name" if kind == "Patient" else "providers.first_name",
        ),
    ]


PATIENT = [
    id_param("patients.id"),
    Param(
        "identifier",
        "token",
        SEARCH_PARAMETER + "Patient-identifier",
        "system|value, value, |value (no system) or system|",
        _identifiers(_patient_identifier),
        present=_patient_identifier("TRUE"),
    ),
    *_names("Patient"),
    date_param(
        "birthdate",
        SEARCH_PARAMETER + "individual-birthdate",
        "The day of birth, with any prefix and precision",
        _BIRTH,
        f"({_BIRTH} + interval '1 day')",
    ),
    token_param(
        "gender",
        SEARCH_PARAMETER + "individual-gender",
        "male, female, other or unknown",
        "patients.gender",
        system=GENDER_SYSTEM,
        codes=frozenset({"male", "female", "other", "unknown"}),
    ),
    reference_param(
        "general-practitioner",
        SEARCH_PARAMETER + "Patient-general-practitioner",
        "The current primary provider (Practitioner/{id})",
        _primary_among,
        targets=("Organization", "Practitioner", "PractitionerRole"),
        holds="Practitioner",
        present=_HAS_PRIMARY,
    ),
    _last_updated(PATIENT_UPDATED),
]

PRACTITIONER = [
    id_param("providers.id"),
    Param(
        "identifier",
        "token",
        SEARCH_PARAMETER + "Practitioner-identifier",
        f"The NPI: {NPI_SYSTEM}|NPI, the NPI alone, or {NPI_SYSTEM}|",
        _identifiers(_npi_of("providers")),
        present="providers.npi IS NOT NULL",
    ),
    *_names("Practitioner"),
    token_param(
        "active",
        SEARCH_PARAMETER + "Practitioner-active",
        "true or false",
        "(CASE WHEN providers.active THEN 'true' ELSE 'false' END)",
        system=SPECIAL_VALUES,
        codes=frozenset({"true", "false"}),
    ),
    _last_updated(PROVIDER_UPDATED),
]

_TEAM_PATIENT = ("Patient",)
CARE_TEAM = [
    id_param("teams.id"),
    reference_param(
        "patient",
        SEARCH_PARAMETER + "clinical-patient",
        "The patient (Patient/{id}, or the id)",
        lambda ids: f"teams.id = ANY({ids})",
        targets=_TEAM_PATIENT,
        holds="Patient",
        present="TRUE",
    ),
    reference_param(
        "subject",
        SEARCH_PARAMETER + "CareTeam-subject",
        "The patient (Patient/{id}); CareTeams here are patients'",
        lambda ids: f"teams.id = ANY({ids})",
        targets=("Group", "Patient"),
        holds="Patient",
        present="TRUE",
    ),
    token_param(
        "status",
        SEARCH_PARAMETER + "CareTeam-status",
        "active (a period still open) or inactive (every period ended)",
        "(CASE WHEN teams.active THEN 'active' ELSE 'inactive' END)",
        system=CARE_TEAM_STATUS_SYSTEM,
        codes=frozenset({"proposed", "active", "suspended", "inactive", "entered-in-error"}),
    ),
    reference_param(
        "participant",
        SEARCH_PARAMETER + "CareTeam-participant",
        "A practitioner that is or was on the team (Practitioner/{id})",
        _member_among,
        targets=(
            "CareTeam",
            "Organization",
            "Patient",
            "Practitioner",
            "PractitionerRole",
            "RelatedPerson",
        ),
        holds="Practitioner",
        present="TRUE",
    ),
    date_param(
        "date",
        SEARCH_PARAMETER + "clinical-date",
        "CareTeam.period: from the first period's start to the last one's end (open "
        "while a period is), with any prefix and precision",
        "teams.start",
        "teams.end_",
    ),
    _last_updated("teams.updated_at"),
]

# A provider's attributed panel (Da Vinci ATR's Member Attribution List, docs/FHIR.md,
# "Group"): one Group per active provider, its id the provider's.
GROUP = [
    id_param("groups.id"),
    Param(
        "identifier",
        "token",
        SEARCH_PARAMETER + "Group-identifier",
        f"The provider's NPI: {NPI_SYSTEM}|NPI, the NPI alone, or {NPI_SYSTEM}|",
        _identifiers(_npi_of("groups")),
        present="groups.npi IS NOT NULL",
    ),
    # R4 declares no name parameter on Group; this is R5's (Group.name), as a string.
    string_param(
        "name",
        SEARCH_PARAMETER + "Group-name",
        "The start of the Group's name (Attributed patients of <given> <family>), "
        "ignoring case and accents; :contains finds the provider's name within it",
        "groups.name",
    ),
    _last_updated("groups.updated_at"),
]

AUDIT_EVENT_ACTION_SYSTEM = "http://hl7.org/fhir/audit-event-action"
AUDIT_EVENT_OUTCOME_SYSTEM = "http://hl7.org/fhir/audit-event-outcome"
RESTFUL_INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
# AuditEvent.outcome from the status answered: 0 success, 4 minor failure (the request
# was refused: 4xx), 8 serious failure (the server could not answer: 5xx).
AUDIT_OUTCOME = (
    "(CASE WHEN access_log.status < 400 THEN '0' WHEN access_log.status < 500 THEN '4' "
    "ELSE '8' END)"
)


def _entry_names_patient(ids: str) -> str:
    """The entry names one of the patients: by access_log_patients' primary key (a
    btree on plain columns, which row-level security lets PostgreSQL use)."""
    return (
        "EXISTS (SELECT 1 FROM access_log_patients AS ap WHERE ap.organization_id = $1 "
        f"AND ap.patient_id = ANY({ids}) AND ap.recorded_at = access_log.recorded_at "
        "AND ap.entry_id = access_log.id)"
    )


# The access log (src/services/access_log_service.py) as AuditEvent: one entry each.
AUDIT_EVENT = [
    id_param("access_log.id"),
    date_param(
        "date",
        SEARCH_PARAMETER + "AuditEvent-date",
        "When the request was recorded (AuditEvent.recorded), with any prefix and precision",
        "access_log.recorded_at",
        "(access_log.recorded_at + interval '1 microsecond')",
    ),
    reference_param(
        "patient",
        SEARCH_PARAMETER + "AuditEvent-patient",
        "A patient the request named (Patient/{id}, or the id)",
        _entry_names_patient,
        targets=("Patient",),
        holds="Patient",
        present="cardinality(access_log.patient_ids) > 0",
    ),
    reference_param(
        "agent",
        SEARCH_PARAMETER + "AuditEvent-agent",
        "Who asked: the API key's or SMART client's id (or Device/{id}: a credential is a "
        "device, named by identifier)",
        lambda ids: f"(access_log.api_key_id = ANY({ids}) OR access_log.client_id = ANY({ids}))",
        targets=(
            "Device",
            "Organization",
            "Patient",
            "Practitioner",
            "PractitionerRole",
            "RelatedPerson",
        ),
        holds="Device",
        present="TRUE",
    ),
    token_param(
        "action",
        SEARCH_PARAMETER + "AuditEvent-action",
        "C, R, U, D or E",
        "access_log.action",
        system=AUDIT_EVENT_ACTION_SYSTEM,
        codes=frozenset({"C", "R", "U", "D", "E"}),
    ),
    token_param(
        "outcome",
        SEARCH_PARAMETER + "AuditEvent-outcome",
        "0 (success), 4 (refused: a 4xx answer), 8 (failed: a 5xx answer)",
        AUDIT_OUTCOME,
        system=AUDIT_EVENT_OUTCOME_SYSTEM,
        codes=frozenset({"0", "4", "8", "12"}),
    ),
    token_param(
        "subtype",
        SEARCH_PARAMETER + "AuditEvent-subtype",
        "The FHIR restful interaction: read, vread, history-instance, search-type, create, update",
        "access_log.interaction",
        system=RESTFUL_INTERACTION_SYSTEM,
        codes=None,
    ),
    _last_updated("access_log.recorded_at"),
]

PARAMETERS: dict[str, dict[str, Param]] = {
    kind: {p.name: p for p in params}
    for kind, params in (
        ("CareTeam", CARE_TEAM),
        ("Patient", PATIENT),
        ("Practitioner", PRACTITIONER),
        ("AuditEvent", AUDIT_EVENT),
        ("Group", GROUP),
    )
}
# Types whose resources never change once written: a sorted search's pages need no
# check that nothing moved (the access log is append-only).
APPEND_ONLY = frozenset({"AuditEvent"})


# --- running a search ----------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """A search of one resource type: every clause holds (AND), in `sort` order (then
    by id), the page after `after` (the last resource's id, and for a sorted search its
    version key, which must not have changed), at most `limit` (0: none, the total
    only)."""

    kind: str
    clauses: tuple[Clause, ...] = ()
    sort: tuple[Sort, ...] = ()
    limit: int = 20
    after: tuple[uuid.UUID, int, int] | None = None
    total: bool = False
    # A sorted search's pages after the first: when the first was read (Page.since).
    since: datetime.datetime | None = None
    # A bulk export's population (src/services/bulk_export.py): ("patients", None), every
    # patient, so Practitioners only those their care teams name; ("group", provider), the
    # patients ever attributed to that provider (its Group's members), their care teams
    # and the Practitioners those name. None: the whole organization.
    within: tuple[str, uuid.UUID | None] | None = None

    @property
    def ordered(self) -> bool:
        """Whether it is sorted by anything but the id."""
        return any(s.param.name != "_id" for s in self.sort)

    @property
    def moves(self) -> bool:
        """Whether a resource's place in the order can change (a sort by anything but
        the id, which never changes, of a type whose resources change)."""
        return self.ordered and self.kind not in APPEND_ONLY


@dataclass(frozen=True)
class TeamRecord:
    """A patient's longitudinal care team: every period of it, oldest first; `start` and
    `end` its span (end None while a period is open); `version` the number of the
    patient's last care team event (the /v1 team ETag's first number), `updated_at` when
    it was written."""

    patient_id: uuid.UUID
    active: bool
    periods: list[CareTeamPeriodRecord]
    start: datetime.datetime
    end: datetime.datetime | None
    version: int
    updated_at: datetime.datetime

    @property
    def id(self) -> uuid.UUID:
        return self.patient_id

    @property
    def version_key(self) -> tuple[int, int]:
        return (self.version, 0)


@dataclass(frozen=True)
class PatientView:
    """A Patient as FHIR shows it: the record and its primary provider (its
    generalPractitioner). Either changing changes the resource, so its version is both
    numbers, "r.t": the record's version (the /v1 patient ETag's) and its care team's
    (the number of its last care team event, 0 for none: the /v1 team ETag's first
    number). `updated_at`: the later of the two changes."""

    record: PatientRecord
    primary: uuid.UUID | None
    team_version: int
    team_updated_at: datetime.datetime | None

    @property
    def id(self) -> uuid.UUID:
        return self.record.id

    @property
    def version(self) -> str:
        return f"{self.record.version}.{self.team_version}"

    @property
    def version_key(self) -> tuple[int, int]:
        return (self.record.version, self.team_version)

    @property
    def updated_at(self) -> datetime.datetime | None:
        times = [t for t in (self.record.updated_at, self.team_updated_at) if t is not None]
        return max(times) if times else None


@dataclass(frozen=True)
class PractitionerView:
    """A Practitioner: its record alone (its version is the record's, the /v1 ETag's)."""

    record: ProviderRecord

    @property
    def id(self) -> uuid.UUID:
        return self.record.id

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def version_key(self) -> tuple[int, int]:
        return (self.record.version, 0)

    @property
    def updated_at(self) -> datetime.datetime | None:
        return self.record.updated_at


@dataclass(frozen=True)
class GroupMember:
    """One primary period of the Group's provider: the patient it attributed, from
    `start` to `end` (None while it lasts). Secondary periods are not attribution."""

    patient_id: uuid.UUID
    start: datetime.datetime
    end: datetime.datetime | None

    @property
    def inactive(self) -> bool:
        """Whether the attribution has ended (Group.member.inactive)."""
        return self.end is not None


@dataclass(frozen=True)
class GroupRecord:
    """A provider's attributed panel as a FHIR Group (docs/FHIR.md, "Group"): its id the
    provider's, `name` as the Group shows it, the provider's NPI, `quantity` the patients
    whose primary period with the provider is open now, and `members` its primary
    periods (start, then patient id).

    Its content is the provider's record and its primary periods, so its version is
    "r.t" as a Patient's is: the record's version (the /v1 provider ETag's) and `t`, the
    number of the latest care team event that names the provider (as `provider_id` or
    `previous_primary_provider_id`) on a patient the provider has or had a primary
    period with (0 for none). Every write that opens or closes one of the provider's
    primary periods writes such an event, numbered above every earlier one.
    `updated_at`: the later of the record's change and that event."""

    provider_id: uuid.UUID
    name: str
    npi: str | None
    quantity: int
    members: tuple[GroupMember, ...]
    record_version: int
    team_version: int
    record_updated_at: datetime.datetime
    team_updated_at: datetime.datetime | None

    @property
    def id(self) -> uuid.UUID:
        return self.provider_id

    @property
    def version(self) -> str:
        return f"{self.record_version}.{self.team_version}"

    @property
    def version_key(self) -> tuple[int, int]:
        return (self.record_version, self.team_version)

    @property
    def updated_at(self) -> datetime.datetime:
        if self.team_updated_at is None:
            return self.record_updated_at
        return max(self.record_updated_at, self.team_updated_at)


Found = PatientView | PractitionerView | TeamRecord | GroupRecord


@dataclass(frozen=True)
class Page:
    found: list[Any]  # up to limit + 1: one more means a next page
    total: int | None
    since: datetime.datetime = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class CursorMoved(Exception):
    """A resource of a sorted search changed since its first page was read (the one the
    last page ended at, or any that matches): its place in the order may have moved, so
    the next page could skip or repeat it; start again."""


# When a sorted search's first page was read, for the check of its later pages: its
# transaction's start, or the start of the oldest write transaction still open then (a
# change carries its transaction's start, now(), and one begun before the first page but
# committed after it must count too). pg_stat_activity shows the application role its
# own sessions, which are the writers.
SINCE = """
    SELECT least(transaction_timestamp(), (
        SELECT min(xact_start) FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()))
"""


# The care teams: one per patient that has or had a period, with its span, state and
# version. Statements below select from it as `teams`.
# The care teams: one per patient that has or had a period, with its span, state and
# version. Statements below select from it as `teams`. Each team is built from its own
# periods and its own last event (lateral lookups by the patient's index), from the
# list of patients with a period: the planner inlines the CTE, so a condition on
# `teams.id` (an id, a patient, a participant, the keyset) picks the patients first, and
# a page of a search costs its own teams, not the organization's.
TEAMS = """
    WITH teams AS (
        SELECT ids.id, s.start, s.end_, s.active, coalesce(e.seq, 0) AS version,
               coalesce(e.at, greatest(s.last_start, s.last_end)) AS updated_at
        FROM (
            SELECT DISTINCT p.patient_id AS id FROM care_team_periods AS p
            WHERE p.organization_id = $1
        ) AS ids
        CROSS JOIN LATERAL (
            SELECT min(lower(q.valid)) AS start,
                   CASE WHEN bool_or(upper_inf(q.valid)) THEN NULL ELSE max(upper(q.valid)) END
                       AS end_,
                   bool_or(upper_inf(q.valid)) AS active,
                   max(lower(q.valid)) AS last_start, max(upper(q.valid)) AS last_end
            FROM care_team_periods AS q
            WHERE q.organization_id = $1 AND q.patient_id = ids.id
        ) AS s
        LEFT JOIN LATERAL (
            SELECT x.seq, x.occurred_at AS at FROM care_team_events AS x
            WHERE x.organization_id = $1 AND x.patient_id = ids.id
            ORDER BY x.seq DESC LIMIT 1
        ) AS e ON TRUE
    )
"""
# A team's periods, oldest first, in the same statement as the team (records: asyncpg
# reads each as a tuple of its fields, typed).
_PERIODS = (
    "ARRAY(SELECT ROW(q.provider_id, q.role, lower(q.valid), upper(q.valid), q.start_reason, "
    "q.end_reason) FROM care_team_periods AS q WHERE q.organization_id = $1 "
    "AND q.patient_id = teams.id ORDER BY lower(q.valid), q.provider_id) AS periods"
)
# The Groups: one per active provider of the organization (an inactive one has none),
# with its name, NPI, panel size and version (GroupRecord). Statements below select from
# it as `groups`; like `teams`, the planner inlines it, so a condition on `groups.id`
# picks the providers first. Each of a provider's lookups goes through the index
# (organization_id, provider_id, patient_id) of care_team_periods, and the version's
# event through each of those patients' (organization_id, patient_id, seq) of
# care_team_events, newest first: one probe per patient, never the organization's
# events.
GROUP_NAME_PREFIX = "Attributed patients of "
GROUPS = f"""
    WITH groups AS (
        SELECT providers.id, providers.npi, providers.version AS record_version,
               '{GROUP_NAME_PREFIX}' || coalesce(
                   nullif(concat_ws(' ', providers.first_name, providers.last_name), ''),
                   'Practitioner/' || providers.id) AS name,
               (SELECT count(*) FROM care_team_periods AS q
                WHERE q.organization_id = $1 AND q.provider_id = providers.id
                  AND q.role = 'primary' AND upper_inf(q.valid)) AS quantity,
               r.at AS record_updated_at, coalesce(e.seq, 0) AS team_version,
               e.at AS team_updated_at, greatest(r.at, e.at) AS updated_at
        FROM providers
        CROSS JOIN LATERAL (
            SELECT {updated_at_of("providers", RecordType.PROVIDER)} AS at
        ) AS r
        LEFT JOIN LATERAL (
            SELECT x.seq, x.at
            FROM (SELECT DISTINCT q.patient_id FROM care_team_periods AS q
                  WHERE q.organization_id = $1 AND q.provider_id = providers.id
                    AND q.role = 'primary') AS m
            CROSS JOIN LATERAL (
                SELECT x.seq, x.occurred_at AS at FROM care_team_events AS x
                WHERE x.organization_id = $1 AND x.patient_id = m.patient_id
                  AND (x.provider_id = providers.id
                       OR x.previous_primary_provider_id = providers.id)
                ORDER BY x.seq DESC LIMIT 1
            ) AS x
            ORDER BY x.seq DESC LIMIT 1
        ) AS e ON TRUE
        WHERE providers.organization_id = $1 AND providers.active
    )
"""


# A Group's members, in the same statement as the Group: its provider's primary periods,
# by start then patient id (records: asyncpg reads each as a tuple).
_GROUP_MEMBERS = (
    "ARRAY(SELECT ROW(q.patient_id, lower(q.valid), upper(q.valid)) "
    "FROM care_team_periods AS q WHERE q.organization_id = $1 "
    "AND q.provider_id = groups.id AND q.role = 'primary' "
    "ORDER BY lower(q.valid), q.patient_id) AS members"
)


# (PATIENT_COLUMNS reads the primary and the team's version already.)
_PATIENT_VIEW = f"{_last_team_event('occurred_at')} AS team_updated_at"
_FROM = {
    "Patient": (f"SELECT {PATIENT_COLUMNS}, {_PATIENT_VIEW} FROM patients", "patients"),
    "Practitioner": (f"SELECT {PROVIDER_COLUMNS} FROM providers", "providers"),
    "CareTeam": (TEAMS + f" SELECT teams.*, {_PERIODS} FROM teams", "teams"),
    "AuditEvent": (f"SELECT {ENTRY_COLUMNS} FROM access_log", "access_log"),
    "Group": (GROUPS + f" SELECT groups.*, {_GROUP_MEMBERS} FROM groups", "groups"),
}
# The tables that are a statement's own WITH (their rows are the organization's already).
_CTES = {"teams": TEAMS, "groups": GROUPS}


def _rows_of(table: str, what: str) -> str:
    """SELECT `what` FROM `table`, with its WITH when it is one of _CTES."""
    return f"{_CTES.get(table, '')} SELECT {what} FROM {table}"


# The patients of a provider's Group: ever its primary patients.
_MEMBERS = (
    "(SELECT m.patient_id FROM care_team_periods AS m WHERE m.organization_id = $1 "
    "AND m.provider_id = {provider} AND m.role = 'primary')"
)


def group_members(provider: str) -> str:
    """SQL: the patients of a provider's Group (`provider`: its placeholder or literal)."""
    return _MEMBERS.format(provider=provider)


def _within(search: Search, bind: Binder, table: str) -> str | None:
    """The condition of a bulk export's population (Search.within) on `table`."""
    if search.within is None:
        return None
    _, provider = search.within
    if table == "groups":  # a Group's export holds that Group
        return None if provider is None else f"groups.id = {bind(provider, 'uuid')}"
    if table not in ("providers", "patients", "teams"):
        return None
    # Bound only when used: an unused argument has no type (PostgreSQL refuses it).
    patients = None if provider is None else _MEMBERS.format(provider=bind(provider, "uuid"))
    if table == "providers":
        named = "SELECT q.provider_id FROM care_team_periods AS q WHERE q.organization_id = $1"
        if patients is not None:
            named += f" AND q.patient_id IN {patients}"
        return f"providers.id IN ({named})"
    return None if patients is None else f"{table}.id IN {patients}"


def _where(search: Search, bind: Binder, table: str) -> list[str]:
    conditions = [f"{table}.organization_id = $1"] if table not in _CTES else []
    within = _within(search, bind, table)
    if within is not None:
        conditions.append(within)
    if table == "access_log" and not any(c.param.name == "_id" for c in search.clauses):
        # An open-ended search of the log stops before the oldest open transaction, whose
        # entry could land behind a poller's `date=gt` or cursor once committed
        # (access_log_service.HORIZON); one naming ids finds them once committed.
        conditions.append(f"access_log.recorded_at < {HORIZON}")
    for clause in search.clauses:
        param = clause.param
        if clause.modifier == "missing":
            (missing,) = clause.values
            conditions.append(f"NOT ({param.present})" if missing else f"({param.present})")
        elif clause.modifier == "not":
            conditions.append(f"NOT coalesce({param.compile(clause, bind)}, FALSE)")
        else:
            conditions.append(param.compile(clause, bind))
    return conditions


def table_of(kind: str) -> str:
    """The table (or WITH) a search of `kind` reads, as its conditions name it."""
    return _FROM[kind][1]


def matching(searches: list[Search], bind: Binder) -> str:
    """SQL: the row of the searches' table (table_of their type) matches one of
    `searches` (ORed: a bulk export's _typeFilter queries), each with all its clauses and
    its population (Search.within); for statements of other shapes that read that table
    under the same name (a bulk export's, src/api/export_resources.py)."""
    table = table_of(searches[0].kind)
    return " OR ".join(
        "(" + (" AND ".join(_where(s, bind, table)) or "TRUE") + ")" for s in searches
    )


def _order(search: Search, table: str) -> tuple[list[str], list[tuple[str, bool]]]:
    """The ORDER BY terms and the keys (expression, descending) in order, id last."""
    keys = [
        (f"coalesce({s.param.sort_key}, {_LOWEST[s.param.type]})", s.descending)
        for s in search.sort
        if s.param.name != "_id"
    ]
    ids_descending = next((s.descending for s in search.sort if s.param.name == "_id"), False)
    keys.append((f"{table}.id", ids_descending))
    return [f"{k} {'DESC' if d else 'ASC'}" for k, d in keys], keys


# What a missing sort value sorts as: below every value.
_LOWEST = {"string": "''", "date": "'-infinity'::timestamptz", "token": "''"}


def _after(keys: list[tuple[str, bool]], table: str, bind: Binder, after: uuid.UUID) -> str:
    """Keyset: rows after the row `after` in the order of `keys` (its own values read
    from it, in the same statement)."""
    anchor = (
        f"(SELECT {', '.join(f'{k} AS k{n}' for n, (k, _) in enumerate(keys))} "
        f"FROM {table} WHERE {table}.id = {bind(after, 'uuid')})"
    )
    terms = []
    for n, (key, descending) in enumerate(keys):
        equal = [f"{k} = anchor.k{m}" for m, (k, _) in enumerate(keys[:n])]
        beyond = f"{key} {'<' if descending else '>'} anchor.k{n}"
        terms.append("(" + " AND ".join([*equal, beyond]) + ")")
    return f"EXISTS (SELECT 1 FROM {anchor} AS anchor WHERE {' OR '.join(terms)})"


# The CareTeams of patients named by id, in one statement that sets the tenant and checks
# the key itself (sql/functions/careteam_fhir_care_teams): a row per period.
TEAMS_BY_ID = "SELECT * FROM careteam_fhir_care_teams($1, $2, $3::uuid[])"
_BY_ID = ("_id", "patient", "subject")


def _teams_by_id(search: Search) -> list[uuid.UUID] | None:
    """The patients a CareTeam search names, when it is nothing more than that (one
    `_id`, `patient` or `subject` clause, no modifier but the type, no sort, no total,
    one page): it is then answered by TEAMS_BY_ID, in one round trip."""
    if search.kind != "CareTeam" or search.sort or search.total or search.after:
        return None
    if len(search.clauses) != 1:
        return None
    (clause,) = search.clauses
    if clause.param.name not in _BY_ID or clause.modifier not in ("", "Patient"):
        return None
    ids = sorted(set(ids_of(clause)))
    return ids if len(ids) <= search.limit else None


async def _run_teams_by_id(
    db: AsyncSession, organization_id: uuid.UUID, ids: list[uuid.UUID]
) -> Page:
    async def statement(driver: Any, key_hash: str | None) -> list[Any]:
        return list(await driver.fetch(TEAMS_BY_ID, organization_id, key_hash, ids))

    rows = await run_statement(
        db, operation="read_care_teams", statement=statement, organization_id=organization_id
    )
    teams: list[TeamRecord] = []
    for row in rows:
        if not teams or teams[-1].id != row["id"]:
            teams.append(
                TeamRecord(
                    row["id"],
                    row["active"],
                    [],
                    row["start"],
                    row["end_"],
                    row["version"],
                    row["updated_at"],
                )
            )
        teams[-1].periods.append(
            CareTeamPeriodRecord(
                row["provider_id"],
                row["role"],
                row["valid_from"],
                row["valid_to"],
                row["start_reason"],
                row["end_reason"],
            )
        )
    return Page(teams, None)


async def run_search(*, db: AsyncSession, organization_id: uuid.UUID, search: Search) -> Page:
    """The page of `search` (raises CursorMoved, see there), with its total if asked."""
    ids = _teams_by_id(search)
    if ids is not None:
        return await _run_teams_by_id(db, organization_id, ids)

    async def work(driver: Any) -> Page:
        return await search_page(driver, organization_id, search)

    return await run_transaction(
        db,
        operation=f"search_{search.kind.lower()}",
        organization_id=organization_id,
        work=work,
        read_only=True,
    )


async def search_page(driver: Any, organization_id: uuid.UUID, search: Search) -> Page:
    """The page of `search`, read on `driver` in the transaction it has open (the
    tenant set): run_search's statements, and a bulk export's pages in its snapshot."""
    select, table = _FROM[search.kind]
    order, keys = _order(search, table)
    bind = Binder([organization_id])
    conditions = _where(search, bind, table)
    where = " AND ".join(conditions) or "TRUE"
    total = None
    if search.total:
        count_from = _rows_of(table, "count(*)")
        total = int(await driver.fetchval(f"{count_from} WHERE {where}", *bind.args))
    if search.limit == 0:
        return Page([], total)
    page_conditions = list(conditions)
    since = search.since
    if search.moves and search.after is None:
        since = await driver.fetchval(SINCE)
    if search.after is not None:
        after_id, *version = search.after
        if search.moves:
            await _check_unmoved(driver, search, table, where, bind.args)
            # The resource the page ended at, read again: if it changed, its place
            # in a sorted order may have moved, so the cursor is refused rather
            # than read (a page after a moved anchor skips or repeats silently).
            own = "" if table in _CTES else f" AND {table}.organization_id = $1"
            rows = await driver.fetch(
                f"{select} WHERE {table}.id = $2{own}", organization_id, after_id
            )
            found = _records(search.kind, rows)
            if not found or list(found[0].version_key) != version:
                raise CursorMoved()
        if search.ordered:
            page_conditions.append(_after(keys, table, bind, after_id))
        else:
            page_conditions.append(f"{table}.id > {bind(after_id, 'uuid')}")
    statement = (
        f"{select} WHERE {' AND '.join(page_conditions) or 'TRUE'} "
        f"ORDER BY {', '.join(order)} LIMIT {bind(search.limit + 1, 'int')}"
    )
    rows = await driver.fetch(statement, *bind.args)
    found = _records(search.kind, rows)
    return Page(found, total) if since is None else Page(found, total, since)


async def _check_unmoved(
    driver: Any, search: Search, table: str, where: str, args: list[Any]
) -> None:
    """Before a later page of a sorted search: CursorMoved if any resource that matches
    it changed since its first page (its place may have moved behind the cursor)."""
    if search.since is None:
        raise CursorMoved()
    updated = PARAMETERS[search.kind]["_lastUpdated"].sort_key
    probe = [*args, search.since]
    source = _rows_of(table, "1")
    moved = await driver.fetchval(
        f"SELECT EXISTS ({source} WHERE {where} AND {updated} > ${len(probe)}::timestamptz)",
        *probe,
    )
    if moved:
        raise CursorMoved()


def by_ids(kind: str, ids: list[uuid.UUID] | set[uuid.UUID], limit: int = 1) -> Search:
    """The search for these resources by id."""
    clause = Clause(PARAMETERS[kind]["_id"], "", tuple(Token(None, str(i)) for i in ids))
    return Search(kind, (clause,), limit=limit)


def _patient_view(row: Any) -> PatientView:
    data = dict(row)
    team_updated_at = data.pop("team_updated_at")
    record = patient_of_row(data)
    return PatientView(record, record.primary_provider_id, record.team_version, team_updated_at)


def _records(kind: str, rows: list[Any]) -> list[Any]:
    if kind == "Patient":
        return [_patient_view(r) for r in rows]
    if kind == "Practitioner":
        return [PractitionerView(provider_of_row(r)) for r in rows]
    if kind == "AuditEvent":
        return [AccessRecord(**dict(r)) for r in rows]
    if kind == "Group":
        return [group_of_row(r) for r in rows]
    return [_team(r) for r in rows]


def group_of_row(row: Any) -> GroupRecord:
    """A row of `groups` with its `members` (group_members)."""
    return GroupRecord(
        provider_id=row["id"],
        name=row["name"],
        npi=row["npi"],
        quantity=row["quantity"],
        members=tuple(GroupMember(*fields) for fields in row["members"]),
        record_version=row["record_version"],
        team_version=row["team_version"],
        record_updated_at=row["record_updated_at"],
        team_updated_at=row["team_updated_at"],
    )


def _team(row: Any) -> TeamRecord:
    periods = [CareTeamPeriodRecord(*fields) for fields in row["periods"]]
    return TeamRecord(
        row["id"],
        row["active"],
        periods,
        row["start"],
        row["end_"],
        row["version"],
        row["updated_at"],
    )


@dataclass(frozen=True)
class OrganizationRecord:
    id: uuid.UUID
    name: str
    created_at: datetime.datetime

    @property
    def version(self) -> int:
        return 1  # an organization's name does not change here

    @property
    def updated_at(self) -> datetime.datetime:
        return self.created_at


async def find_organization(
    *, db: AsyncSession, organization_id: uuid.UUID
) -> OrganizationRecord | None:
    async def work(driver: Any) -> OrganizationRecord | None:
        row = await driver.fetchrow(
            "SELECT id, name, created_at FROM organizations WHERE id = $1", organization_id
        )
        return None if row is None else OrganizationRecord(**dict(row))

    return await run_transaction(
        db,
        operation="read_organization",
        organization_id=organization_id,
        work=work,
        read_only=True,
    )


# --- versions ------------------------------------------------------------------------------

# The most versions an instance history lists; a resource with more is refused (never
# cut short without saying so).
MAX_HISTORY = 500


@dataclass(frozen=True)
class VersionEntry:
    """One version of a resource: its id (meta.versionId), when it was written, and its
    content (None: not kept; see history_of)."""

    version: str
    at: datetime.datetime
    record: Any


class TooManyVersions(Exception):
    pass


TEAM_EVENTS = """
    SELECT seq, occurred_at FROM care_team_events
    WHERE organization_id = $1 AND patient_id = $2 ORDER BY seq
"""
PRIMARY_AT = """
    SELECT provider_id FROM care_team_periods
    WHERE organization_id = $1 AND patient_id = $2 AND role = 'primary' AND valid @> $3::timestamptz
"""


async def history_of(
    *, db: AsyncSession, organization_id: uuid.UUID, kind: str, ident: uuid.UUID
) -> list[VersionEntry]:
    """Every version of a resource, newest first (none: it is not one of ours). Raises
    TooManyVersions beyond MAX_HISTORY.

    - A Practitioner's versions are its record's; the content of each version written
      since revision 20261207_record_snapshots is kept, of earlier ones not.
    - A Patient's versions are every change of its record or of its care team ("r.t"):
      its record's content as the record's versions are kept, its primary then as its
      care team periods hold it (the primary period that covered the version's instant).
    - A CareTeam's versions are its patient's care team events; only the current one's
      content is served: its periods (participant.period) are the team's history.
    """
    page = await run_search(db=db, organization_id=organization_id, search=by_ids(kind, [ident]))
    if not page.found:
        return []
    current = page.found[0]
    if kind == "CareTeam":
        events = await _team_events(db, organization_id, ident)
        if len(events) > MAX_HISTORY:
            raise TooManyVersions()
        # One transaction's events (one instant: now() is its start) are one version, the
        # last of them: the ones before it were never a committed state.
        last: dict[datetime.datetime, int] = {}
        for seq, at in events:
            last[at] = max(seq, last.get(at, 0))
        entries = [VersionEntry(str(seq), at, None) for at, seq in sorted(last.items())]
        entries.reverse()
        if not entries or entries[0].version != str(current.version):
            entries.insert(0, VersionEntry(str(current.version), current.updated_at, None))
        entries[0] = VersionEntry(str(current.version), current.updated_at, current)
        return entries
    if kind == "Practitioner":
        versions = await DirectoryService.provider_versions(
            db=db, organization_id=organization_id, provider_id=ident, limit=MAX_HISTORY + 1
        )
        if len(versions) > MAX_HISTORY:
            raise TooManyVersions()
        entries = []
        for v in versions:
            record = None
            if v.version == current.version:
                record = current
            elif v.readable:
                past = await DirectoryService.get_provider_version(
                    db=db, organization_id=organization_id, provider_id=ident, version=v.version
                )
                record = None if past is None else PractitionerView(past)
            entries.append(VersionEntry(str(v.version), v.changed_at, record))
        return entries
    return await _patient_history(db, organization_id, current)


async def _team_events(
    db: AsyncSession, org: uuid.UUID, patient: uuid.UUID
) -> list[tuple[int, datetime.datetime]]:
    async def work(driver: Any) -> list[tuple[int, datetime.datetime]]:
        return [(r["seq"], r["occurred_at"]) for r in await driver.fetch(TEAM_EVENTS, org, patient)]

    return await run_transaction(
        db, operation="care_team_versions", organization_id=org, work=work, read_only=True
    )


async def _patient_history(
    db: AsyncSession, org: uuid.UUID, current: PatientView
) -> list[VersionEntry]:
    """A Patient's versions: its record's and its care team's changes merged in time."""
    patient = current.id
    versions = await DirectoryService.patient_versions(
        db=db, organization_id=org, patient_id=patient, limit=MAX_HISTORY + 1
    )
    events = await _team_events(db, org, patient)
    if len(versions) + len(events) > MAX_HISTORY:
        raise TooManyVersions()
    changes = sorted(
        [(v.changed_at, 0, v.version, v.readable) for v in versions]
        + [(at, 1, seq, True) for seq, at in events]
    )
    states: list[tuple[int, int, bool, datetime.datetime]] = []  # (r, t, record kept, at)
    record, team, kept = 1, 0, False
    for at, source, number, readable in changes:
        if source == 0:
            record, kept = number, readable
        else:
            team = number
        if states and states[-1][3] == at:
            states.pop()  # one transaction's changes: one version
        states.append((record, team, kept, at))
    entries = []
    for r, t, record_kept, at in reversed(states):
        view: PatientView | None = None
        if (r, t) == current.version_key:
            view = current
        elif record_kept:
            view = await _past_patient(db, org, patient, r=r, t=t, at=at)
        entries.append(VersionEntry(f"{r}.{t}", at, view))
    if not entries or entries[0].version != current.version:
        entries.insert(0, VersionEntry(current.version, current.updated_at or _EPOCH, current))
    return entries


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


async def _past_patient(
    db: AsyncSession, org: uuid.UUID, patient: uuid.UUID, *, r: int, t: int, at: datetime.datetime
) -> PatientView | None:
    """The Patient at version "r.t", written at `at`: the record's version r (None if
    not kept) and the primary whose period covered `at`."""
    record = await DirectoryService.get_patient_version(
        db=db, organization_id=org, patient_id=patient, version=r
    )
    if record is None:
        return None

    async def work(driver: Any) -> uuid.UUID | None:
        row = await driver.fetchrow(PRIMARY_AT, org, patient, at)
        return None if row is None else row["provider_id"]

    primary = await run_transaction(
        db, operation="primary_at", organization_id=org, work=work, read_only=True
    )
    return PatientView(record, primary, t, at)
