"""The care team as FHIR R4, read-only, at /fhir/R4: CareTeam, Patient, Practitioner and
the organization itself, with search (GET, or POST to `_search`), read, vread and
instance history; each provider's attributed panel as a Group (read and search).

The same tables, the same API keys and the same tenants as /v1: the key decides the
organization, and every search runs under its row-level security, so no parameter,
reference or include can reach another organization's data (another organization's ids
answer exactly like unknown ones: 404). Everything under /fhir/R4 answers FHIR: errors
are OperationOutcomes, whatever the method or path. Search parameters are read by
src/api/fhir_query.py; what they mean is src/services/fhir_search.py.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from src.api.access_log import note_parameters, note_patients
from src.api.auth import credential_of, insufficient_scope
from src.api.deps import session_of
from src.api.fhir_query import (
    INCLUDES,
    REVINCLUDES,
    Query,
    UnknownParameter,
    check_pretty,
    elements_of,
    included_limit,
    invalid,
    not_supported,
)
from src.api.fhir_resources import (
    FhirError,
    capability_statement,
    fhir_response,
    history_bundle,
    organization_resource,
    patients_named,
    resource_of,
    searchset,
    shaped,
    version_tag,
)
from src.api.paging import cursors_of
from src.api.routers.smart import TOKEN_PATH
from src.api.routing import public_base, query_is_utf8
from src.services.fhir_search import (
    MAX_HISTORY,
    MAX_INCLUDED,
    PARAMETERS,
    Clause,
    CursorMoved,
    Ref,
    Search,
    TooManyVersions,
    VersionEntry,
    by_ids,
    find_organization,
    history_of,
    run_search,
)

router = APIRouter(prefix="/fhir/R4", include_in_schema=False)

TYPES = ("CareTeam", "Patient", "Practitioner", "Group")
# The access log as AuditEvent (read and search, with the administrative scope).
AUDIT_EVENT = "AuditEvent"
# The types read and searched without vread or history, and why.
_NO_HISTORY = {
    AUDIT_EVENT: "AuditEvent has no history: an access log entry never changes",
    "Group": "Group has no vread or history here: read the current version (its members' "
    "periods are the panel's history)",
}
# The media types that ask for FHIR JSON (FHIR R4 http.html 3.1.0.1.7), and `_format`'s
# short forms. A `+` sent unescaped in a query string arrives as a space.
JSON_TYPES = {"application/fhir+json", "application/json+fhir", "application/json"}
FORMATS = JSON_TYPES | {"json", "application/fhir json", "application/json fhir"}
FHIR_VERSIONS = {"4.0", "4.0.1"}  # the fhirVersion a media type may name for R4
# A FHIR id (R4 datatypes: id): what a diagnostic may repeat of a path.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")


def _base(request: Request) -> str:
    """The FHIR base of absolute URLs: PUBLIC_BASE_URL's, or the request's (behind a
    proxy that changes the scheme or host, set PUBLIC_BASE_URL)."""
    return public_base(request) + "/fhir/R4"


def _organization(request: Request) -> uuid.UUID:
    """The organization of the request's key (src/api/auth.py checked it)."""
    return credential_of(request.scope).organization_id


def _media_type(text: str) -> tuple[str, dict[str, str]]:
    kind, *params = text.split(";")
    parsed = {}
    for param in params:
        name, _, value = param.partition("=")
        parsed[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), parsed


def _check_format(request: Request, items: list[tuple[str, str]]) -> None:
    """JSON of FHIR R4 only: a `_format` or an Accept header that asks for anything else
    (XML, Turtle, another FHIR version) is 406, never answered as if it had been asked."""
    formats = [v for n, v in items if n == "_format"]
    if len(formats) > 1:
        raise invalid("_format is given more than once")
    if formats:  # _format overrides Accept (FHIR R4 http.html 3.1.0.1.8)
        kind, params = _media_type(formats[0])
        if kind not in FORMATS or params.get("fhirversion", "4.0") not in FHIR_VERSIONS:
            raise FhirError(
                406, "not-supported", f"_format {formats[0][:100]!r}: only FHIR R4 JSON is served"
            )
        return
    accept = request.headers.get("accept")
    if not accept or any(_accepted(kind, accept) for kind in JSON_TYPES):
        return
    raise FhirError(
        406, "not-supported", f"Accept {accept[:100]!r}: only FHIR R4 JSON (4.0) is served"
    )


_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _accepted(kind: str, accept: str) -> bool:
    """Whether Accept accepts `kind` as FHIR R4 (RFC 9110 12.5.1): the most specific
    range that matches it decides (the type, then type/*, then */*; one with parameters
    before one without), and a weight of 0 refuses it. A range with a malformed weight
    is left out."""
    family = kind.split("/", maxsplit=1)[0] + "/*"
    best: tuple[int, float, dict[str, str]] | None = None
    for part in accept.split(","):
        name, params = _media_type(part)
        q = params.get("q", "1")
        if not _QVALUE.fullmatch(q) or name not in (kind, family, "*/*"):
            continue
        rank = {kind: 4, family: 2, "*/*": 0}[name] + (1 if set(params) - {"q"} else 0)
        if best is None or rank > best[0]:
            best = (rank, float(q), params)
    if best is None:
        return False
    _, weight, params = best
    return weight > 0 and params.get("fhirversion", "4.0") in FHIR_VERSIONS


def _handling(request: Request) -> str:
    """The `handling` preference (RFC 7240 Prefer, as FHIR's search uses it): strict
    unless the client asks for lenient."""
    for preference in request.headers.get("prefer", "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "handling" and value.strip().strip('"') == "lenient":
            return "lenient"
    return "strict"


def _query_items(request: Request) -> list[tuple[str, str]]:
    if not query_is_utf8(request.scope["query_string"]):
        raise invalid("the query string is not UTF-8 once percent-decoded")
    return request.query_params.multi_items()


@dataclass(frozen=True)
class Shape:
    """What a read asks of the resource's shape (`_summary`, `_elements`)."""

    summary: str = "false"
    elements: frozenset[str] | None = None


def _check_read(request: Request, kind: str, what: str = "a read") -> Shape:
    """A read (and a vread) takes `_format`, `_pretty`, `_summary` (true, false, data)
    and `_elements`; a history `_format` and `_pretty`. Another parameter is 400, never
    ignored (under Prefer: handling=lenient, ignored, as a search's are)."""
    items = _query_items(request)
    _check_format(request, items)
    shaping = {"_summary", "_elements"} if what != "a history" else set()
    known = {"_format", "_pretty"} | shaping
    unknown = sorted({name for name, _ in items} - known)
    if unknown and _handling(request) != "lenient":
        raise invalid(
            f"unknown parameter(s) for {what}: {', '.join(name[:64] for name in unknown)} "
            "(send Prefer: handling=lenient to have them ignored)"
        )
    given = {n: [v for m, v in items if m == n] for n in known}
    if any(len(v) > 1 for v in given.values()):
        raise invalid("a parameter of a read is given more than once")
    check_pretty(next(iter(given["_pretty"]), None))
    summary = next(iter(given.get("_summary", [])), "false")
    if summary not in ("true", "false", "data"):
        raise not_supported("_summary on a read must be true, false or data")
    elements = given.get("_elements")
    if elements and summary != "false":
        raise invalid("_elements and _summary cannot be used together")
    return Shape(summary, elements_of(kind, elements[0]) if elements else None)


def _said(kind: str, ident: str) -> str:
    """`kind/ident` as a diagnostic may repeat it: the id only if it is a FHIR id."""
    return (
        f"{kind}/{ident}" if _FHIR_ID.fullmatch(ident) else f"{kind} (an id that is not a FHIR id)"
    )


def _path_id(kind: str, value: str) -> uuid.UUID:
    """A read's id: anything but one of ours (a UUID in lower case) is not found; the
    interactions a FHIR path may name there are named as not supported."""
    if value == "_history":
        raise not_supported(f"type history ({kind}/_history) is not supported")
    if value.startswith("$"):
        raise not_supported("operations ($everything, $validate, ...) are not supported")
    if value == "_search":
        raise FhirError(
            405, "not-supported", f"{kind}/_search takes POST (a GET search is GET /{kind})"
        )
    try:
        ident = uuid.UUID(value)
    except ValueError:
        ident = None
    if ident is None or str(ident) != value:
        raise FhirError(404, "not-found", f"{_said(kind, value)} not found")
    return ident


# --- metadata -------------------------------------------------------------------------------


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    """What this server supports (no key needed)."""
    items = _query_items(request)
    _check_format(request, items)
    unknown = sorted({n for n, _ in items} - {"_format", "mode"})
    if unknown:
        raise invalid(f"unknown parameter(s) for metadata: {', '.join(n[:64] for n in unknown)}")
    if any(n == "mode" and v != "full" for n, v in items):
        raise not_supported("mode: only full is served")
    token_url = public_base(request) + TOKEN_PATH
    return fhir_response(
        capability_statement(_base(request), INCLUDES, REVINCLUDES, token_url=token_url)
    )


# --- search ---------------------------------------------------------------------------------


async def _search(request: Request, kind: str, items: list[tuple[str, str]]) -> Response:
    _check_format(request, items)
    db = session_of(request)
    org = _organization(request)
    base = _base(request)
    try:
        query = Query.read(
            kind,
            items,
            base=base,
            cursors=await cursors_of(request),
            lenient=_handling(request) == "lenient",
        )
    except UnknownParameter as err:  # this route offers leniency: say how to ask for it
        hint = " (send Prefer: handling=lenient to have it ignored)"
        raise FhirError(err.status, err.code, err.diagnostics + hint) from None
    for name, target in (*query.includes, *query.revincludes):
        # An included resource is read like any other of its type: its scope, not the
        # search's, decides (a CareTeam-only credential gets no Patient this way).
        needed = f"system/{target}.r"
        if not credential_of(request.scope).grants.allows(needed):
            kind_of = "_include" if (name, target) in query.includes else "_revinclude"
            return insufficient_scope(request.url.path, needed, f"{kind_of}={name}")
    try:
        page = await run_search(db=db, organization_id=org, search=query.search())
    except CursorMoved:
        raise invalid(
            "_cursor: a resource of this sorted search changed since its first page, so "
            "its place in the order may have moved behind the cursor: start the search "
            "again (a search sorted by _id alone pages through changes)"
        ) from None
    shown = page.found[: query.count]
    matches = [shaped(resource_of(r, org), query.summary, query.elements) for r in shown]
    included = await _included(request, query, kind, shown)
    note_patients(
        request.scope,
        [p for r in (*matches, *included) for p in patients_named(r)],
        # What the client was told: the page's matches, or the total of a count alone.
        count=page.total if query.summary == "count" and page.total is not None else len(matches),
    )
    more = len(page.found) > query.count
    next_url = None
    if more and query.count:
        last = shown[-1]
        next_url = query.url((last.id, *last.version_key, page.since))
    return fhir_response(
        searchset(
            base,
            matches=matches,
            includes=included,
            self_url=query.url(),
            next_url=next_url,
            total=page.total,
        )
    )


def _refs(ids: set[uuid.UUID] | list[uuid.UUID]) -> tuple[Ref, ...]:
    return tuple(Ref(None, str(i)) for i in sorted(ids, key=str))


async def _included(
    request: Request,
    query: Query,
    kind: str,
    shown: list[Any],
) -> list[dict[str, Any]]:
    """The resources `_include` and `_revinclude` name, each once: each a search of its
    own (under the same tenant), refused (400) beyond MAX_INCLUDED."""
    if not shown or not (query.includes or query.revincludes):
        return []
    wanted: dict[str, set[uuid.UUID]] = {}  # _include: type -> ids
    reverse: list[tuple[str, str, tuple[Ref, ...]]] = []  # _revinclude: (type, param, refs)
    for name, target in query.includes:
        ids = wanted.setdefault(target, set())
        if name.startswith("CareTeam:participant"):
            ids.update(p.provider_id for t in shown for p in t.periods)
        elif name.startswith("CareTeam:"):
            ids.update(t.patient_id for t in shown)
        else:  # Patient:general-practitioner
            ids.update(r.primary for r in shown if r.primary is not None)
    for name, target in query.revincludes:
        param = name.split(":")[1]
        reverse.append((target, param, _refs([r.id for r in shown])))
    found: dict[tuple[str, uuid.UUID], dict[str, Any]] = {}
    org = _organization(request)
    searches = [
        by_ids(target, ids, limit=MAX_INCLUDED) for target, ids in wanted.items() if ids
    ] + [
        Search(target, (Clause(PARAMETERS[target][param], "", refs),), limit=MAX_INCLUDED)
        for target, param, refs in reverse
    ]
    for search in searches:
        target = search.kind
        page = await run_search(db=session_of(request), organization_id=org, search=search)
        included_limit(len(page.found))
        for record in page.found:
            found.setdefault((target, record.id), resource_of(record, org))
    own = {(kind, r.id) for r in shown}
    return [r for key, r in found.items() if key not in own]


@router.get("/CareTeam")
@router.get("/Patient")
@router.get("/Practitioner")
@router.get("/AuditEvent")
@router.get("/Group")
async def search_type(request: Request) -> Response:
    kind = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    return await _search(request, kind, _query_items(request))


@router.post("/CareTeam/_search")
@router.post("/Patient/_search")
@router.post("/Practitioner/_search")
@router.post("/AuditEvent/_search")
@router.post("/Group/_search")
async def search_by_post(request: Request) -> Response:
    """FHIR's POST search: the parameters form-encoded in the body (and the query
    string), read exactly as a GET's."""
    kind = request.url.path.rstrip("/").rsplit("/", 2)[-2]
    content_type, _ = _media_type(request.headers.get("content-type", ""))
    body = await request.body()
    if body and content_type != "application/x-www-form-urlencoded":
        raise FhirError(
            415, "not-supported", "a POST search's body is application/x-www-form-urlencoded"
        )
    try:
        text = body.decode("utf-8")
        form = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise invalid("the body is not form-encoded UTF-8") from None
    note_parameters(request.scope, [name for name, _ in form])
    return await _search(request, kind, _query_items(request) + form)


# --- read, vread, history -------------------------------------------------------------------


async def _current(request: Request, kind: str, ident: uuid.UUID) -> Any:
    page = await run_search(
        db=session_of(request), organization_id=_organization(request), search=by_ids(kind, [ident])
    )
    if not page.found:
        raise FhirError(404, "not-found", f"{kind}/{ident} not found")
    return page.found[0]


def _read_response(request: Request, record: Any, resource: dict[str, Any]) -> Response:
    """A read's resource with its ETag and Last-Modified; 304 when If-None-Match names
    its version (weak comparison, RFC 9110 13.1.2) or is `*`."""
    etag = version_tag(record)
    headers = {"ETag": etag, "Last-Modified": format_datetime(record.updated_at, usegmt=True)}
    wanted = request.headers.get("if-none-match")
    if wanted is not None:
        tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
        if "*" in tags or etag.removeprefix("W/") in tags:
            return Response(status_code=304, headers=headers)
    return fhir_response(resource, headers=headers)


@router.get("/CareTeam/{ident}")
@router.get("/Patient/{ident}")
@router.get("/Practitioner/{ident}")
@router.get("/AuditEvent/{ident}")
@router.get("/Group/{ident}")
async def read(ident: str, request: Request) -> Response:
    kind = request.url.path.split("/")[-2]
    _check_format(request, _query_items(request))
    uid = _path_id(kind, ident)
    shape = _check_read(request, kind)
    record = await _current(request, kind, uid)
    resource = shaped(resource_of(record, _organization(request)), shape.summary, shape.elements)
    if kind == "Group":  # its members, as shown (a 304 confirms the client's copy of them)
        note_patients(request.scope, patients_named(resource))
    return _read_response(request, record, resource)


# A version id as each type writes it: a number, or a Patient's "record.team" numbers.
_VERSION = {
    "CareTeam": re.compile(r"[1-9][0-9]{0,17}"),
    "Practitioner": re.compile(r"[1-9][0-9]{0,17}"),
    "Patient": re.compile(r"[1-9][0-9]{0,17}\.(0|[1-9][0-9]{0,17})"),
}


async def _versions(request: Request, kind: str, ident: uuid.UUID) -> list[VersionEntry]:
    try:
        versions = await history_of(
            db=session_of(request), organization_id=_organization(request), kind=kind, ident=ident
        )
    except TooManyVersions:
        raise FhirError(
            422,
            "too-costly",
            f"{kind}/{ident} has more than {MAX_HISTORY} versions: its history is not "
            "served (read the current version; /v1 pages its changes)",
        ) from None
    if not versions:
        raise FhirError(404, "not-found", f"{kind}/{ident} not found")
    return versions


@router.get("/CareTeam/{ident}/_history/{version}")
@router.get("/Patient/{ident}/_history/{version}")
@router.get("/Practitioner/{ident}/_history/{version}")
async def vread(ident: str, version: str, request: Request) -> Response:
    kind = request.url.path.split("/")[-4]
    _check_format(request, _query_items(request))
    uid = _path_id(kind, ident)
    shape = _check_read(request, kind)
    if not _VERSION[kind].fullmatch(version):
        raise FhirError(
            404, "not-found", f"{kind}/{uid} has no such version (not a version id of ours)"
        )
    entry = next((v for v in await _versions(request, kind, uid) if v.version == version), None)
    if entry is None:
        raise FhirError(404, "not-found", f"{kind}/{uid} has no version {version}")
    if entry.record is None:
        raise FhirError(
            404,
            "not-found",
            f"{kind}/{uid} version {version} existed, but its content was not kept "
            '(docs/FHIR.md, "Versions"): the current version and its history list say '
            "what is",
        )
    resource = resource_of(entry.record, _organization(request))
    return _read_response(request, entry.record, shaped(resource, shape.summary, shape.elements))


@router.get("/CareTeam/{ident}/_history")
@router.get("/Patient/{ident}/_history")
@router.get("/Practitioner/{ident}/_history")
async def history(ident: str, request: Request) -> Response:
    kind = request.url.path.split("/")[-3]
    _check_format(request, _query_items(request))
    uid = _path_id(kind, ident)
    _check_read(request, kind, "a history")
    versions = await _versions(request, kind, uid)
    return fhir_response(
        history_bundle(_base(request), kind, uid, versions, _organization(request))
    )


# --- the organization -------------------------------------------------------------------------


@router.get("/Organization/{ident}")
async def read_organization(ident: str, request: Request) -> Response:
    """The key's own organization (another's id: 404, as an unknown one)."""
    _check_format(request, _query_items(request))
    uid = _path_id("Organization", ident)
    shape = _check_read(request, "Organization")
    org = _organization(request)
    record = (
        None if uid != org else await find_organization(db=session_of(request), organization_id=org)
    )
    if record is None:
        raise FhirError(404, "not-found", f"Organization/{ident} not found")
    resource = shaped(organization_resource(record), shape.summary, shape.elements)
    return _read_response(request, record, resource)


# --- everything else --------------------------------------------------------------------------

_OTHER_METHODS = ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.api_route("", methods=_OTHER_METHODS)
@router.api_route("/{anything:path}", methods=_OTHER_METHODS)
async def read_only(anything: str = "") -> Response:
    """This view is read-only: every other method is 405, as an OperationOutcome."""
    if anything.startswith("Organization/_search"):
        raise not_supported("Organization is read only: GET /Organization/{id}")
    raise FhirError(
        405, "not-supported", "this FHIR server is read-only: GET (and POST to _search) only"
    )


@router.get("")
@router.get("/{anything:path}")
async def unknown(anything: str = "") -> Response:
    """A path this server does not serve, named for what it is (never echoed as given)."""
    parts = anything.strip("/").split("/")
    first = parts[0]
    if not first:
        raise not_supported("a system-level search or batch (GET /fhir/R4) is not supported")
    if first == "_history":
        raise not_supported("system history (/_history) is not supported")
    if first.startswith("$"):
        raise not_supported("system operations are not supported")
    if not _TYPE_NAME.fullmatch(first):
        raise FhirError(404, "not-found", "not a FHIR path this server serves")
    if first not in (*TYPES, "Organization", AUDIT_EVENT):
        raise FhirError(
            404,
            "not-found",
            f"{first} is not served here (served: {', '.join(TYPES)}, Organization, {AUDIT_EVENT})",
        )
    rest = parts[1:]
    if first in _NO_HISTORY and "_history" in rest:
        raise not_supported(_NO_HISTORY[first])
    if rest and rest[0] == "_history":
        raise not_supported(f"type history ({first}/_history) is not supported")
    if any(p.startswith("$") for p in rest):
        raise not_supported("operations ($everything, $validate, ...) are not supported")
    if len(rest) == 2 and _TYPE_NAME.fullmatch(rest[1]):
        raise not_supported("compartment searches are not supported: search by patient=")
    if first == "Organization" and (not rest or "_history" in rest):
        raise not_supported("Organization is read only: GET /Organization/{id}")
    raise FhirError(404, "not-found", "not a FHIR path this server serves")
