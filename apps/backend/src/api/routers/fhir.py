"""The care team as FHIR R4, read-only, at /fhir/R4: CareTeam, Patient, Practitioner.

The same tables, the same API keys and the same tenants as /v1: the key decides the
organization, and every search runs under its row-level security, so no parameter,
reference or include can reach another organization's data (another organization's ids
answer exactly like unknown ones: 404). Errors are OperationOutcomes. Search parameters
are read from the query string here (not declared to FastAPI), so that a malformed one is
a FHIR 400, and so is an unknown one (ignored only under `Prefer: handling=lenient`).
"""

from __future__ import annotations

import datetime
import re
import unicodedata
import uuid
from typing import Any, TypeVar, cast
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from src.api.auth import credential_of
from src.api.deps import session_of
from src.api.fhir_resources import (
    DEFAULT_COUNT,
    MAX_COUNT,
    NPI_SYSTEM,
    FhirError,
    capability_statement,
    care_team_resource,
    fhir_response,
    patient_resource,
    practitioner_resource,
    searchset,
)
from src.api.paging import cursors_of, list_key
from src.api.routing import query_is_utf8
from src.config import get_settings
from src.services.directory_service import DirectoryService, Identifier
from src.services.fhir_service import CareTeamFilter, FhirService
from src.values import Cursors, UnknownCursor, identifier_parts, is_uuid_text, parse_npi

router = APIRouter(prefix="/fhir/R4", include_in_schema=False)

T = TypeVar("T")

FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
CARE_TEAM_STATUS_SYSTEM = "http://hl7.org/fhir/care-team-status"
# What a search value may hold: printable text (as /v1's rules), at most this long.
_VALUE = re.compile(r"^[^\x00-\x1f\x7f]{1,511}$")
_COUNT = re.compile(r"^[0-9]{1,6}$")
COMMON = {"_count", "_cursor", "_format"}
CARE_TEAM_STATUSES = {"proposed", "active", "suspended", "inactive", "entered-in-error"}
_DATE = re.compile(r"^(eq)?([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?$")


def invalid(message: str) -> FhirError:
    return FhirError(400, "invalid", message)


def _base(request: Request) -> str:
    """The FHIR base of absolute URLs: PUBLIC_BASE_URL's, or the request's (behind a
    proxy that changes the scheme or host, set PUBLIC_BASE_URL)."""
    public = get_settings().public_base_url.strip().rstrip("/")
    return (public or str(request.base_url).rstrip("/")) + "/fhir/R4"


def _organization(request: Request) -> uuid.UUID:
    """The organization of the request's key (src/api/auth.py checked it)."""
    return credential_of(request.scope).organization_id


# Media ranges of an Accept header that JSON satisfies (RFC 9110 12.5.1).
_JSON_RANGES = FORMATS | {"*/*", "application/*"}


def _check_format(request: Request) -> None:
    """A query string in UTF-8 (400 otherwise), and JSON only: a `_format` or an Accept
    header that asks for anything else (XML, Turtle) is 406, never answered in JSON as
    if it had been asked for."""
    if not query_is_utf8(request.scope["query_string"]):
        raise invalid("the query string is not UTF-8 once percent-decoded")
    formats = request.query_params.getlist("_format")
    if len(formats) > 1:
        raise invalid("_format is given more than once")
    fmt = formats[0] if formats else "json"
    if fmt not in FORMATS:
        raise FhirError(406, "not-supported", f"_format {fmt!r}: only JSON is served")
    accept = request.headers.get("accept")
    if formats or not accept:  # _format overrides Accept (FHIR R4 3.1.0.1.8)
        return
    ranges = {
        part.split(";")[0].strip().lower()
        for part in accept.split(",")
        if not re.search(r";\s*q=0(\.0*)?\s*(;|$)", part)  # q=0: "not acceptable"
    }
    if not ranges & _JSON_RANGES:
        raise FhirError(406, "not-supported", f"Accept {accept[:100]!r}: only JSON is served")


def _check_read(request: Request) -> None:
    """A read takes `_format` and nothing else: another parameter is 400, never ignored
    (under Prefer: handling=lenient, ignored, as a search's are)."""
    _check_format(request)
    unknown = sorted(set(request.query_params) - {"_format"})
    if unknown and _handling(request) != "lenient":
        raise invalid(
            f"unknown parameter(s) for a read: {', '.join(name[:64] for name in unknown)} "
            "(send Prefer: handling=lenient to have them ignored)"
        )


def _handling(request: Request) -> str:
    """The `handling` preference (RFC 7240 Prefer, as FHIR's search uses it): strict
    unless the client asks for lenient."""
    for preference in request.headers.get("prefer", "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "handling" and value.strip().strip('"') == "lenient":
            return "lenient"
    return "strict"


# FHIR R4's escapes in search values (its search page, "Escaping Search Parameters"): a backslash
# before `,` `$` `|` or `\\` stands for that character.
_ESCAPED = frozenset(",$|\\")


def _unescaped(raw: str, name: str, *, token: bool) -> list[str]:
    """The value with its escapes read; with `token`, split at its first bare `|`. A bare
    comma is an OR of several values, which a parameter taking one refuses (400), and a
    backslash before anything else is no escape FHIR defines (400)."""
    parts = [""]
    chars = iter(raw)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in _ESCAPED:  # "" too: a backslash at the end
                raise invalid(f"{name}: a backslash escapes , $ | or \\ only (\\\\ is one)")
            parts[-1] += escaped
        elif char == ",":
            raise invalid(
                f"{name} takes one value here: a comma-separated list (FHIR's OR) is not "
                "supported; search once per value (a comma inside a value is \\,)"
            )
        elif char == "|" and token and len(parts) == 1:
            parts.append("")
        else:
            parts[-1] += char
    return parts


class Query:
    """The search's parameters: each read at most once, to know which were applied (the
    `self` link shows those only). Strict by default: a parameter this server does not
    support is 400, never ignored (a search that ignores part of itself answers wrong);
    under `Prefer: handling=lenient` it is ignored, and the `self` link leaves it out.
    `_cursor` is one this server gave for this very search (kind and parameters) and
    organization."""

    def __init__(self, request: Request, kind: str, known: set[str], cursors: Cursors) -> None:
        _check_format(request)
        self.kind = kind
        self.cursors = cursors
        self.values: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            self.values.setdefault(name, []).append(value)
        self.lenient = _handling(request) == "lenient"
        unknown = sorted(set(self.values) - known - COMMON)
        if unknown and not self.lenient:
            raise invalid(
                f"unknown search parameter(s): {', '.join(name[:64] for name in unknown)} "
                "(send Prefer: handling=lenient to have them ignored)"
            )
        self.applied: list[tuple[str, str]] = []

    def all(self, name: str) -> list[str]:
        """Every value given for `name` (repeated parameters: all must hold)."""
        given = self.values.get(name, [])
        for value in given:
            if not _VALUE.fullmatch(value):
                raise invalid(f"{name}: 1 to 511 characters, no control characters")
        self.applied += [(name, v) for v in given]
        return given

    def _one(self, name: str) -> str | None:
        """A one-value parameter's value, checked and applied (the `self` link shows it)."""
        value = self._single(name)
        if value is not None:
            self.all(name)
        return value

    def get(self, name: str) -> str | None:
        """The one value of a parameter that takes one, its escapes read (`\\,` a comma).
        A bare comma (FHIR's OR) is 400, never read as part of one literal value."""
        raw = self._one(name)
        return None if raw is None else "".join(_unescaped(raw, name, token=False))

    def token(self, name: str) -> tuple[str | None, str] | None:
        """A token parameter's `system|code` (system None when there is no bare `|`),
        its escapes read (`\\|` a bar inside either part)."""
        raw = self._one(name)
        if raw is None:
            return None
        parts = _unescaped(raw, name, token=True)
        return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])

    def _single(self, name: str) -> str | None:
        """A paging parameter's value (not one the `self` link repeats as given)."""
        given = self.values.get(name, [])
        if len(given) > 1:
            raise invalid(f"{name} is given more than once")
        return given[0] if given else None

    def count(self) -> int:
        """_count, as asked up to MAX_COUNT (a server may return fewer)."""
        given = self._single("_count")
        raw = str(DEFAULT_COUNT) if given is None else given
        if not _COUNT.fullmatch(raw) or int(raw) < 1:
            raise invalid(f"_count must be a whole number from 1 (at most {MAX_COUNT} are given)")
        count = min(int(raw), MAX_COUNT)
        if "_count" in self.values:
            self.applied.append(("_count", str(count)))
        return count

    def _list_key(self) -> str:
        """The search a cursor belongs to: its kind and every parameter but the paging."""
        given = {
            name: ",".join(values)
            for name, values in self.values.items()
            if name not in ("_cursor", "_count", "_format")
        }
        return list_key(f"fhir:{self.kind}", **given)

    def cursor(self) -> uuid.UUID | None:
        raw = self._single("_cursor")
        if raw is None:
            return None
        try:
            (after,) = self.cursors.open(self._list_key(), raw, uuid.UUID)
        except UnknownCursor as err:
            raise invalid(f"_cursor {err}") from None
        self.applied.append(("_cursor", raw))
        return cast(uuid.UUID, after)

    def url(self, base: str, cursor: uuid.UUID | None = None) -> str:
        """The search's URL: its applied parameters (for `next`: with the next cursor)."""
        params = list(self.applied)
        if cursor is not None:
            params = [p for p in params if p[0] != "_cursor"]
            params.append(("_cursor", self.cursors.seal(self._list_key(), cursor)))
        return f"{base}/{self.kind}" + (f"?{urlencode(params)}" if params else "")


def _ours(value: str) -> bool:
    """Whether `value` is written as our FHIR ids are: a UUID, 8-4-4-4-12, in lower case
    (FHIR ids are case sensitive; uuid.UUID would read other spellings too)."""
    return is_uuid_text(value) and value == value.lower()


def _path_id(kind: str, value: str) -> uuid.UUID:
    """A read's id: anything but one of ours is simply not found."""
    if not _ours(value):
        raise FhirError(404, "not-found", f"{kind}/{value[:64]} not found")
    return uuid.UUID(value)


def _id(value: str, kind: str, what: str) -> uuid.UUID:
    """An id, or a `kind/{id}` reference to one."""
    raw = value.removeprefix(f"{kind}/")
    if not _ours(raw):
        raise invalid(f"{what} must be a {kind} id or {kind}/{{id}}")
    return uuid.UUID(raw)


def _statuses(given: list[str]) -> frozenset[str] | None:
    """The statuses a team may have: each parameter a comma-separated OR (codes, or
    system|code), repeated parameters all holding (AND); None without any."""
    if not given:
        return None
    allowed = frozenset(CARE_TEAM_STATUSES)
    for value in given:
        codes = set()
        for token in value.split(","):
            system, bar, code = token.strip().rpartition("|")
            if bar and system and system != CARE_TEAM_STATUS_SYSTEM:
                raise invalid(f"status system must be {CARE_TEAM_STATUS_SYSTEM}")
            codes.add(code)
        if not codes <= CARE_TEAM_STATUSES:
            raise invalid(f"status must be among {', '.join(sorted(CARE_TEAM_STATUSES))}")
        allowed = allowed & codes
    return allowed


def _includes(query: Query) -> bool:
    """Whether `_include=CareTeam:participant` is asked; another include is 400 (ignored
    under lenient handling)."""
    wanted = {"CareTeam:participant", "CareTeam:participant:Practitioner"}
    given = query.values.get("_include", [])
    unsupported = [i for i in given if i not in wanted]
    if unsupported and not query.lenient:
        raise invalid(f"_include not supported: {', '.join(unsupported)}")
    supported = [i for i in given if i in wanted]
    query.applied += [("_include", i) for i in supported[:1]]
    return bool(supported)


def _day_range(value: str) -> tuple[datetime.datetime, datetime.datetime]:
    """A FHIR date (YYYY, YYYY-MM or YYYY-MM-DD, optionally `eq`), as the instants it
    covers in UTC."""
    match = _DATE.fullmatch(value)
    if match is None:
        raise invalid("date must be YYYY, YYYY-MM or YYYY-MM-DD (eq only)")
    year, month, day = (int(g) if g else None for g in match.groups()[1:])
    try:
        start = datetime.date(year or 0, month or 1, day or 1)  # year 0: ValueError
        if day is not None:
            end = start + datetime.timedelta(days=1)
        elif month is not None:
            end = (start + datetime.timedelta(days=32)).replace(day=1)
        else:
            end = start.replace(year=start.year + 1)
    except (ValueError, OverflowError):
        raise invalid(f"{value} is not a date this server searches (years 1 to 9998)") from None
    utc = datetime.UTC
    return (
        datetime.datetime.combine(start, datetime.time(), utc),
        datetime.datetime.combine(end, datetime.time(), utc),
    )


def _page(
    request: Request,
    query: Query,
    kind: str,
    *,
    found: list[Any],
    count: int,
    resources: list[dict[str, Any]],
    includes: list[dict[str, Any]] | None = None,
) -> Response:
    """The Bundle of a search's page: `found` holds up to count + 1 records (more: a next
    link, after the last one shown); `resources` are the page's."""
    base = _base(request)
    more = len(found) > count
    after = found[count - 1] if more else None
    next_url = None if after is None else query.url(base, _key(after))
    return fhir_response(
        searchset(
            base,
            matches=resources[:count],
            includes=includes or [],
            self_url=query.url(base),
            next_url=next_url,
        )
    )


def _key(record: Any) -> uuid.UUID:
    """A page's position: the patient id of a team, the id of a record."""
    key: uuid.UUID = record.patient_id if hasattr(record, "patient_id") else record.id
    return key


# --- metadata -------------------------------------------------------------------------------


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    """What this server supports (no key needed)."""
    return fhir_response(capability_statement(_base(request)))


# --- CareTeam -------------------------------------------------------------------------------


@router.get("/CareTeam/{team_id}")
async def read_care_team(team_id: str, request: Request) -> Response:
    db = session_of(request)
    _check_read(request)
    org = _organization(request)
    patient = _path_id("CareTeam", team_id)
    team = await FhirService.care_team(db=db, organization_id=org, patient_id=patient)
    if team is None:
        raise FhirError(404, "not-found", f"CareTeam/{team_id} not found")
    return fhir_response(care_team_resource(team, org))


@router.get("/CareTeam")
async def search_care_teams(request: Request) -> Response:
    db = session_of(request)
    org = _organization(request)
    query = Query(
        request,
        "CareTeam",
        {"_id", "patient", "subject", "status", "participant", "date", "_include"},
        await cursors_of(request),
    )
    patients = set()
    for name, kind in (("_id", "CareTeam"), ("patient", "Patient"), ("subject", "Patient")):
        if (value := query.get(name)) is not None:
            patients.add(_id(value, kind, name))
    statuses = _statuses(query.all("status"))
    participant = query.get("participant")
    during = query.get("date")
    where = CareTeamFilter(
        patient=next(iter(patients), None),
        statuses=statuses if statuses is not None else frozenset(),
        participant=None
        if participant is None
        else _id(participant, "Practitioner", "participant"),
        during=None if during is None else _day_range(during),
    )
    with_practitioners = _includes(query)
    count, after = query.count(), query.cursor()
    if len(patients) > 1 or statuses == frozenset():  # nothing can match all of it
        return _page(request, query, "CareTeam", found=[], count=count, resources=[])
    teams = await FhirService.search_care_teams(
        db=db, organization_id=org, where=where, limit=count + 1, after=after
    )
    page = teams[:count]
    includes: list[dict[str, Any]] = []
    if with_practitioners:
        members = sorted({p.provider_id for t in page for p in t.periods}, key=str)
        records = await DirectoryService.get_providers(
            db=db, organization_id=org, provider_ids=members
        )
        includes = [practitioner_resource(r) for r in records]
    resources = [care_team_resource(t, org) for t in page]
    return _page(
        request,
        query,
        "CareTeam",
        found=teams,
        count=count,
        resources=resources,
        includes=includes,
    )


# --- Patient --------------------------------------------------------------------------------


@router.get("/Patient/{patient_id}")
async def read_patient(patient_id: str, request: Request) -> Response:
    db = session_of(request)
    _check_read(request)
    org = _organization(request)
    ident = _path_id("Patient", patient_id)
    record = await DirectoryService.get_patient(db=db, organization_id=org, patient_id=ident)
    primaries = await FhirService.primaries_of(db=db, organization_id=org, patients=[ident])
    return fhir_response(patient_resource(record, org, primaries.get(ident)))


@router.get("/Patient")
async def search_patients(request: Request) -> Response:
    db = session_of(request)
    org = _organization(request)
    query = Query(
        request, "Patient", {"_id", "identifier", "name", "birthdate"}, await cursors_of(request)
    )
    only = query.get("_id")
    identifier = query.token("identifier")
    name = _name(query.get("name"))
    birthdate = query.get("birthdate")
    count, after = query.count(), query.cursor()
    token = None
    if identifier is not None:
        system, value = identifier
        if system is None:
            raise invalid("identifier must be system|value")
        try:
            token = Identifier(*identifier_parts(system, value))
        except ValueError as err:
            raise invalid(f"identifier {err}") from None
    born = None
    if birthdate is not None:
        if not re.fullmatch(r"(eq)?[0-9]{4}-[0-9]{2}-[0-9]{2}", birthdate):
            raise invalid("birthdate must be YYYY-MM-DD (eq only)")
        try:
            born = datetime.date.fromisoformat(birthdate.removeprefix("eq"))
        except ValueError:
            raise invalid(f"{birthdate} is not a date") from None
    found = await DirectoryService.list_patients(
        db=db,
        organization_id=org,
        patient_id=None if only is None else _id(only, "Patient", "_id"),
        name=name,
        dob=born,
        identifier=token,
        limit=count + 1,
        after=after,
    )
    page = found[:count]
    primaries = await FhirService.primaries_of(
        db=db, organization_id=org, patients=[p.id for p in page]
    )
    resources = [patient_resource(p, org, primaries.get(p.id)) for p in page]
    return _page(request, query, "Patient", found=found, count=count, resources=resources)


def _name(value: str | None) -> str | None:
    """A name search's value as names are stored (NFC); at most 100 characters."""
    if value is None:
        return None
    if len(value) > 100 or not value.strip():
        raise invalid("name must be 1 to 100 characters")
    return unicodedata.normalize("NFC", value)


# --- Practitioner ---------------------------------------------------------------------------


@router.get("/Practitioner/{practitioner_id}")
async def read_practitioner(practitioner_id: str, request: Request) -> Response:
    db = session_of(request)
    _check_read(request)
    org = _organization(request)
    ident = _path_id("Practitioner", practitioner_id)
    record = await DirectoryService.get_provider(db=db, organization_id=org, provider_id=ident)
    return fhir_response(practitioner_resource(record))


@router.get("/Practitioner")
async def search_practitioners(request: Request) -> Response:
    db = session_of(request)
    org = _organization(request)
    query = Query(
        request, "Practitioner", {"_id", "identifier", "name", "active"}, await cursors_of(request)
    )
    only = query.get("_id")
    identifier = query.token("identifier")
    name = _name(query.get("name"))
    active_raw = query.get("active")
    active = None
    if active_raw is not None:
        if active_raw not in ("true", "false"):
            raise invalid("active must be true or false")
        active = active_raw == "true"
    count, after = query.count(), query.cursor()
    npi = None
    if identifier is not None:
        system, value = identifier
        try:
            npi = parse_npi(value)
        except ValueError as err:
            raise invalid(f"identifier must be an NPI, or system|NPI: the NPI {err}") from None
        if system is not None and system != NPI_SYSTEM:  # `|NPI`, another system: none
            return _page(request, query, "Practitioner", found=[], count=count, resources=[])
    found = await DirectoryService.list_providers(
        db=db,
        organization_id=org,
        provider_id=None if only is None else _id(only, "Practitioner", "_id"),
        name=name,
        npi=npi,
        active=active,
        limit=count + 1,
        after=after,
    )
    resources = [practitioner_resource(p) for p in found[:count]]
    return _page(request, query, "Practitioner", found=found, count=count, resources=resources)


@router.api_route("/{anything:path}", methods=["POST", "PUT", "PATCH", "DELETE"])
async def read_only(anything: str) -> Response:
    """This view is read-only: every other method is 405, as an OperationOutcome."""
    raise FhirError(405, "not-supported", "this FHIR server is read-only: GET only")


@router.get("")
@router.get("/{anything:path}")
async def unknown(anything: str = "") -> Response:
    raise FhirError(404, "not-found", f"{anything.split('/', maxsplit=1)[0]} is not served here")
